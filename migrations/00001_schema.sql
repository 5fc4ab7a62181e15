-- keysync's own tables (DESIGN §4). River's tables are migrated by River's own
-- migrator right after goose, under the same start-up lock.

-- +goose Up
CREATE TABLE stripe_events (
    id           text        PRIMARY KEY,
    type         text        NOT NULL,
    created      timestamptz NOT NULL,
    livemode     boolean     NOT NULL,
    api_version  text,
    payload      jsonb       NOT NULL,
    source       text        NOT NULL CHECK (source IN ('webhook', 'events_api')),
    received_at  timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL CHECK (status IN ('pending', 'processed', 'ignored', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    processed_at timestamptz
);
-- Work still to do or to look at: small, because processed rows leave it.
CREATE INDEX stripe_events_open ON stripe_events (received_at) WHERE status IN ('pending', 'failed');
-- Catch-up and replay walk events by creation time. Events arrive roughly in creation
-- order, so a BRIN index serves those rare range queries at almost no cost per insert.
CREATE INDEX stripe_events_created ON stripe_events USING brin (created);
-- Payloads (~3-4 KB) are compressed when stored; lz4 costs far less CPU than the
-- default pglz on every webhook. Servers built without lz4 keep pglz.
-- +goose StatementBegin
DO $$
BEGIN
    ALTER TABLE stripe_events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available on this server; stripe_events.payload keeps the default compression';
END;
$$;
-- +goose StatementEnd
-- Retention prunes processed rows by age.
CREATE INDEX stripe_events_processed_at ON stripe_events (processed_at) WHERE status = 'processed';

CREATE TABLE subscriptions (
    id                  text        PRIMARY KEY,
    customer_id         text        NOT NULL,
    status              text        NOT NULL,
    product_id          integer,
    license_key         text,
    key_id              bigint,
    paid_through        timestamptz,
    desired_expires     timestamptz,
    blocked_by_keysync  boolean     NOT NULL DEFAULT false,
    checkout_session_id text,
    last_synced_at      timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- One key belongs to one subscription: a second claim on it is a bug to surface.
CREATE UNIQUE INDEX subscriptions_key ON subscriptions (product_id, license_key) WHERE license_key IS NOT NULL;
CREATE INDEX subscriptions_customer ON subscriptions (customer_id);

CREATE TABLE audit_log (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    subscription_id text,
    customer_id     text,
    product_id      integer,
    license_key     text,
    action          text        NOT NULL CHECK (action IN (
                        'create_key', 'extend', 'block', 'unblock', 'add_feature', 'remove_feature',
                        'machine_limit', 'adopt_key', 'skip_unmapped', 'error')),
    params          jsonb       NOT NULL DEFAULT '{}',
    outcome         text        NOT NULL CHECK (outcome IN ('applied', 'dry_run', 'failed')),
    cause           text        NOT NULL CHECK (cause IN ('webhook', 'sweep', 'catch_up', 'operator')),
    cause_id        text,
    message         text,
    duration_ms     double precision
);
CREATE INDEX audit_log_subscription ON audit_log (subscription_id, at DESC);
CREATE INDEX audit_log_license_key ON audit_log (license_key, at DESC);
CREATE INDEX audit_log_customer ON audit_log (customer_id, at DESC);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- The audit log is evidence: the database itself refuses to change or remove a row,
-- whatever the client or the role (a superuser can still drop the trigger, on purpose).
-- +goose StatementBegin
CREATE FUNCTION keysync_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION keysync_audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION keysync_audit_log_append_only();

CREATE TABLE sync_runs (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('sweep', 'catch_up')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    scanned     integer     NOT NULL DEFAULT 0,
    drifted     integer     NOT NULL DEFAULT 0,
    fixed       integer     NOT NULL DEFAULT 0,
    failed      integer     NOT NULL DEFAULT 0,
    orphans     integer     NOT NULL DEFAULT 0,
    cursor      text,
    error       text
);
CREATE INDEX sync_runs_kind_started ON sync_runs (kind, started_at DESC);

-- +goose Down
DROP TABLE sync_runs;
DROP TABLE audit_log;
DROP FUNCTION keysync_audit_log_append_only();
DROP TABLE subscriptions;
DROP TABLE stripe_events;
