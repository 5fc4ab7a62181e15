package jobs

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river/rivertype"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/postgres"
)

// This file is the one place outside River that knows River's tables: the row River's
// client writes for a job, the states a job passes through, and the notification that
// wakes River's producers. keysync writes River's rows itself only where River's client
// cannot do the work in keysync's own statement (ingest), or offers no call for it
// (reclaiming a dead process's jobs, counting jobs). ingest_contract_test.go pins the
// row this file writes to the one River writes.

// unfinishedStates are the states of a job that is queued, running or waiting for a
// retry: work taken on and not yet done. A sweep, catch-up or prune is unique while one
// is in these states, so that one at a time is queued or running.
var unfinishedStates = []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStatePending,
	rivertype.JobStateRunning, rivertype.JobStateRetryable, rivertype.JobStateScheduled}

// DB is what the statements on River's tables run on: the pool River shares (a
// *pgxpool.Pool), or one connection (a *pgx.Conn).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Tables runs keysync's own statements on River's tables. Its errors are translated as
// package postgres translates them (postgres.ErrUnavailable when the database is out of
// reach): it works on the same database.
type Tables struct {
	db DB
	// jobTypes are the event types that get a job when ingested.
	jobTypes []string
}

// NewTables returns Tables running its statements on db.
func NewTables(db DB) *Tables {
	return &Tables{db: db, jobTypes: events.HandledTypes()}
}

// The events and their River jobs in one statement: one round trip, committed as one.
// ins is one multi-row INSERT for all events of a batch (webhooks that arrive together
// commit together); DO NOTHING makes a redelivery or a concurrent duplicate a no-op, and
// RETURNING says which ids were new. jobs are the rows River's InsertMany writes for
// EventArgs (kind, queue, max_attempts; defaults for the rest: available now, priority
// 1), and notified is River's insert notification that wakes the producers, as River's
// client sends it (the contract test compares both with River's own).
const ingestEvents = `
WITH ins AS (
    INSERT INTO stripe_events (id, type, created, livemode, api_version, payload, source, status, last_error)
    SELECT u.id, u.type, to_timestamp(u.created), u.livemode, NULLIF(u.api_version, ''), u.payload::jsonb, u.source, u.status,
        NULLIF(u.last_error, '')
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[], $5::text[], $6::text[], $7::text[], $8::text[], $13::text[])
        AS u(id, type, created, livemode, api_version, payload, source, status, last_error)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, type, status
), jobs AS (
    INSERT INTO river_job (args, kind, queue, max_attempts)
    SELECT jsonb_build_object('event_id', ins.id, 'type', ins.type), $9, $10, $11
    FROM ins WHERE ins.type = ANY($12::text[]) AND ins.status = 'pending'
    RETURNING queue
), notified AS (
    SELECT pg_notify(current_schema() || '.river_insert', json_build_object('queue', q.queue)::text)
    FROM (SELECT DISTINCT queue FROM jobs) q
)
SELECT ins.id FROM ins WHERE (SELECT count(*) FROM notified) >= 0`

// IngestEvents stores evs, skipping those already stored, with an EventArgs job for
// each new one of a handled type not refused (events.Event.Refused), in one statement (atomic without a transaction). It
// reports for each event whether it was new. The ids in evs must be distinct. It
// returns postgres.ErrUnavailable (wrapped) when the database is out of reach, and
// Postgres's own error when it refused the data.
func (t *Tables) IngestEvents(ctx context.Context, evs []events.Event) ([]bool, error) {
	n := len(evs)
	ids, types, apiVersions, payloads, sources, statuses, refusals :=
		make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	created, livemode := make([]int64, n), make([]bool, n)
	for i, e := range evs {
		ids[i], types[i], apiVersions[i] = e.ID, e.Type, e.APIVersion
		payloads[i], sources[i], statuses[i] = string(e.Payload), string(e.Source), string(e.InitialStatus())
		created[i], livemode[i] = e.Created.Unix(), e.Livemode
		if e.Refused != nil {
			refusals[i] = e.Refused.Detail // why it is ignored, where an operator looks
		}
	}
	rows, err := t.db.Query(ctx, ingestEvents, ids, types, created, livemode, apiVersions, payloads, sources, statuses,
		EventArgs{}.Kind(), QueueEvents, MaxAttempts, t.jobTypes, refusals)
	if err != nil {
		return nil, fmt.Errorf("ingest events: %w", postgres.Translate(err))
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("ingest events: %w", postgres.Translate(err))
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

// JobsByState counts River's jobs in each state, every state River has included (for
// metrics: a state with no jobs is a zero, not a missing series).
func (t *Tables) JobsByState(ctx context.Context) (map[string]int, error) {
	rows, err := t.db.Query(ctx, `SELECT state::text, count(*) FROM river_job GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("jobs by state: %w", postgres.Translate(err))
	}
	out := map[string]int{}
	for _, s := range rivertype.JobStates() {
		out[string(s)] = 0
	}
	var st string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error { out[st] = n; return nil })
	if err != nil {
		return nil, fmt.Errorf("jobs by state: %w", postgres.Translate(err))
	}
	return out, nil
}

// ReclaimJobs makes the jobs that River shows running under clientID available again,
// and returns how many there were. A replica calls it once at start, before its River
// client runs anything: jobs still marked running under its own id were left by its
// previous process, which died, and would otherwise wait for River's rescuer.
func (t *Tables) ReclaimJobs(ctx context.Context, clientID string) (int64, error) {
	tag, err := t.db.Exec(ctx, `UPDATE river_job SET state = 'available', scheduled_at = now()
		WHERE state = 'running' AND attempted_by[array_upper(attempted_by, 1)] = $1`, clientID)
	if err != nil {
		return 0, fmt.Errorf("reclaim jobs: %w", postgres.Translate(err))
	}
	return tag.RowsAffected(), nil
}

// Unfinished counts the work keysync has taken on and not finished: stored events not
// yet worked, and jobs queued, running or waiting for a retry. The periodic sweeps,
// catch-ups and prunes are left out: they look for work, and one is always scheduled.
// Test beds wait for it to reach 0.
func (t *Tables) Unfinished(ctx context.Context) (int, error) {
	states := make([]string, len(unfinishedStates))
	for i, s := range unfinishedStates {
		states[i] = string(s)
	}
	var n int
	err := t.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM stripe_events WHERE status = 'pending')
		+ (SELECT count(*) FROM river_job WHERE state::text = ANY($1::text[]) AND kind <> ALL($2::text[]))`,
		states, []string{SweepArgs{}.Kind(), CatchUpArgs{}.Kind(), PruneArgs{}.Kind()}).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("unfinished work: %w", postgres.Translate(err))
	}
	return n, nil
}
