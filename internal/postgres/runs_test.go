package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

// LastSweep counts only completed sweeps, by the database's clock; without one it
// reports how long keysync has run without one.
func TestLastSweep(t *testing.T) {
	t.Parallel()
	type run struct {
		kind, status    string
		started, finish time.Duration // ago; finish 0: still running
	}
	for name, tc := range map[string]struct {
		runs          []run
		wantAge       time.Duration
		wantCompleted bool
	}{
		"nothing ever ran": {},
		"catch-ups only, the first 3h ago": {runs: []run{{"catch_up", "succeeded", 3 * time.Hour, 3 * time.Hour}, {"catch_up", "succeeded", time.Minute, time.Minute}},
			wantAge: 3 * time.Hour},
		"a sweep still running": {runs: []run{{"sweep", "running", 2 * time.Hour, 0}}, wantAge: 2 * time.Hour},
		"a failed sweep":        {runs: []run{{"sweep", "failed", 2 * time.Hour, 90 * time.Minute}}, wantAge: 2 * time.Hour},
		"the last completed sweep finished 2h ago, later ones failed or still run": {runs: []run{
			{"catch_up", "succeeded", 9 * time.Hour, 9 * time.Hour},
			{"sweep", "succeeded", 3 * time.Hour, 2 * time.Hour},
			{"sweep", "failed", time.Hour, 50 * time.Minute},
			{"sweep", "running", 10 * time.Minute, 0},
		}, wantAge: 2 * time.Hour, wantCompleted: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := pgtest.Pool(t)
			for _, r := range tc.runs {
				_, err := pool.Exec(context.Background(), `INSERT INTO sync_runs (kind, status, started_at, finished_at)
					VALUES ($1, $2, now() - make_interval(secs => $3), CASE WHEN $4 > 0 THEN now() - make_interval(secs => $4) END)`,
					r.kind, r.status, r.started.Seconds(), r.finish.Seconds())
				if err != nil {
					t.Fatal(err)
				}
			}
			age, completed, err := postgres.NewStore(pool).LastSweep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if completed != tc.wantCompleted || age < tc.wantAge || age > tc.wantAge+time.Minute {
				t.Fatalf("got %s, %v, want %s, %v", age, completed, tc.wantAge, tc.wantCompleted)
			}
		})
	}
}
