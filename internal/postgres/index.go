package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SubscriptionBrief is the part of a mapping row a sweep compares: the key the row
// names and, for a bundle, its other keys.
type SubscriptionBrief struct {
	LicenseKey       string
	ProductID        int
	PaidThrough      time.Time
	EntitledThrough  time.Time
	BlockedByKeysync bool
	ExpiryBlockSeen  bool
	Unmapped         bool
	Bundle           []KeyBrief
}

// KeyBrief is the part of a key record a sweep compares.
type KeyBrief struct {
	ProductID        int
	LicenseKey       string
	BlockedByKeysync bool
	ExpiryBlockSeen  bool
}

// Key returns the record of the subscription's key in product, and false when keysync
// recorded none.
func (b SubscriptionBrief) Key(product int) (KeyBrief, bool) {
	if b.LicenseKey != "" && b.ProductID == product {
		return KeyBrief{ProductID: product, LicenseKey: b.LicenseKey, BlockedByKeysync: b.BlockedByKeysync, ExpiryBlockSeen: b.ExpiryBlockSeen}, true
	}
	for _, k := range b.Bundle {
		if k.ProductID == product {
			return k, true
		}
	}
	return KeyBrief{}, false
}

// Keys returns the records of every key of the subscription.
func (b SubscriptionBrief) Keys() []KeyBrief {
	var out []KeyBrief
	if b.LicenseKey != "" {
		k, _ := b.Key(b.ProductID)
		out = append(out, k)
	}
	return append(out, b.Bundle...)
}

// SubscriptionIndex returns every mapping row, briefly, by subscription id. About 100
// bytes a subscription (and as much again a bundle's key): a sweep of 100,000 holds
// 12 MB.
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
	// Bundles' other keys: few, the rest of each bundle's keys.
	rows, err = s.pool.Query(ctx, `SELECT subscription_id, product_id, license_key, blocked_by_keysync, expiry_block_seen
		FROM subscription_keys`)
	if err != nil {
		return nil, fmt.Errorf("subscription index: %w", translate(err))
	}
	var k KeyBrief
	_, err = pgx.ForEachRow(rows, []any{&id, &k.ProductID, &k.LicenseKey, &k.BlockedByKeysync, &k.ExpiryBlockSeen}, func() error {
		b := out[id]
		b.Bundle = append(b.Bundle, k)
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
