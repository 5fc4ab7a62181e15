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

// keysToEmail is the outbox: created keys of the window with no e-mail row, or one
// that a failure gave back (pending) and whose job may have given up. It reads the
// audit log by its (action, at) index.
const keysToEmail = `
SELECT a.id FROM audit_log a
WHERE a.action = 'create_key' AND a.outcome = 'applied' AND a.license_key IS NOT NULL AND a.product_id IS NOT NULL
  AND a.at > now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM key_emails e
                  WHERE e.product_id = a.product_id AND e.license_key = a.license_key AND e.status <> 'pending')
ORDER BY a.id LIMIT $2`

// KeysToEmail returns, oldest first and at most limit, the applied create_key audit
// rows of the last window whose key has not been mailed, nor claimed for mailing.
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

const createdKey = `
SELECT id, product_id, license_key, coalesce(customer_id, ''), coalesce(subscription_id, ''), coalesce(purchase_id, ''), cause,
    coalesce(cause_id, '')
FROM audit_log
WHERE id = $1 AND action = 'create_key' AND outcome = 'applied' AND license_key IS NOT NULL AND product_id IS NOT NULL`

// CreatedKey returns an applied create_key audit row, or ErrNotFound (wrapped).
func (s *Store) CreatedKey(ctx context.Context, id int64) (delivery.CreatedKey, error) {
	var k delivery.CreatedKey
	var sub, purchase string
	err := s.pool.QueryRow(ctx, createdKey, id).Scan(&k.AuditID, &k.ProductID, &k.Key, &k.CustomerID, &sub, &purchase, &k.Cause, &k.CauseID)
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
