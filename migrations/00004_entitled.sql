-- Entitled-through (DESIGN §2 v2): the date the key's expiry is computed from, which
-- may lie past paid-through (invoiced customers, paused collection, metered prices,
-- moved trials); and the expiry block keysync saw and has yet to lift.

-- +goose Up
ALTER TABLE subscriptions
    ADD COLUMN entitled_through  timestamptz, -- only moves forward
    ADD COLUMN expiry_block_seen boolean NOT NULL DEFAULT false; -- recorded before any Cryptolens call

-- Until now the key's target was paid-through + buffer.
UPDATE subscriptions SET entitled_through = paid_through WHERE paid_through IS NOT NULL;

-- +goose Down
ALTER TABLE subscriptions DROP COLUMN expiry_block_seen, DROP COLUMN entitled_through;
