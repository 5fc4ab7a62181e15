package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/syncer"
)

// The queries of key delivery (package delivery): the keys of a subscription or a
// customer, and the e-mail of new keys, whose outbox is the audit log's create_key rows.

// The keys a customer is shown or sent: a subscription's (the one its row names, then a
// bundle's others), a purchase's (perpetual), and all of a customer's. Blocked keys are
// included; the page says so, and the lost-keys e-mail leaves them out.
const (
	subscriptionKeyRefs = `
SELECT 's' AS kind, id, product_id, license_key, created_at AS since FROM subscriptions
WHERE id = $1 AND license_key IS NOT NULL AND product_id IS NOT NULL
UNION ALL
SELECT 's', subscription_id, product_id, license_key, created_at FROM subscription_keys WHERE subscription_id = $1
ORDER BY since, product_id`
	purchaseKeyRefs = `
SELECT 'p' AS kind, purchase_id, product_id, license_key, created_at AS since FROM purchase_keys WHERE purchase_id = $1
ORDER BY since, product_id`
	customerKeyRefs = `
SELECT 's' AS kind, s.id, s.product_id, s.license_key, s.created_at AS since FROM subscriptions s
WHERE s.customer_id = $1 AND s.license_key IS NOT NULL AND s.product_id IS NOT NULL
UNION ALL
SELECT 's', k.subscription_id, k.product_id, k.license_key, k.created_at FROM subscription_keys k
JOIN subscriptions s ON s.id = k.subscription_id WHERE s.customer_id = $1
UNION ALL
SELECT 'p', k.purchase_id, k.product_id, k.license_key, k.created_at FROM purchase_keys k
JOIN purchases p ON p.id = k.purchase_id WHERE p.customer_id = $1
ORDER BY since, product_id`
)

// OwnerKeyRefs returns the keys keysync recorded for a subscription (a bundle's too)
// or a purchase (none yet: empty).
func (s *Store) OwnerKeyRefs(ctx context.Context, o delivery.Owner) ([]delivery.KeyRef, error) {
	if o.Kind == delivery.OwnerPurchase {
		return s.keyRefs(ctx, purchaseKeyRefs, o.ID)
	}
	return s.keyRefs(ctx, subscriptionKeyRefs, o.ID)
}

// CustomerKeyRefs returns the keys of every subscription and purchase of a Stripe
// customer, oldest first.
func (s *Store) CustomerKeyRefs(ctx context.Context, customer string) ([]delivery.KeyRef, error) {
	return s.keyRefs(ctx, customerKeyRefs, customer)
}

func (s *Store) keyRefs(ctx context.Context, q, arg string) ([]delivery.KeyRef, error) {
	rows, err := s.pool.Query(ctx, q, arg)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", translate(err))
	}
	refs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (delivery.KeyRef, error) {
		var ref delivery.KeyRef
		var kind string
		var since time.Time
		err := r.Scan(&kind, &ref.Owner.ID, &ref.ProductID, &ref.Key, &since)
		ref.Owner.Kind, ref.Perpetual = delivery.OwnerSubscription, false
		if kind == "p" {
			ref.Owner.Kind, ref.Perpetual = delivery.OwnerPurchase, true
		}
		return ref, err
	})
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", translate(err))
	}
	return refs, nil
}

// keysToEmail is the outbox: the keys created in the window that have no e-mail row,
// or one that a failure gave back (pending) and whose job may have given up. A key is
// created by an applied create_key row or, when that row was lost (the Sync that made
// the key crashed, or its request was cut, before the commit), by the adopt_key row of
// the Sync that found it again by keysync's own Notes marker: that row counts when the
// key was at most a day older than the window when adopted (Cryptolens may keep whole
// days) and no create_key row names the key. No other adoption is mailed: a key named in
// a subscription's metadata is the vendor's or Cryptolens' hosted module's, which its
// customer has; an SKGL key's new string ("skgl key change") is a change, not a new key;
// and a key keysync made long ago, found by its marker again (a bundle keeping the key a
// subscription had, a product that comes back, a database restored from a backup),
// has its create_key row or is too old. It reads the audit log by its (action, at)
// index.
const keysToEmail = `
SELECT a.id FROM audit_log a
WHERE a.action IN ('create_key', 'adopt_key') AND a.outcome = 'applied' AND a.license_key IS NOT NULL AND a.product_id IS NOT NULL
  AND a.at > now() - make_interval(secs => $1)
  AND (a.action = 'create_key' OR (` + adoptedNewKey + `))
  AND NOT EXISTS (SELECT 1 FROM key_emails e
                  WHERE e.product_id = a.product_id AND e.license_key = a.license_key AND e.status <> 'pending')
ORDER BY a.id LIMIT $2`

// adoptedNewKey says an adopt_key row a (of the window $1, in seconds) adopted a key
// keysync made and lost the create_key row of (see keysToEmail).
const adoptedNewKey = `a.action = 'adopt_key' AND a.params->>'source' LIKE '` + syncer.SourceMarker + ` %'
      AND (a.params->>'key_age_seconds')::float8 < $1 + 86400
      AND NOT EXISTS (SELECT 1 FROM audit_log c
                      WHERE c.license_key = a.license_key AND c.product_id = a.product_id
                        AND c.action = 'create_key' AND c.outcome = 'applied')`

// KeysToEmail returns, oldest first and at most limit, the audit rows of the keys
// created in the last window (applied create_key rows, and adopt_key rows that stand for
// a lost one) whose key has not been mailed, nor claimed for mailing.
func (s *Store) KeysToEmail(ctx context.Context, window time.Duration, limit int) ([]int64, error) {
	rows, err := s.pool.Query(ctx, keysToEmail, window.Seconds(), limit)
	if err != nil {
		return nil, fmt.Errorf("keys to e-mail: %w", translate(err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("keys to e-mail: %w", translate(err))
	}
	return ids, nil
}

// createdKey reads an outbox row, with the address and name its purchase collected (a
// guest's only ones).
const createdKey = `
SELECT a.id, a.product_id, a.license_key, coalesce(a.customer_id, ''), coalesce(a.subscription_id, ''), coalesce(a.purchase_id, ''),
    a.cause, coalesce(a.cause_id, ''), coalesce(p.customer_email, ''), coalesce(p.customer_name, '')
FROM audit_log a LEFT JOIN purchases p ON p.id = a.purchase_id
WHERE a.id = $1 AND a.outcome = 'applied' AND a.license_key IS NOT NULL AND a.product_id IS NOT NULL
  AND (a.action = 'create_key' OR (a.action = 'adopt_key' AND a.params->>'source' LIKE '` + syncer.SourceMarker + ` %'))`

// CreatedKey returns an outbox row (an applied create_key row, or an adopt_key row of a
// key found by keysync's marker), or ErrNotFound (wrapped).
func (s *Store) CreatedKey(ctx context.Context, id int64) (delivery.CreatedKey, error) {
	var k delivery.CreatedKey
	var sub, purchase string
	err := s.pool.QueryRow(ctx, createdKey, id).Scan(&k.AuditID, &k.ProductID, &k.Key, &k.CustomerID, &sub, &purchase, &k.Cause, &k.CauseID,
		&k.PurchaseEmail, &k.PurchaseName)
	if err != nil {
		return delivery.CreatedKey{}, fmt.Errorf("created key: %w", translate(err))
	}
	switch {
	case sub != "":
		k.Owner = delivery.Owner{Kind: delivery.OwnerSubscription, ID: sub}
	case purchase != "":
		k.Owner = delivery.Owner{Kind: delivery.OwnerPurchase, ID: purchase}
	}
	return k, nil
}

// guestPurchases are a guest's purchases (no Stripe customer) by the address they
// collected, in any case, newest first.
const guestPurchases = `
SELECT id, customer_email, coalesce(customer_name, '') FROM purchases
WHERE customer_id IS NULL AND lower(customer_email) = lower($1)
ORDER BY created DESC, id`

// GuestPurchases returns the purchases made without a Stripe customer (a guest's
// Checkout payments) whose collected address is address in any case, newest first.
func (s *Store) GuestPurchases(ctx context.Context, address string) ([]delivery.GuestPurchase, error) {
	rows, err := s.pool.Query(ctx, guestPurchases, address)
	if err != nil {
		return nil, fmt.Errorf("guest purchases: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (delivery.GuestPurchase, error) {
		var g delivery.GuestPurchase
		err := r.Scan(&g.Purchase, &g.Email, &g.Name)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("guest purchases: %w", translate(err))
	}
	return out, nil
}

const (
	recordKeyEmail = `
INSERT INTO key_emails (product_id, license_key, audit_id, customer_id) VALUES ($1, $2, $3, NULLIF($4, ''))
ON CONFLICT (product_id, license_key) DO NOTHING`
	// Under READ COMMITTED a second claimer waits for the first's row lock and then
	// finds the row no longer pending: one claim wins.
	claimKeyEmail = `
UPDATE key_emails SET status = 'sending', attempts = attempts + 1, claimed_at = now(), updated_at = now()
WHERE product_id = $1 AND license_key = $2 AND status = 'pending'`
)

// ClaimKeyEmail records the key's e-mail row unless there is one, and claims it if it
// is pending. It returns true when the caller is to send the e-mail now.
func (s *Store) ClaimKeyEmail(ctx context.Context, k delivery.CreatedKey) (bool, error) {
	var claimed bool
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, recordKeyEmail, k.ProductID, k.Key, k.AuditID, k.CustomerID); err != nil {
			return fmt.Errorf("record key e-mail: %w", translate(err))
		}
		tag, err := tx.Exec(ctx, claimKeyEmail, k.ProductID, k.Key)
		if err != nil {
			return fmt.Errorf("claim key e-mail: %w", translate(err))
		}
		claimed = tag.RowsAffected() == 1
		return nil
	})
	return claimed, err
}

const finishKeyEmail = `
UPDATE key_emails SET status = $3, recipient = NULLIF($4, ''), message_id = NULLIF($5, ''), last_error = NULLIF($6, ''),
    sent_at = CASE WHEN $3 = 'sent' THEN now() END, updated_at = now()
WHERE product_id = $1 AND license_key = $2`

// FinishKeyEmail records a claimed e-mail's outcome and, if audit is set, its audit
// row, in one transaction.
func (s *Store) FinishKeyEmail(ctx context.Context, k delivery.CreatedKey, e delivery.KeyEmail, audit *syncer.AuditRow) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, finishKeyEmail, k.ProductID, k.Key, e.Status, e.Recipient, e.MessageID, e.Error); err != nil {
			return fmt.Errorf("finish key e-mail: %w", translate(err))
		}
		if audit == nil {
			return nil
		}
		return insertAudits(ctx, tx, []syncer.AuditRow{*audit})
	})
}

// SaveAudit writes audit rows in one transaction.
func (s *Store) SaveAudit(ctx context.Context, rows []syncer.AuditRow) error {
	return s.InTx(ctx, func(tx pgx.Tx) error { return insertAudits(ctx, tx, rows) })
}

// insertDeliveryAudit is insertAudit for rows that may name no subscription (a
// purchase's key, the lost-keys form).
const insertDeliveryAudit = `
INSERT INTO audit_log (subscription_id, customer_id, product_id, license_key, action, params, outcome, cause, cause_id, message, duration_ms,
    purchase_id)
VALUES (NULLIF($1, ''), NULLIF($2, ''), NULLIF($3, 0), NULLIF($4, ''), $5, $6, $7, $8, NULLIF($9, ''), NULLIF($10, ''), $11, NULLIF($12, ''))`

func insertAudits(ctx context.Context, tx pgx.Tx, audits []syncer.AuditRow) error {
	b := &pgx.Batch{}
	for _, a := range audits {
		params := a.Params
		if params == nil {
			params = map[string]any{}
		}
		b.Queue(insertDeliveryAudit, a.SubscriptionID, a.CustomerID, a.ProductID, a.LicenseKey, a.Action, params, string(a.Outcome),
			string(a.Cause), a.CauseID, a.Message, float64(a.Duration.Microseconds())/1000, a.PurchaseID)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("save audit: %w", translate(err))
	}
	return nil
}
