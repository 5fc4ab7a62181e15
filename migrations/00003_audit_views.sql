-- SQL views for people who prefer SQL to `keysync audit`.

-- +goose Up
-- Every change, newest first, with the cause spelled out.
CREATE VIEW keysync_audit AS
SELECT a.id, a.at, a.subscription_id, a.customer_id, a.product_id, a.license_key, a.action, a.outcome,
       a.cause, a.cause_id, a.params, a.message, a.duration_ms
FROM audit_log a;

-- The expiry history of each key: one row per change of its expiry.
CREATE VIEW keysync_license_timeline AS
SELECT a.license_key, a.subscription_id, a.at, a.action,
       (a.params->>'old_expires')::timestamptz AS old_expires,
       COALESCE((a.params->>'new_expires')::timestamptz, (a.params->>'expires')::timestamptz) AS new_expires,
       (a.params->>'days')::int AS days, a.cause, a.cause_id
FROM audit_log a
WHERE a.action IN ('create_key', 'extend') AND a.outcome = 'applied';

-- Filters by action or outcome over a time range.
CREATE INDEX audit_log_action_at ON audit_log (action, at DESC);

-- +goose Down
DROP INDEX audit_log_action_at;
DROP VIEW keysync_license_timeline;
DROP VIEW keysync_audit;
