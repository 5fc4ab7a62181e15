package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/syncer"
)

const getPurchase = `
SELECT id, coalesce(customer_id, '') AS customer_id, coalesce(customer_email, '') AS customer_email,
    coalesce(customer_name, '') AS customer_name, status, invoice_id, refunded, disputed, created, last_synced_at, unmapped_at, last_error
FROM purchases WHERE id = $1`

const getPurchaseKeys = `
SELECT product_id, license_key, key_id, blocked_by_keysync, false AS expiry_block_seen
FROM purchase_keys WHERE purchase_id = $1 ORDER BY created_at, product_id`

// GetPurchase returns a purchase's row with its keys, or ErrNotFound (wrapped) when
// keysync has none.
func (s *Store) GetPurchase(ctx context.Context, id string) (syncer.PurchaseRow, error) {
	return getPurchaseRow(ctx, s.pool, id)
}

// GetPurchase reads the locked purchase's row on the lock's own connection, or returns
// ErrNotFound (wrapped) when keysync has none.
func (l *PurchaseLock) GetPurchase(ctx context.Context) (syncer.PurchaseRow, error) {
	return getPurchaseRow(ctx, l.conn, l.id)
}

// invoiceSession is the session whose post-payment invoice an invoice is, as the
// session's Sync recorded it.
const invoiceSession = `SELECT id FROM purchases WHERE invoice_id = $1`

// InvoiceSession returns the purchase (a Checkout Session) whose post-payment invoice
// the locked id is, "" when keysync recorded none.
func (l *PurchaseLock) InvoiceSession(ctx context.Context) (string, error) {
	var id string
	err := l.conn.QueryRow(ctx, invoiceSession, l.id).Scan(&id)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("invoice's session: %w", translate(err))
	}
	return id, nil
}

// PurchaseKeys returns a purchase's keys, one per Cryptolens product (none: the
// purchase has no key yet, or keysync does not know it).
func (s *Store) PurchaseKeys(ctx context.Context, id string) ([]syncer.KeyRow, error) {
	return getKeys(ctx, s.pool, getPurchaseKeys, id)
}

func getPurchaseRow(ctx context.Context, q querier, id string) (syncer.PurchaseRow, error) {
	rows, err := q.Query(ctx, getPurchase, id)
	if err != nil {
		return syncer.PurchaseRow{}, fmt.Errorf("get purchase: %w", translate(err))
	}
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[syncer.PurchaseRow])
	if err != nil {
		return syncer.PurchaseRow{}, fmt.Errorf("get purchase: %w", translate(err))
	}
	if row.Keys, err = getKeys(ctx, q, getPurchaseKeys, id); err != nil {
		return syncer.PurchaseRow{}, err
	}
	return row, nil
}

// getKeys reads key records with query, which selects the columns of syncer.KeyRow.
func getKeys(ctx context.Context, q querier, query, owner string) ([]syncer.KeyRow, error) {
	rows, err := q.Query(ctx, query, owner)
	if err != nil {
		return nil, fmt.Errorf("get keys: %w", translate(err))
	}
	keys, err := pgx.CollectRows(rows, pgx.RowToStructByName[syncer.KeyRow])
	if err != nil {
		return nil, fmt.Errorf("get keys: %w", translate(err))
	}
	return keys, nil
}

const upsertPurchase = `
INSERT INTO purchases (id, customer_id, status, invoice_id, refunded, disputed, created, last_synced_at, unmapped_at, last_error,
    customer_email, customer_name, updated_at)
VALUES ($1, NULLIF($2, ''), $3, $4, $5, $6, $7, $8, $9, $10, NULLIF($11, ''), NULLIF($12, ''), now())
ON CONFLICT (id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
    customer_email = COALESCE(EXCLUDED.customer_email, purchases.customer_email),
    customer_name = COALESCE(EXCLUDED.customer_name, purchases.customer_name),
    invoice_id = COALESCE(EXCLUDED.invoice_id, purchases.invoice_id),
    refunded = EXCLUDED.refunded, disputed = EXCLUDED.disputed, created = EXCLUDED.created,
    last_synced_at = EXCLUDED.last_synced_at, unmapped_at = EXCLUDED.unmapped_at, last_error = EXCLUDED.last_error,
    updated_at = now()`

const upsertPurchaseKey = `
INSERT INTO purchase_keys (purchase_id, product_id, license_key, key_id, blocked_by_keysync)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (purchase_id, product_id) DO UPDATE SET
    license_key = EXCLUDED.license_key, key_id = EXCLUDED.key_id, blocked_by_keysync = EXCLUDED.blocked_by_keysync,
    updated_at = now()`

// SavePurchase writes the locked purchase's row, its keys and the audit rows in one
// transaction, on the lock's connection. A purchase's keys are never taken back: a
// product no longer among row.Keys keeps its row.
func (l *PurchaseLock) SavePurchase(ctx context.Context, row syncer.PurchaseRow, audits []syncer.AuditRow) error {
	return savePurchase(ctx, l.conn, row, audits)
}

func savePurchase(ctx context.Context, q querier, row syncer.PurchaseRow, audits []syncer.AuditRow) error {
	return inTx(ctx, q, func(tx pgx.Tx) error {
		created := row.Created
		if created.IsZero() {
			created = time.Now() // read from Stripe before any save; a guard only
		}
		b := &pgx.Batch{}
		b.Queue(upsertPurchase, row.ID, row.CustomerID, row.Status, row.InvoiceID, row.Refunded, row.Disputed, created,
			row.LastSyncedAt, row.UnmappedAt, row.LastError, row.CustomerEmail, row.CustomerName)
		for _, k := range row.Keys {
			b.Queue(upsertPurchaseKey, row.ID, k.ProductID, k.LicenseKey, k.KeyID, k.BlockedByKeysync)
		}
		queueAudits(b, audits)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("save purchase: %w", translate(err))
		}
		return nil
	})
}
