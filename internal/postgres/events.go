package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// StoredEvent is a row of stripe_events without its payload.
type StoredEvent struct {
	ID          string  `db:"id" json:"id"`
	Type        string  `db:"type" json:"type"`
	Source      string  `db:"source" json:"source"`
	Status      string  `db:"status" json:"status"`
	Attempts    int     `db:"attempts" json:"attempts"`
	LastError   *string `db:"last_error" json:"last_error"`
	APIVersion  *string `db:"api_version" json:"api_version"`
	PayloadSize int     `db:"payload_size" json:"payload_size"`
}

const getEvent = `
SELECT id, type, source, status, attempts, last_error, api_version, octet_length(payload::text) AS payload_size
FROM stripe_events WHERE id = $1`

// GetEvent returns the stored event id, or ErrNotFound (wrapped) when there is none.
func (s *Store) GetEvent(ctx context.Context, id string) (StoredEvent, error) {
	rows, err := s.pool.Query(ctx, getEvent, id)
	if err != nil {
		return StoredEvent{}, fmt.Errorf("get event: %w", translate(err))
	}
	ev, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[StoredEvent])
	if err != nil {
		return StoredEvent{}, fmt.Errorf("get event %s: %w", id, translate(err))
	}
	return ev, nil
}

const markEventProcessed = `
UPDATE stripe_events
SET status = 'processed', processed_at = now(), attempts = attempts + 1, last_error = NULL
WHERE id = $1 AND status IN ('pending', 'failed')`

// MarkEventProcessed records that the event's work is done. Marking an event that is
// already processed (a retried job) changes nothing.
func (s *Store) MarkEventProcessed(ctx context.Context, id string) error {
	if _, err := s.pool.Exec(ctx, markEventProcessed, id); err != nil {
		return fmt.Errorf("mark event processed: %w", translate(err))
	}
	return nil
}

// ReplayableEvent names a stored event.
type ReplayableEvent struct {
	ID   string `db:"id"`
	Type string `db:"type"`
	// Status says, among others, whether the event was stored ignored.
	Status string `db:"status"`
}

// EventsSince returns the stored events created at or after since, of the given types
// (all when empty or nil: pgx sends a nil slice as NULL), oldest first.
func (s *Store) EventsSince(ctx context.Context, since time.Time, types []string) ([]ReplayableEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, type, status FROM stripe_events WHERE created >= $1 AND (coalesce(cardinality($2::text[]), 0) = 0 OR type = ANY($2))
		ORDER BY created, id`, since, types)
	if err != nil {
		return nil, fmt.Errorf("events since: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[ReplayableEvent])
	if err != nil {
		return nil, fmt.Errorf("events since: %w", translate(err))
	}
	return out, nil
}

// ResetEventsTx marks stored events pending again, for a replay, in tx.
func (s *Store) ResetEventsTx(ctx context.Context, tx pgx.Tx, ids []string) error {
	if _, err := tx.Exec(ctx, `UPDATE stripe_events SET status = 'pending', last_error = NULL, processed_at = NULL WHERE id = ANY($1)`, ids); err != nil {
		return fmt.Errorf("reset events: %w", translate(err))
	}
	return nil
}

// FailedEvents returns the events that failed for good, newest first.
func (s *Store) FailedEvents(ctx context.Context, limit int) ([]StoredEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, type, source, status, attempts, last_error, api_version, octet_length(payload::text) AS payload_size
		FROM stripe_events WHERE status = 'failed' ORDER BY received_at DESC LIMIT $1`, max(1, min(limit, 1000)))
	if err != nil {
		return nil, fmt.Errorf("failed events: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[StoredEvent])
	if err != nil {
		return nil, fmt.Errorf("failed events: %w", translate(err))
	}
	return out, nil
}

// OldestPendingEvent returns how long the oldest pending event has waited (0: none).
func (s *Store) OldestPendingEvent(ctx context.Context) (time.Duration, error) {
	var secs float64
	err := s.pool.QueryRow(ctx, `SELECT coalesce(extract(epoch FROM now() - min(received_at)), 0) FROM stripe_events WHERE status = 'pending'`).Scan(&secs)
	if err != nil {
		return 0, fmt.Errorf("oldest pending event: %w", translate(err))
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// PruneEvents deletes processed and ignored events received before cutoff, in batches
// so that no statement holds locks for long, and returns how many it deleted. Pending
// and failed events are kept: they are work, or evidence of a problem. The audit log is
// never pruned.
func (s *Store) PruneEvents(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM stripe_events WHERE id IN (
			SELECT id FROM stripe_events WHERE status IN ('processed', 'ignored') AND received_at < $1 LIMIT 5000)`, cutoff)
		if err != nil {
			return total, fmt.Errorf("prune events: %w", translate(err))
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 5000 || ctx.Err() != nil {
			return total, nil
		}
	}
}

// EventPayload returns a stored event's type, source and payload, or ErrNotFound
// (wrapped) when there is no such event.
func (s *Store) EventPayload(ctx context.Context, id string) (typ, source string, payload []byte, err error) {
	err = s.pool.QueryRow(ctx, `SELECT type, source, payload::text FROM stripe_events WHERE id = $1`, id).Scan(&typ, &source, &payload)
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
