package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/syncer"
)

const getSubscription = `
SELECT id, customer_id, status, product_id, license_key, key_id, paid_through, entitled_through, desired_expires,
       blocked_by_keysync, expiry_block_seen, checkout_session_id, last_synced_at, unmapped_at, last_error
FROM subscriptions WHERE id = $1`

// GetSubscription returns the mapping row of a subscription, or ErrNotFound (wrapped)
// when keysync has none.
func (s *Store) GetSubscription(ctx context.Context, id string) (syncer.SubscriptionRow, error) {
	return getSubscriptionRow(ctx, s.pool, id)
}

// GetSubscription reads the locked subscription's row on the lock's own connection (a
// Sync needs one connection, whatever the pool's size), or returns ErrNotFound
// (wrapped) when keysync has none.
func (l *SubscriptionLock) GetSubscription(ctx context.Context) (syncer.SubscriptionRow, error) {
	return getSubscriptionRow(ctx, l.conn, l.id)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Begin(ctx context.Context) (pgx.Tx, error)
}

func getSubscriptionRow(ctx context.Context, q querier, id string) (syncer.SubscriptionRow, error) {
	rows, err := q.Query(ctx, getSubscription, id)
	if err != nil {
		return syncer.SubscriptionRow{}, fmt.Errorf("get subscription: %w", translate(err))
	}
	// The row type is syncer's and carries no db tags: pgx matches each column to the
	// field of the same name, ignoring case and underscores (customer_id: CustomerID),
	// and fails on a field no column fills.
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[syncer.SubscriptionRow])
	if err != nil {
		return syncer.SubscriptionRow{}, fmt.Errorf("get subscription: %w", translate(err))
	}
	if row.Bundle, err = getKeys(ctx, q, getBundleKeys, id); err != nil {
		return syncer.SubscriptionRow{}, err
	}
	return row, nil
}

const getBundleKeys = `
SELECT product_id, license_key, key_id, blocked_by_keysync, expiry_block_seen
FROM subscription_keys WHERE subscription_id = $1 ORDER BY created_at, product_id`

// SubscriptionKeys returns a subscription's keys, one per Cryptolens product: the one
// its row names first, then a bundle's others (none: no key yet, or keysync does not
// know the subscription).
func (s *Store) SubscriptionKeys(ctx context.Context, id string) ([]syncer.KeyRow, error) {
	row, err := getSubscriptionRow(ctx, s.pool, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	var out []syncer.KeyRow
	if row.ProductID != nil && row.LicenseKey != nil {
		out = append(out, syncer.KeyRow{ProductID: *row.ProductID, LicenseKey: row.LicenseKey, KeyID: row.KeyID,
			BlockedByKeysync: row.BlockedByKeysync, ExpiryBlockSeen: row.ExpiryBlockSeen})
	}
	return append(out, row.Bundle...), nil
}

const upsertSubscription = `
INSERT INTO subscriptions (id, customer_id, status, product_id, license_key, key_id, paid_through, desired_expires,
    blocked_by_keysync, checkout_session_id, last_synced_at, unmapped_at, last_error, entitled_through, expiry_block_seen, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now())
ON CONFLICT (id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, product_id = EXCLUDED.product_id,
    license_key = EXCLUDED.license_key, key_id = EXCLUDED.key_id,
    -- paid-through and entitled-through only move forward
    paid_through = GREATEST(subscriptions.paid_through, EXCLUDED.paid_through),
    entitled_through = GREATEST(subscriptions.entitled_through, EXCLUDED.entitled_through),
    desired_expires = EXCLUDED.desired_expires, blocked_by_keysync = EXCLUDED.blocked_by_keysync,
    expiry_block_seen = EXCLUDED.expiry_block_seen,
    checkout_session_id = COALESCE(EXCLUDED.checkout_session_id, subscriptions.checkout_session_id),
    last_synced_at = EXCLUDED.last_synced_at, unmapped_at = EXCLUDED.unmapped_at,
    last_error = EXCLUDED.last_error, updated_at = now()`

// SaveSync writes the subscription's row, its bundle's keys (exactly row.Bundle: a key
// of a product not there is no longer recorded) and its audit rows in one transaction,
// so the audit never tells a story the mapping does not, or the reverse.
func (s *Store) SaveSync(ctx context.Context, row syncer.SubscriptionRow, audits []syncer.AuditRow) error {
	return saveSync(ctx, s.pool, row, audits)
}

const upsertBundleKey = `
INSERT INTO subscription_keys (subscription_id, product_id, license_key, key_id, blocked_by_keysync, expiry_block_seen)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (subscription_id, product_id) DO UPDATE SET
    license_key = EXCLUDED.license_key, key_id = EXCLUDED.key_id, blocked_by_keysync = EXCLUDED.blocked_by_keysync,
    expiry_block_seen = EXCLUDED.expiry_block_seen, updated_at = now()`

// SaveSync is Store.SaveSync on the lock's own connection.
func (l *SubscriptionLock) SaveSync(ctx context.Context, row syncer.SubscriptionRow, audits []syncer.AuditRow) error {
	return saveSync(ctx, l.conn, row, audits)
}

func saveSync(ctx context.Context, q querier, row syncer.SubscriptionRow, audits []syncer.AuditRow) error {
	return inTx(ctx, q, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, upsertSubscription, row.ID, row.CustomerID, row.Status, row.ProductID, row.LicenseKey, row.KeyID,
			row.PaidThrough, row.DesiredExpires, row.BlockedByKeysync, row.CheckoutSessionID, row.LastSyncedAt, row.UnmappedAt, row.LastError,
			row.EntitledThrough, row.ExpiryBlockSeen)
		if err != nil {
			return fmt.Errorf("save subscription: %w", translate(err))
		}
		b := &pgx.Batch{}
		products := make([]int32, len(row.Bundle))
		for i, k := range row.Bundle {
			products[i] = int32(k.ProductID)
		}
		b.Queue(`DELETE FROM subscription_keys WHERE subscription_id = $1 AND product_id <> ALL($2)`, row.ID, products)
		for _, k := range row.Bundle {
			b.Queue(upsertBundleKey, row.ID, k.ProductID, k.LicenseKey, k.KeyID, k.BlockedByKeysync, k.ExpiryBlockSeen)
		}
		queueAudits(b, audits)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("save audit: %w", translate(err))
		}
		return nil
	})
}
