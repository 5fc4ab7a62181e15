package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/events"
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
}

// EventsSince returns the stored events created at or after since, of the given types
// (all when empty), oldest first.
func (s *Store) EventsSince(ctx context.Context, since time.Time, types []string) ([]ReplayableEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, type FROM stripe_events WHERE created >= $1 AND (cardinality($2::text[]) = 0 OR type = ANY($2))
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

// JobsByState counts River jobs by state (for metrics).
func (s *Store) JobsByState(ctx context.Context) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT state::text, count(*) FROM river_job GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("jobs by state: %w", translate(err))
	}
	out := map[string]int{}
	var st string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error { out[st] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("jobs by state: %w", translate(err))
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

// ReclaimJobs makes the jobs that River shows running under clientID available again,
// and returns how many there were. A replica calls it once at start, before its River
// client runs anything: jobs still marked running under its own id were left by its
// previous process, which died, and would otherwise wait for River's rescuer.
func (s *Store) ReclaimJobs(ctx context.Context, clientID string) (int64, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE river_job SET state = 'available', scheduled_at = now()
		WHERE state = 'running' AND attempted_by[array_upper(attempted_by, 1)] = $1`, clientID)
	if err != nil {
		return 0, fmt.Errorf("reclaim jobs: %w", translate(err))
	}
	return tag.RowsAffected(), nil
}

// EventJob is the River job stored with each new event of a handled type.
type EventJob struct {
	Kind, Queue string
	MaxAttempts int
	// Types are the event types that get a job.
	Types []string
}

// The events and their River jobs in one statement: one round trip, committed as one.
// ins is one multi-row INSERT for all events of a batch (webhooks that arrive together
// commit together); DO NOTHING makes a redelivery or a concurrent duplicate a no-op, and
// RETURNING says which ids were new. jobs are the rows River's InsertMany writes for the
// same args (kind, queue, max_attempts; defaults for the rest: available now, priority
// 1), and notified is River's insert notification that wakes the producers, as River's
// client sends it (a contract test compares both with River's own).
const ingestEvents = `
WITH ins AS (
    INSERT INTO stripe_events (id, type, created, livemode, api_version, payload, source, status)
    SELECT u.id, u.type, to_timestamp(u.created), u.livemode, NULLIF(u.api_version, ''), u.payload::jsonb, u.source, u.status
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[], $5::text[], $6::text[], $7::text[], $8::text[])
        AS u(id, type, created, livemode, api_version, payload, source, status)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, type
), jobs AS (
    INSERT INTO river_job (args, kind, queue, max_attempts)
    SELECT jsonb_build_object('event_id', ins.id, 'type', ins.type), $9, $10, $11
    FROM ins WHERE ins.type = ANY($12::text[])
    RETURNING queue
), notified AS (
    SELECT pg_notify(current_schema() || '.river_insert', json_build_object('queue', q.queue)::text)
    FROM (SELECT DISTINCT queue FROM jobs) q
)
SELECT ins.id FROM ins WHERE (SELECT count(*) FROM notified) >= 0`

// IngestEvents stores evs, skipping those already stored, with a River job for each new
// one whose type job lists, in one statement (atomic without a transaction). It reports
// for each event whether it was new. The ids in evs must be distinct.
func (s *Store) IngestEvents(ctx context.Context, evs []events.Event, job EventJob) ([]bool, error) {
	n := len(evs)
	ids, types, apiVersions, payloads, sources, statuses :=
		make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	created, livemode := make([]int64, n), make([]bool, n)
	for i, e := range evs {
		ids[i], types[i], apiVersions[i] = e.ID, e.Type, e.APIVersion
		payloads[i], sources[i], statuses[i] = string(e.Payload), string(e.Source), string(e.InitialStatus())
		created[i], livemode[i] = e.Created.Unix(), e.Livemode
	}
	rows, err := s.pool.Query(ctx, ingestEvents, ids, types, created, livemode, apiVersions, payloads, sources, statuses,
		job.Kind, job.Queue, job.MaxAttempts, job.Types)
	if err != nil {
		return nil, fmt.Errorf("ingest events: %w", translate(err))
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("ingest events: %w", translate(err))
	}
	isNew := make(map[string]bool, len(inserted))
	for _, id := range inserted {
		isNew[id] = true
	}
	out := make([]bool, n)
	for i, e := range evs {
		out[i] = isNew[e.ID]
	}
	return out, nil
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
