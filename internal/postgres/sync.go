package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// syncLockSpace namespaces the per-subscription advisory locks.
const syncLockSpace int32 = 0x6b73 // "ks"

// runLockSpace namespaces the locks that keep one sweep, and one catch-up, running at a
// time across replicas.
const runLockSpace int32 = 0x6b72 // "kr"

// advisoryLock is a session advisory lock held on its own pooled connection, so that
// it goes with the connection if the process dies.
type advisoryLock struct {
	conn  *pgxpool.Conn
	space int32
	id    string
}

// tryLock takes the lock (space, hashtext(id)) on a connection of its own, or reports
// that another session holds it.
func (s *Store) tryLock(ctx context.Context, space int32, id string) (*advisoryLock, bool, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, false, translate(err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, hashtext($2))", space, id).Scan(&ok); err != nil {
		conn.Release()
		return nil, false, translate(err)
	}
	if !ok {
		conn.Release()
		return nil, false, nil
	}
	return &advisoryLock{conn: conn, space: space, id: id}, true, nil
}

// Release frees the lock. A lock whose connection died is freed by Postgres itself.
func (l *advisoryLock) Release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.conn.Exec(ctx, "SELECT pg_advisory_unlock($1, hashtext($2))", l.space, l.id); err != nil {
		// Do not hand a connection that may still hold the lock back to the pool.
		_ = l.conn.Conn().Close(ctx)
	}
	l.conn.Release()
}

// RunLock is held while one sweep or catch-up runs; Release frees it.
type RunLock struct{ *advisoryLock }

// TryLockRun takes the lock of a run kind ("sweep", "catch_up") unless a run of that
// kind holds it on some replica; then ok is false.
func (s *Store) TryLockRun(ctx context.Context, kind string) (*RunLock, bool, error) {
	l, ok, err := s.tryLock(ctx, runLockSpace, kind)
	if err != nil || !ok {
		if err != nil {
			err = fmt.Errorf("lock %s: %w", kind, err)
		}
		return nil, false, err
	}
	return &RunLock{l}, true, nil
}

// SubscriptionLock is held while one Sync runs; the Sync does its database work on the
// lock's connection. Release frees it.
type SubscriptionLock struct{ *advisoryLock }

// LockSubscription waits until no other Sync of the subscription runs on any replica,
// then holds its lock until Release. It returns ErrUnavailable (wrapped) when the
// database cannot be reached, and the context's error when ctx ends first.
//
// It polls with pg_try_advisory_lock and holds no connection while it waits: waiters
// blocked inside pg_advisory_lock would hold every pooled connection and starve the
// lock's holder of the one it needs to finish.
func (s *Store) LockSubscription(ctx context.Context, id string) (*SubscriptionLock, error) {
	wait := 5 * time.Millisecond
	for {
		l, ok, err := s.tryLock(ctx, syncLockSpace, id)
		if err != nil {
			return nil, fmt.Errorf("lock subscription: %w", err)
		}
		if ok {
			return &SubscriptionLock{l}, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("lock subscription: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}

// SubscriptionRow is keysync's mapping row for a subscription.
type SubscriptionRow struct {
	ID                string     `db:"id"`
	CustomerID        string     `db:"customer_id"`
	Status            string     `db:"status"`
	ProductID         *int       `db:"product_id"`
	LicenseKey        *string    `db:"license_key"`
	KeyID             *int64     `db:"key_id"`
	PaidThrough       *time.Time `db:"paid_through"`
	DesiredExpires    *time.Time `db:"desired_expires"`
	BlockedByKeysync  bool       `db:"blocked_by_keysync"`
	CheckoutSessionID *string    `db:"checkout_session_id"`
	LastSyncedAt      *time.Time `db:"last_synced_at"`
	UnmappedAt        *time.Time `db:"unmapped_at"`
	LastError         *string    `db:"last_error"`
}

// ErrNotFound means no such row.
var ErrNotFound = errors.New("not found")

const getSubscription = `
SELECT id, customer_id, status, product_id, license_key, key_id, paid_through, desired_expires,
       blocked_by_keysync, checkout_session_id, last_synced_at, unmapped_at, last_error
FROM subscriptions WHERE id = $1`

// GetSubscription returns the mapping row of a subscription, or ErrNotFound.
func (s *Store) GetSubscription(ctx context.Context, id string) (SubscriptionRow, error) {
	return getSubscriptionRow(ctx, s.pool, id)
}

// GetSubscription reads the locked subscription's row on the lock's own connection: a
// Sync needs one connection, whatever the pool's size.
func (l *SubscriptionLock) GetSubscription(ctx context.Context) (SubscriptionRow, error) {
	return getSubscriptionRow(ctx, l.conn, l.id)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Begin(ctx context.Context) (pgx.Tx, error)
}

func getSubscriptionRow(ctx context.Context, q querier, id string) (SubscriptionRow, error) {
	rows, err := q.Query(ctx, getSubscription, id)
	if err != nil {
		return SubscriptionRow{}, fmt.Errorf("get subscription: %w", translate(err))
	}
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SubscriptionRow])
	if errors.Is(err, pgx.ErrNoRows) {
		return SubscriptionRow{}, ErrNotFound
	}
	if err != nil {
		return SubscriptionRow{}, fmt.Errorf("get subscription: %w", translate(err))
	}
	return row, nil
}

const upsertSubscription = `
INSERT INTO subscriptions (id, customer_id, status, product_id, license_key, key_id, paid_through, desired_expires,
    blocked_by_keysync, checkout_session_id, last_synced_at, unmapped_at, last_error, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now())
ON CONFLICT (id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, product_id = EXCLUDED.product_id,
    license_key = EXCLUDED.license_key, key_id = EXCLUDED.key_id,
    -- paid-through only moves forward
    paid_through = GREATEST(subscriptions.paid_through, EXCLUDED.paid_through),
    desired_expires = EXCLUDED.desired_expires, blocked_by_keysync = EXCLUDED.blocked_by_keysync,
    checkout_session_id = COALESCE(EXCLUDED.checkout_session_id, subscriptions.checkout_session_id),
    last_synced_at = EXCLUDED.last_synced_at, unmapped_at = EXCLUDED.unmapped_at,
    last_error = EXCLUDED.last_error, updated_at = now()`

// AuditRow is one audit_log entry.
type AuditRow struct {
	SubscriptionID string
	CustomerID     string
	ProductID      int
	LicenseKey     string
	Action         string
	Params         map[string]any
	Outcome        string // applied | dry_run | failed
	Cause          string // webhook | sweep | catch_up | operator
	CauseID        string
	Message        string
	Duration       time.Duration
}

const insertAudit = `
INSERT INTO audit_log (subscription_id, customer_id, product_id, license_key, action, params, outcome, cause, cause_id, message, duration_ms)
VALUES ($1, $2, NULLIF($3, 0), NULLIF($4, ''), $5, $6, $7, $8, NULLIF($9, ''), NULLIF($10, ''), $11)`

// SaveSync writes the subscription's row and its audit rows in one transaction, so the
// audit never tells a story the mapping does not, or the reverse.
func (s *Store) SaveSync(ctx context.Context, row SubscriptionRow, audits []AuditRow) error {
	return saveSync(ctx, s.pool, row, audits)
}

// SaveSync is Store.SaveSync on the lock's own connection.
func (l *SubscriptionLock) SaveSync(ctx context.Context, row SubscriptionRow, audits []AuditRow) error {
	return saveSync(ctx, l.conn, row, audits)
}

func saveSync(ctx context.Context, q querier, row SubscriptionRow, audits []AuditRow) error {
	return inTx(ctx, q, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, upsertSubscription, row.ID, row.CustomerID, row.Status, row.ProductID, row.LicenseKey, row.KeyID,
			row.PaidThrough, row.DesiredExpires, row.BlockedByKeysync, row.CheckoutSessionID, row.LastSyncedAt, row.UnmappedAt, row.LastError)
		if err != nil {
			return fmt.Errorf("save subscription: %w", translate(err))
		}
		b := &pgx.Batch{}
		for _, a := range audits {
			params := a.Params
			if params == nil {
				params = map[string]any{}
			}
			b.Queue(insertAudit, a.SubscriptionID, a.CustomerID, a.ProductID, a.LicenseKey, a.Action, params, a.Outcome,
				a.Cause, a.CauseID, a.Message, float64(a.Duration.Microseconds())/1000)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("save audit: %w", translate(err))
		}
		return nil
	})
}

// AuditEntry is an audit row as read back.
type AuditEntry struct {
	ID             int64          `db:"id"`
	At             time.Time      `db:"at"`
	SubscriptionID *string        `db:"subscription_id"`
	LicenseKey     *string        `db:"license_key"`
	Action         string         `db:"action"`
	Params         map[string]any `db:"params"`
	Outcome        string         `db:"outcome"`
	Cause          string         `db:"cause"`
	CauseID        *string        `db:"cause_id"`
	Message        *string        `db:"message"`
}

// AuditFor returns a subscription's audit rows, oldest first.
func (s *Store) AuditFor(ctx context.Context, subscription string) ([]AuditEntry, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, at, subscription_id, license_key, action, params, outcome, cause, cause_id, message
		FROM audit_log WHERE subscription_id = $1 ORDER BY id`, subscription)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[AuditEntry])
	if err != nil {
		return nil, fmt.Errorf("audit: %w", translate(err))
	}
	return out, nil
}

// EventPayload returns a stored event's type, source and payload.
func (s *Store) EventPayload(ctx context.Context, id string) (typ, source string, payload []byte, err error) {
	err = s.pool.QueryRow(ctx, `SELECT type, source, payload::text FROM stripe_events WHERE id = $1`, id).Scan(&typ, &source, &payload)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", nil, ErrNotFound
	}
	if err != nil {
		return "", "", nil, fmt.Errorf("event payload: %w", translate(err))
	}
	return typ, source, payload, nil
}

// MarkEventFailed records a permanent failure: the event stays visible with its error.
func (s *Store) MarkEventFailed(ctx context.Context, id, lastError string) error {
	_, err := s.pool.Exec(ctx, `UPDATE stripe_events SET status = 'failed', attempts = attempts + 1, last_error = $2
		WHERE id = $1 AND status <> 'processed'`, id, lastError)
	if err != nil {
		return fmt.Errorf("mark event failed: %w", translate(err))
	}
	return nil
}

// NoteEventAttempt records a failed attempt that will be retried.
func (s *Store) NoteEventAttempt(ctx context.Context, id, lastError string) error {
	_, err := s.pool.Exec(ctx, `UPDATE stripe_events SET attempts = attempts + 1, last_error = $2 WHERE id = $1`, id, lastError)
	if err != nil {
		return fmt.Errorf("note event attempt: %w", translate(err))
	}
	return nil
}
