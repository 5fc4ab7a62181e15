package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/postgres"
)

// KindCount is how many jobs of a kind are in a state.
type KindCount struct {
	Kind  string `db:"kind"`
	State string `db:"state"`
	Count int    `db:"count"`
}

// JobCounts counts River's jobs by kind and state, for the operator console. River keeps
// finished jobs for a day, so the table it reads stays small.
func (t *Tables) JobCounts(ctx context.Context) ([]KindCount, error) {
	rows, err := t.db.Query(ctx, `SELECT kind, state::text AS state, count(*)::int AS count FROM river_job GROUP BY kind, state ORDER BY kind, state`)
	if err != nil {
		return nil, fmt.Errorf("job counts: %w", postgres.Translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[KindCount])
	if err != nil {
		return nil, fmt.Errorf("job counts: %w", postgres.Translate(err))
	}
	return out, nil
}

// JobFailure is a job whose last attempt failed: waiting for a retry, or given up.
type JobFailure struct {
	ID          int64      `db:"id"`
	Kind        string     `db:"kind"`
	State       string     `db:"state"`
	Attempt     int        `db:"attempt"`
	MaxAttempts int        `db:"max_attempts"`
	AttemptedAt *time.Time `db:"attempted_at"`
	Error       string     `db:"error"`
	// Args are the job's arguments as River stores them (an event id, say: never a secret).
	Args string `db:"args"`
}

// RecentJobFailures returns the latest jobs that are retryable or discarded, newest
// first, with the error of their last attempt (River keeps one per attempt).
func (t *Tables) RecentJobFailures(ctx context.Context, limit int) ([]JobFailure, error) {
	rows, err := t.db.Query(ctx, `SELECT id, kind, state::text AS state, attempt, max_attempts, attempted_at,
		coalesce(errors[array_upper(errors, 1)]->>'error', '') AS error, args::text AS args
		FROM river_job WHERE state IN ('retryable', 'discarded') ORDER BY id DESC LIMIT $1`, max(1, min(limit, 200)))
	if err != nil {
		return nil, fmt.Errorf("job failures: %w", postgres.Translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[JobFailure])
	if err != nil {
		return nil, fmt.Errorf("job failures: %w", postgres.Translate(err))
	}
	return out, nil
}
