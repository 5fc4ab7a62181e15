-- One-time purchases (DESIGN §2.1): a Checkout Session in payment mode, or an invoice
-- that belongs to no subscription, buys one perpetual key per Cryptolens product. And
-- bundles (DESIGN §2): a subscription whose items map to several Cryptolens products
-- has one key per product.

-- +goose Up
CREATE TABLE purchases (
    id             text        PRIMARY KEY, -- the session (cs_...) or the invoice (in_...)
    customer_id    text,                    -- none for a guest's Checkout payment
    -- What the purchase collected (a session's customer_details, an invoice's
    -- customer_email and customer_name): a guest's only address, for the key's e-mail
    -- and the lost-keys form.
    customer_email text,
    customer_name  text,
    -- paid; processing (an asynchronous payment under way); payment_failed; open;
    -- expired; and an invoice's draft, void or uncollectible
    status         text        NOT NULL,
    -- a session's post-payment invoice: part of this purchase, not one of its own
    invoice_id     text,
    refunded       boolean     NOT NULL DEFAULT false,
    disputed       boolean     NOT NULL DEFAULT false,
    created        timestamptz NOT NULL,    -- when Stripe created the session or invoice
    last_synced_at timestamptz,
    unmapped_at    timestamptz,             -- recorded once: an unmapped purchase is not retried
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchases_customer ON purchases (customer_id);
-- The lost-keys form finds a guest's purchases by address, in any case.
CREATE INDEX purchases_guest_email ON purchases (lower(customer_email)) WHERE customer_id IS NULL;
CREATE UNIQUE INDEX purchases_invoice ON purchases (invoice_id) WHERE invoice_id IS NOT NULL;
-- The sweep reads the purchases of its window, and, whenever they were made, the ones
-- whose payment is not settled yet or whose last Sync failed.
CREATE INDEX purchases_created ON purchases (created);
CREATE INDEX purchases_unsettled ON purchases (created)
    WHERE (status IN ('processing', 'open') AND unmapped_at IS NULL) OR last_synced_at IS NULL OR last_error IS NOT NULL;

-- A purchase's keys, one per Cryptolens product.
CREATE TABLE purchase_keys (
    purchase_id        text        NOT NULL REFERENCES purchases (id),
    product_id         integer     NOT NULL,
    license_key        text        NOT NULL,
    key_id             bigint,
    blocked_by_keysync boolean     NOT NULL DEFAULT false, -- recorded before BlockKey is called
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (purchase_id, product_id)
);
-- One key belongs to one purchase: a second claim on it is a bug to surface.
CREATE UNIQUE INDEX purchase_keys_key ON purchase_keys (product_id, license_key);

-- A bundle's keys other than the one its subscriptions row names (the first it had),
-- one per Cryptolens product. Losing the mapping (a truncated subscriptions table)
-- loses them too: the keys' Notes markers bring them back.
CREATE TABLE subscription_keys (
    subscription_id    text        NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    product_id         integer     NOT NULL,
    license_key        text        NOT NULL,
    key_id             bigint,
    blocked_by_keysync boolean     NOT NULL DEFAULT false, -- recorded before BlockKey is called
    expiry_block_seen  boolean     NOT NULL DEFAULT false, -- recorded before any Cryptolens call
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, product_id)
);
CREATE UNIQUE INDEX subscription_keys_key ON subscription_keys (product_id, license_key);

-- An audit row is about a subscription or about a purchase.
ALTER TABLE audit_log ADD COLUMN purchase_id text;
CREATE INDEX audit_log_purchase ON audit_log (purchase_id, at DESC) WHERE purchase_id IS NOT NULL;

CREATE OR REPLACE VIEW keysync_audit AS
SELECT a.id, a.at, a.subscription_id, a.customer_id, a.product_id, a.license_key, a.action, a.outcome,
       a.cause, a.cause_id, a.params, a.message, a.duration_ms, a.purchase_id
FROM audit_log a;

CREATE OR REPLACE VIEW keysync_license_timeline AS
SELECT a.license_key, a.subscription_id, a.at, a.action,
       (a.params->>'old_expires')::timestamptz AS old_expires,
       COALESCE((a.params->>'new_expires')::timestamptz, (a.params->>'expires')::timestamptz) AS new_expires,
       (a.params->>'days')::int AS days, a.cause, a.cause_id, a.purchase_id
FROM audit_log a
WHERE a.action IN ('create_key', 'extend') AND a.outcome = 'applied';

-- +goose Down
DROP VIEW keysync_license_timeline;
DROP VIEW keysync_audit;
CREATE VIEW keysync_audit AS
SELECT a.id, a.at, a.subscription_id, a.customer_id, a.product_id, a.license_key, a.action, a.outcome,
       a.cause, a.cause_id, a.params, a.message, a.duration_ms
FROM audit_log a;
CREATE VIEW keysync_license_timeline AS
SELECT a.license_key, a.subscription_id, a.at, a.action,
       (a.params->>'old_expires')::timestamptz AS old_expires,
       COALESCE((a.params->>'new_expires')::timestamptz, (a.params->>'expires')::timestamptz) AS new_expires,
       (a.params->>'days')::int AS days, a.cause, a.cause_id
FROM audit_log a
WHERE a.action IN ('create_key', 'extend') AND a.outcome = 'applied';
DROP INDEX audit_log_purchase;
ALTER TABLE audit_log DROP COLUMN purchase_id;
DROP TABLE subscription_keys;
DROP TABLE purchase_keys;
DROP TABLE purchases;
