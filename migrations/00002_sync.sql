-- What the sync engine remembers per subscription beyond DESIGN §4's columns.

-- +goose Up
ALTER TABLE subscriptions
    ADD COLUMN unmapped_at timestamptz, -- recorded once: an unmapped subscription is not retried
    ADD COLUMN last_error  text;

-- +goose Down
ALTER TABLE subscriptions DROP COLUMN last_error, DROP COLUMN unmapped_at;
