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
