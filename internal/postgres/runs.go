package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// RunSummary is what a sweep or catch-up run counted.
type RunSummary struct {
	Scanned, Drifted, Fixed, Failed, Orphans int
	// Cursor is the catch-up's position (unix seconds of Stripe's event time).
	Cursor string
	Error  string
}

// StartRun records the start of a sweep or catch-up and returns its id.
func (s *Store) StartRun(ctx context.Context, kind string) (int64, error) {
	var id int64
	if err := s.pool.QueryRow(ctx, `INSERT INTO sync_runs (kind) VALUES ($1) RETURNING id`, kind).Scan(&id); err != nil {
		return 0, fmt.Errorf("start run: %w", translate(err))
	}
	return id, nil
}

// FinishRun records a run's end and counts.
func (s *Store) FinishRun(ctx context.Context, id int64, sum RunSummary) error {
	status := "succeeded"
	if sum.Error != "" {
		status = "failed"
	}
	_, err := s.pool.Exec(ctx, `UPDATE sync_runs SET finished_at = now(), status = $2, scanned = $3, drifted = $4,
		fixed = fixed + $5, failed = failed + $6, orphans = $7, cursor = NULLIF($8, ''), error = NULLIF($9, '') WHERE id = $1`,
		id, status, sum.Scanned, sum.Drifted, sum.Fixed, sum.Failed, sum.Orphans, sum.Cursor, sum.Error)
	if err != nil {
		return fmt.Errorf("finish run: %w", translate(err))
	}
	return nil
}

// CountRunResult adds one fixed (ok) or failed Sync to a run.
func (s *Store) CountRunResult(ctx context.Context, id int64, ok bool) error {
	col := "failed"
	if ok {
		col = "fixed"
	}
	if _, err := s.pool.Exec(ctx, `UPDATE sync_runs SET `+col+` = `+col+` + 1 WHERE id = $1`, id); err != nil {
		return fmt.Errorf("count run result: %w", translate(err))
	}
	return nil
}

// CatchUpCursor returns the position of the last successful catch-up, and false when
// there was none.
func (s *Store) CatchUpCursor(ctx context.Context) (time.Time, bool, error) {
	return s.runCursor(ctx, "catch_up")
}

// SweepCursor returns how far the last successful sweep looked for one-time purchases
// (Stripe's creation time), and false when no sweep has.
func (s *Store) SweepCursor(ctx context.Context) (time.Time, bool, error) {
	return s.runCursor(ctx, "sweep")
}

// runCursor returns the cursor of the last successful run of kind that recorded one.
func (s *Store) runCursor(ctx context.Context, kind string) (time.Time, bool, error) {
	var cursor string
	err := s.pool.QueryRow(ctx, `SELECT cursor FROM sync_runs WHERE kind = $1 AND status = 'succeeded' AND cursor IS NOT NULL
		ORDER BY id DESC LIMIT 1`, kind).Scan(&cursor)
	if err = translate(err); errors.Is(err, ErrNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("%s cursor: %w", kind, err)
	}
	n, err := strconv.ParseInt(cursor, 10, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("%s cursor %q: %w", kind, cursor, err)
	}
	return time.Unix(n, 0).UTC(), true, nil
}

// RunRow is a sync_runs row.
type RunRow struct {
	ID         int64      `db:"id"`
	Kind       string     `db:"kind"`
	StartedAt  time.Time  `db:"started_at"`
	FinishedAt *time.Time `db:"finished_at"`
	Status     string     `db:"status"`
	Scanned    int        `db:"scanned"`
	Drifted    int        `db:"drifted"`
	Fixed      int        `db:"fixed"`
	Failed     int        `db:"failed"`
	Orphans    int        `db:"orphans"`
	Cursor     *string    `db:"cursor"`
	Error      *string    `db:"error"`
}

// Runs returns the runs of a kind, oldest first.
func (s *Store) Runs(ctx context.Context, kind string) ([]RunRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, kind, started_at, finished_at, status, scanned, drifted, fixed, failed, orphans, cursor, error
		FROM sync_runs WHERE kind = $1 ORDER BY id`, kind)
	if err != nil {
		return nil, fmt.Errorf("runs: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[RunRow])
	if err != nil {
		return nil, fmt.Errorf("runs: %w", translate(err))
	}
	return out, nil
}

// LastSweep returns how long ago, by the database's clock, the last completed sweep
// finished, and whether one has. A completed sweep is one that read every subscription
// and key (status succeeded); a failed or interrupted one does not count. Without a
// completed sweep, age is the time since keysync's first run of any kind (its first
// sync_runs row; 0 before that): how long the sweep has been missing. The database's
// clock is the one that stamped finished_at, so a replica's skewed clock cannot make a
// sweep look fresh or stale.
func (s *Store) LastSweep(ctx context.Context) (age time.Duration, completed bool, err error) {
	var last, first *float64
	err = s.pool.QueryRow(ctx, `SELECT
		(SELECT extract(epoch FROM now() - finished_at)::float8 FROM sync_runs
			WHERE kind = 'sweep' AND status = 'succeeded' ORDER BY started_at DESC LIMIT 1),
		(SELECT extract(epoch FROM now() - started_at)::float8 FROM sync_runs ORDER BY id LIMIT 1)`).Scan(&last, &first)
	if err != nil {
		return 0, false, fmt.Errorf("last sweep: %w", translate(err))
	}
	switch {
	case last != nil:
		return secondsDuration(*last), true, nil
	case first != nil:
		return secondsDuration(*first), false, nil
	default:
		return 0, false, nil
	}
}

// secondsDuration converts an age in seconds to a Duration, never below 0: a row
// stamped by a transaction that started after this one's now() is taken as fresh.
func secondsDuration(s float64) time.Duration {
	return max(time.Duration(s*float64(time.Second)), 0)
}
