package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// This file holds the operator console's reads: what the overview counts, how a search
// finds subscriptions, and the events that touched one.

// EventCounts counts the events received in a window, and those of them still pending
// or failed.
type EventCounts struct {
	Received, Pending, Failed int
}

// Overview is what the console's first page shows of the store.
type Overview struct {
	LastHour, LastDay EventCounts
	// PendingNow and FailedNow count every pending and failed event, however old.
	PendingNow, FailedNow int
	// OldestPending is how long the oldest pending event has waited (0: none).
	OldestPending time.Duration
	// FailedActionsHour and FailedActionsDay count audited actions that failed.
	FailedActionsHour, FailedActionsDay int
	// Now is the database's clock when the overview was read: ages are measured on it.
	Now time.Time
}

// The events of the last day and every open one. received_at has no index of its own
// (the open ones have a partial one), so this reads the table; it is one page view.
const overviewEvents = `
SELECT
    count(*) FILTER (WHERE received_at >= now() - interval '1 hour'),
    count(*) FILTER (WHERE received_at >= now() - interval '1 hour' AND status = 'pending'),
    count(*) FILTER (WHERE received_at >= now() - interval '1 hour' AND status = 'failed'),
    count(*) FILTER (WHERE received_at >= now() - interval '1 day'),
    count(*) FILTER (WHERE received_at >= now() - interval '1 day' AND status = 'pending'),
    count(*) FILTER (WHERE received_at >= now() - interval '1 day' AND status = 'failed'),
    count(*) FILTER (WHERE status = 'pending'),
    count(*) FILTER (WHERE status = 'failed'),
    coalesce(extract(epoch FROM now() - min(received_at) FILTER (WHERE status = 'pending')), 0)::float8,
    (SELECT count(*) FROM audit_log WHERE outcome = 'failed' AND at >= now() - interval '1 hour'),
    (SELECT count(*) FROM audit_log WHERE outcome = 'failed' AND at >= now() - interval '1 day'),
    now()
FROM stripe_events
WHERE received_at >= now() - interval '1 day' OR status IN ('pending', 'failed')`

// ConsoleOverview counts events and failed actions for the console's overview.
func (s *Store) ConsoleOverview(ctx context.Context) (Overview, error) {
	var o Overview
	var oldest float64
	err := s.pool.QueryRow(ctx, overviewEvents).Scan(&o.LastHour.Received, &o.LastHour.Pending, &o.LastHour.Failed,
		&o.LastDay.Received, &o.LastDay.Pending, &o.LastDay.Failed, &o.PendingNow, &o.FailedNow, &oldest,
		&o.FailedActionsHour, &o.FailedActionsDay, &o.Now)
	if err != nil {
		return Overview{}, fmt.Errorf("console overview: %w", translate(err))
	}
	o.OldestPending = secondsDuration(oldest)
	return o, nil
}

// RecentRuns returns the latest runs of each kind (sweep, then catch-up), newest first,
// at most perKind of each: one index probe per kind.
func (s *Store) RecentRuns(ctx context.Context, perKind int) ([]RunRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT r.id, r.kind, r.started_at, r.finished_at, r.status, r.scanned, r.drifted, r.fixed, r.failed,
		r.orphans, r.cursor, r.error
		FROM (VALUES (1, 'sweep'), (2, 'catch_up')) AS k(ord, kind),
		LATERAL (SELECT * FROM sync_runs WHERE sync_runs.kind = k.kind ORDER BY started_at DESC LIMIT $1) r
		ORDER BY k.ord, r.started_at DESC`, max(1, min(perKind, 50)))
	if err != nil {
		return nil, fmt.Errorf("recent runs: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[RunRow])
	if err != nil {
		return nil, fmt.Errorf("recent runs: %w", translate(err))
	}
	return out, nil
}

// SubscriptionHit is a subscription a console search found. Status, CustomerID,
// LicenseKey and BundleKeys are keysync's mapping row's; a subscription only the audit
// log names has none (Known false).
type SubscriptionHit struct {
	ID         string  `db:"id"`
	Known      bool    `db:"known"`
	CustomerID string  `db:"customer_id"`
	Status     string  `db:"status"`
	LicenseKey *string `db:"license_key"`
	// BundleKeys are a bundle's other keys, one per further Cryptolens product.
	BundleKeys   []string   `db:"bundle_keys"`
	LastSyncedAt *time.Time `db:"last_synced_at"`
}

// Searches over the mapping rows and the audit log: a key or customer keysync once
// served is found even after its subscription's row moved on to another key. A
// bundle's further keys are searched in subscription_keys.
const (
	subscriptionsByCustomer = `
WITH ids AS (
    SELECT id FROM subscriptions WHERE customer_id = ANY($1)
    UNION SELECT subscription_id FROM audit_log WHERE customer_id = ANY($1) AND subscription_id IS NOT NULL
)` + hitColumns
	subscriptionsByKey = `
WITH ids AS (
    SELECT id FROM subscriptions WHERE license_key = ANY($1)
    UNION SELECT subscription_id FROM subscription_keys WHERE license_key = ANY($1)
    UNION SELECT subscription_id FROM audit_log WHERE license_key = ANY($1) AND subscription_id IS NOT NULL
)` + hitColumns
	hitColumns = `
SELECT ids.id, s.id IS NOT NULL AS known, coalesce(s.customer_id, '') AS customer_id, coalesce(s.status, '') AS status,
    s.license_key, s.last_synced_at,
    array(SELECT k.license_key FROM subscription_keys k WHERE k.subscription_id = ids.id ORDER BY k.created_at, k.product_id) AS bundle_keys
FROM ids LEFT JOIN subscriptions s ON s.id = ids.id
ORDER BY s.last_synced_at DESC NULLS LAST, ids.id LIMIT 100`
)

// SubscriptionsByCustomer returns the subscriptions of the given Stripe customers that
// keysync has a row or audit rows for (at most 100).
func (s *Store) SubscriptionsByCustomer(ctx context.Context, customers []string) ([]SubscriptionHit, error) {
	return s.hits(ctx, subscriptionsByCustomer, customers)
}

// SubscriptionsByKey returns the subscriptions a license key belongs or belonged to.
func (s *Store) SubscriptionsByKey(ctx context.Context, key string) ([]SubscriptionHit, error) {
	return s.hits(ctx, subscriptionsByKey, []string{key})
}

func (s *Store) hits(ctx context.Context, q string, values []string) ([]SubscriptionHit, error) {
	rows, err := s.pool.Query(ctx, q, values)
	if err != nil {
		return nil, fmt.Errorf("find subscriptions: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[SubscriptionHit])
	if err != nil {
		return nil, fmt.Errorf("find subscriptions: %w", translate(err))
	}
	return out, nil
}

// PurchaseHit is a one-time purchase a console search found. CustomerID, Status,
// Created, LicenseKeys and LastSyncedAt are keysync's row's; a purchase only the audit
// log names has none (Known false).
type PurchaseHit struct {
	ID           string     `db:"id"`
	Known        bool       `db:"known"`
	CustomerID   string     `db:"customer_id"`
	Status       string     `db:"status"`
	Created      *time.Time `db:"created"`
	LicenseKeys  []string   `db:"license_keys"`
	LastSyncedAt *time.Time `db:"last_synced_at"`
}

// Searches for purchases, as for subscriptions: their rows, their keys, and the audit
// log's rows about them.
const (
	purchasesByCustomer = `
WITH ids AS (
    SELECT id FROM purchases WHERE customer_id = ANY($1)
    UNION SELECT purchase_id FROM audit_log WHERE customer_id = ANY($1) AND purchase_id IS NOT NULL
)` + purchaseHitColumns
	purchasesByKey = `
WITH ids AS (
    SELECT purchase_id AS id FROM purchase_keys WHERE license_key = ANY($1)
    UNION SELECT purchase_id FROM audit_log WHERE license_key = ANY($1) AND purchase_id IS NOT NULL
)` + purchaseHitColumns
	purchaseHitColumns = `
SELECT ids.id, p.id IS NOT NULL AS known, coalesce(p.customer_id, '') AS customer_id, coalesce(p.status, '') AS status,
    p.created, p.last_synced_at,
    array(SELECT k.license_key FROM purchase_keys k WHERE k.purchase_id = ids.id ORDER BY k.created_at, k.product_id) AS license_keys
FROM ids LEFT JOIN purchases p ON p.id = ids.id
ORDER BY p.created DESC NULLS LAST, ids.id LIMIT 100`
)

// PurchasesByCustomer returns the one-time purchases of the given Stripe customers
// that keysync has a row or audit rows for (at most 100), newest first.
func (s *Store) PurchasesByCustomer(ctx context.Context, customers []string) ([]PurchaseHit, error) {
	return s.purchaseHits(ctx, purchasesByCustomer, customers)
}

// PurchasesByKey returns the one-time purchases a license key belongs or belonged to.
func (s *Store) PurchasesByKey(ctx context.Context, key string) ([]PurchaseHit, error) {
	return s.purchaseHits(ctx, purchasesByKey, []string{key})
}

func (s *Store) purchaseHits(ctx context.Context, q string, values []string) ([]PurchaseHit, error) {
	rows, err := s.pool.Query(ctx, q, values)
	if err != nil {
		return nil, fmt.Errorf("find purchases: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[PurchaseHit])
	if err != nil {
		return nil, fmt.Errorf("find purchases: %w", translate(err))
	}
	return out, nil
}

// EventRow is a stored event as the console lists it.
type EventRow struct {
	ID         string     `db:"id"`
	Type       string     `db:"type"`
	Source     string     `db:"source"`
	Status     string     `db:"status"`
	Attempts   int        `db:"attempts"`
	LastError  *string    `db:"last_error"`
	Created    time.Time  `db:"created"`
	ReceivedAt time.Time  `db:"received_at"`
	Processed  *time.Time `db:"processed_at"`
}

// TouchWindow is how far back EventsTouching reads payloads: Stripe's own 30 days of
// events. Older events are found through the audit rows they caused.
const TouchWindow = 30 * 24 * time.Hour

// The events of the last TouchWindow whose object is the subscription or names it (an
// invoice or checkout session; an invoice in 2025-03-31.basil or later names it under
// parent), and every event that caused an audited action on it. No index covers the
// payload: the BRIN index on created keeps the read to the window's pages.
const eventsTouching = `
SELECT id, type, source, status, attempts, last_error, created, received_at, processed_at
FROM stripe_events
WHERE (created >= now() - make_interval(secs => $3) AND (
        (payload #>> '{data,object,object}' = 'subscription' AND payload #>> '{data,object,id}' = $1)
        OR payload #>> '{data,object,subscription}' = $1
        OR payload #>> '{data,object,parent,subscription_details,subscription}' = $1))
   OR id IN (SELECT cause_id FROM audit_log WHERE subscription_id = $1 AND cause IN ('webhook', 'catch_up') AND cause_id IS NOT NULL)
ORDER BY created DESC, id DESC
LIMIT $2`

// EventsTouching returns the stored events about subscription, newest first (at most
// limit, up to 200).
func (s *Store) EventsTouching(ctx context.Context, subscription string, limit int) ([]EventRow, error) {
	rows, err := s.pool.Query(ctx, eventsTouching, subscription, max(1, min(limit, 200)), TouchWindow.Seconds())
	if err != nil {
		return nil, fmt.Errorf("events touching %s: %w", subscription, translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[EventRow])
	if err != nil {
		return nil, fmt.Errorf("events touching %s: %w", subscription, translate(err))
	}
	return out, nil
}

// The events of the last TouchWindow about a purchase: the Checkout Session's or the
// invoice's own (and a session's post-payment invoice's), the charges of its payment
// (by payment intent, or by invoice) and their disputes (by charge); and every event
// that caused an audited action on it. As for subscriptions, the BRIN index on created
// keeps the payload reads to the window.
const eventsTouchingPurchase = `
WITH owner AS (
    SELECT $1::text AS id
    UNION SELECT invoice_id FROM purchases WHERE id = $1 AND invoice_id IS NOT NULL
), recent AS NOT MATERIALIZED (
    SELECT id, payload FROM stripe_events WHERE created >= now() - make_interval(secs => $3)
), own AS (
    SELECT id, payload FROM recent
    WHERE payload #>> '{data,object,object}' IN ('checkout.session', 'invoice') AND payload #>> '{data,object,id}' IN (SELECT id FROM owner)
), intents AS (
    SELECT payload #>> '{data,object,payment_intent}' AS id FROM own WHERE payload #>> '{data,object,payment_intent}' IS NOT NULL
), charges AS (
    SELECT payload #>> '{data,object,id}' AS id FROM recent
    WHERE payload #>> '{data,object,object}' = 'charge' AND (payload #>> '{data,object,payment_intent}' IN (SELECT id FROM intents)
        OR payload #>> '{data,object,invoice}' IN (SELECT id FROM owner))
)
SELECT id, type, source, status, attempts, last_error, created, received_at, processed_at
FROM stripe_events
WHERE id IN (SELECT id FROM own)
   OR id IN (SELECT id FROM recent WHERE payload #>> '{data,object,object}' IN ('charge', 'dispute') AND (
        payload #>> '{data,object,payment_intent}' IN (SELECT id FROM intents)
        OR payload #>> '{data,object,invoice}' IN (SELECT id FROM owner)
        OR payload #>> '{data,object,charge}' IN (SELECT id FROM charges)))
   OR id IN (SELECT cause_id FROM audit_log WHERE purchase_id = $1 AND cause IN ('webhook', 'catch_up') AND cause_id IS NOT NULL)
ORDER BY created DESC, id DESC
LIMIT $2`

// EventsTouchingPurchase returns the stored events about a one-time purchase (a
// Checkout Session or an invoice), newest first (at most limit, up to 200).
func (s *Store) EventsTouchingPurchase(ctx context.Context, purchase string, limit int) ([]EventRow, error) {
	rows, err := s.pool.Query(ctx, eventsTouchingPurchase, purchase, max(1, min(limit, 200)), TouchWindow.Seconds())
	if err != nil {
		return nil, fmt.Errorf("events touching %s: %w", purchase, translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[EventRow])
	if err != nil {
		return nil, fmt.Errorf("events touching %s: %w", purchase, translate(err))
	}
	return out, nil
}

// FailedEventRows returns the events that failed for good, newest first, with the
// times the console shows (at most limit, up to 1,000).
func (s *Store) FailedEventRows(ctx context.Context, limit int) ([]EventRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, type, source, status, attempts, last_error, created, received_at, processed_at
		FROM stripe_events WHERE status = 'failed' ORDER BY received_at DESC, id LIMIT $1`, max(1, min(limit, 1000)))
	if err != nil {
		return nil, fmt.Errorf("failed events: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[EventRow])
	if err != nil {
		return nil, fmt.Errorf("failed events: %w", translate(err))
	}
	return out, nil
}
