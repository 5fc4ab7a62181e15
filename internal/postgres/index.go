package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SubscriptionBrief is the part of a mapping row a sweep compares.
type SubscriptionBrief struct {
	LicenseKey       string
	ProductID        int
	PaidThrough      time.Time
	EntitledThrough  time.Time
	BlockedByKeysync bool
	ExpiryBlockSeen  bool
	Unmapped         bool
}

// SubscriptionIndex returns every mapping row, briefly, by subscription id. About 100
// bytes a subscription: a sweep of 100,000 holds 12 MB.
func (s *Store) SubscriptionIndex(ctx context.Context) (map[string]SubscriptionBrief, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, coalesce(license_key, ''), coalesce(product_id, 0),
		coalesce(paid_through, 'epoch'::timestamptz), coalesce(entitled_through, 'epoch'::timestamptz), blocked_by_keysync,
		expiry_block_seen, unmapped_at IS NOT NULL FROM subscriptions`)
	if err != nil {
		return nil, fmt.Errorf("subscription index: %w", translate(err))
	}
	out := map[string]SubscriptionBrief{}
	var id string
	var b SubscriptionBrief
	_, err = pgx.ForEachRow(rows, []any{&id, &b.LicenseKey, &b.ProductID, &b.PaidThrough, &b.EntitledThrough, &b.BlockedByKeysync,
		&b.ExpiryBlockSeen, &b.Unmapped}, func() error {
		for _, t := range []*time.Time{&b.PaidThrough, &b.EntitledThrough} {
			if t.Unix() == 0 {
				*t = time.Time{}
			}
		}
		out[id] = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("subscription index: %w", translate(err))
	}
	return out, nil
}

// PurchaseBrief is the part of a purchase's row a sweep compares.
type PurchaseBrief struct {
	Status string
	// InvoiceID is a session's post-payment invoice: part of this purchase.
	InvoiceID string
	Unmapped  bool
	// Synced says the last Sync succeeded.
	Synced bool
}

// Settled says keysync has nothing left to do for the purchase until something changes
// in Stripe: its last Sync succeeded, and its payment is not on its way (processing, or
// open and mapped).
func (b PurchaseBrief) Settled() bool {
	return b.Synced && (b.Unmapped || (b.Status != "processing" && b.Status != "open"))
}

// PurchaseIndex returns, by id, the purchases Stripe created at or after since, and
// every purchase that is not settled (PurchaseBrief.Settled) whenever it was made.
func (s *Store) PurchaseIndex(ctx context.Context, since time.Time) (map[string]PurchaseBrief, error) {
	const cols = `id, coalesce(invoice_id, ''), status, unmapped_at IS NOT NULL, last_synced_at IS NOT NULL AND last_error IS NULL`
	rows, err := s.pool.Query(ctx, `SELECT `+cols+` FROM purchases WHERE created >= $1
		UNION SELECT `+cols+` FROM purchases
		WHERE (status IN ('processing', 'open') AND unmapped_at IS NULL) OR last_synced_at IS NULL OR last_error IS NOT NULL`, since)
	if err != nil {
		return nil, fmt.Errorf("purchase index: %w", translate(err))
	}
	out := map[string]PurchaseBrief{}
	var id string
	var b PurchaseBrief
	_, err = pgx.ForEachRow(rows, []any{&id, &b.InvoiceID, &b.Status, &b.Unmapped, &b.Synced}, func() error {
		out[id] = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("purchase index: %w", translate(err))
	}
	return out, nil
}
