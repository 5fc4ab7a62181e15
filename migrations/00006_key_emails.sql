-- Getting the key to the customer (DESIGN §2.2): each new key is e-mailed once. A row
-- here is the e-mail of one key; its primary key is the key, so retries, replicas and
-- replays of the job that mails it find the row and never send twice.

-- +goose Up
CREATE TABLE key_emails (
    product_id  integer     NOT NULL,
    license_key text        NOT NULL,
    -- The create_key audit row that made the key: the outbox the e-mails are sent from.
    audit_id    bigint      NOT NULL,
    customer_id text,
    -- pending: not sent yet (a failure that provably sent nothing comes back here);
    -- sending: claimed by a job, which sends now or died while sending: the message may
    --   have gone out, so keysync never sends it again by itself (at most once);
    -- sent; failed: refused for good (no address, a rejected recipient), not retried.
    status      text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts    integer     NOT NULL DEFAULT 0,
    recipient   text,
    message_id  text,
    last_error  text,
    claimed_at  timestamptz,
    sent_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, license_key)
);

-- The audit log learns the e-mail action and the customer's own requests (the license
-- page's Sync, the lost-keys form). The CHECK constraints are extended in place, from
-- whatever they list now, so that this migration composes with others that extend
-- them too. The new constraint allows everything the old one did, so the rows already
-- there need no check: NOT VALID spares a scan of the whole audit log, during which no
-- Sync could write an audit row (new rows are checked all the same).
-- +goose StatementBegin
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname, pg_get_constraintdef(oid) AS def,
               CASE WHEN pg_get_constraintdef(oid) LIKE '%(action %' THEN 'email_key' ELSE 'customer' END AS value
        FROM pg_constraint
        WHERE conrelid = 'audit_log'::regclass AND contype = 'c'
          AND (pg_get_constraintdef(oid) LIKE '%(action %' OR pg_get_constraintdef(oid) LIKE '%(cause %')
    LOOP
        CONTINUE WHEN position('''' || c.value || '''' IN c.def) > 0;
        EXECUTE format('ALTER TABLE audit_log DROP CONSTRAINT %I, ADD CONSTRAINT %I %s%s',
            c.conname, c.conname, replace(c.def, 'ARRAY[', 'ARRAY[' || quote_literal(c.value) || '::text, '),
            CASE WHEN c.def LIKE '% NOT VALID' THEN '' ELSE ' NOT VALID' END);
    END LOOP;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname, pg_get_constraintdef(oid) AS def
        FROM pg_constraint
        WHERE conrelid = 'audit_log'::regclass AND contype = 'c'
          AND (pg_get_constraintdef(oid) LIKE '%(action %' OR pg_get_constraintdef(oid) LIKE '%(cause %')
    LOOP
        EXECUTE format('ALTER TABLE audit_log DROP CONSTRAINT %I, ADD CONSTRAINT %I %s NOT VALID', c.conname, c.conname,
            replace(replace(replace(c.def, ' NOT VALID', ''), '''email_key''::text, ', ''), '''customer''::text, ', ''));
    END LOOP;
END;
$$;
-- +goose StatementEnd
DROP TABLE key_emails;
