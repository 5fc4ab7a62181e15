package jobs_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

// Two replicas with keysync's schedule: River's leader election makes one of them ask
// whether a sweep is due, and the answer comes from sync_runs, so sweeps come one per
// interval, not two, and keep coming after the one at start.
func TestOneSweepPerIntervalAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	const interval = time.Second
	s := jobs.Schedule{Sweep: interval, CatchUp: time.Hour, Prune: time.Hour}
	startReplica(t, url, s)
	startReplica(t, url, s)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store := postgres.NewStore(pool)
	var runs []postgres.RunRow
	pgtest.WaitFor(t, 30*time.Second, "four sweeps", func() bool {
		runs, _ = store.Runs(ctx, "sweep")
		return len(runs) >= 4
	})
	for i := 1; i < len(runs); i++ {
		if gap := runs[i].StartedAt.Sub(*runs[i-1].FinishedAt); gap < interval {
			t.Fatalf("sweep %d started %s after sweep %d finished, want at least the interval %s", runs[i].ID, gap, runs[i-1].ID, interval)
		}
	}
}

// The leader asks whether a sweep is due four times an interval, so that a sweep comes
// at most a quarter interval late, but not more often than once a minute.
func TestSweepCheck(t *testing.T) {
	t.Parallel()
	for interval, want := range map[time.Duration]time.Duration{
		time.Second:     time.Second,
		time.Minute:     time.Minute,
		2 * time.Minute: time.Minute,
		time.Hour:       15 * time.Minute,
		24 * time.Hour:  6 * time.Hour,
	} {
		if got := jobs.SweepCheck(interval); got != want {
			t.Errorf("SweepCheck(%s): got %s, want %s", interval, got, want)
		}
	}
}

// startReplica starts one replica's River client on url with keysync's periodic jobs
// and a sweep that records itself in sync_runs under the sweep's run lock, as
// reconcile.Sweeper.RunOnce does.
func startReplica(t *testing.T, url string, s jobs.Schedule) *river.Client[pgx.Tx] {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store := postgres.NewStore(pool)
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.SweepWorker{Runs: store, Run: func(ctx context.Context) error {
		lock, ok, err := store.TryLockRun(ctx, "sweep")
		if err != nil || !ok {
			return err
		}
		defer lock.Release()
		id, err := store.StartRun(ctx, "sweep")
		if err != nil {
			return err
		}
		return store.FinishRun(ctx, id, postgres.RunSummary{})
	}})
	river.AddWorker(workers, &jobs.CatchUpWorker{Run: func(context.Context) error { return nil }})
	river.AddWorker(workers, &jobs.PruneWorker{Run: func(context.Context) error { return nil }})
	client, err := jobs.NewClient(pool, jobs.Config{Workers: workers, Periodic: jobs.PeriodicJobs(s)})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Stop(context.Background()) })
	return client
}

// seedRun records a finished run of kind that started age ago and took a minute.
func seedRun(t *testing.T, pool *pgxpool.Pool, kind, status string, age time.Duration) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `INSERT INTO sync_runs (kind, started_at, finished_at, status)
		VALUES ($1, now() - make_interval(secs => $2), now() - make_interval(secs => $2) + interval '1 minute', $3)`,
		kind, age.Seconds(), status)
	if err != nil {
		t.Fatal(err)
	}
}

// waitSweepJobs waits until River has worked at least n sweep jobs and none is left
// unfinished.
func waitSweepJobs(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	pgtest.WaitFor(t, 30*time.Second, "the sweep jobs to finish", func() bool {
		var done, open int
		_ = pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE finalized_at IS NOT NULL), count(*) FILTER (WHERE finalized_at IS NULL)
			FROM river_job WHERE kind = 'sweep'`).Scan(&done, &open)
		return done >= n && open == 0
	})
}

func countRuns(t *testing.T, pool *pgxpool.Pool, kind string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM sync_runs WHERE kind = $1`, kind).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Two replicas start together on a database with the sweep history below: the elected
// leader sweeps at once when the last completed sweep is older than the interval (or
// there is none), and not otherwise; never twice, and never after waiting for the
// interval (an hour here, far longer than the test).
func TestSweepAtStart(t *testing.T) {
	t.Parallel()
	const interval = time.Hour
	for name, tc := range map[string]struct {
		history   func(t *testing.T, pool *pgxpool.Pool)
		wantSweep bool
	}{
		"fresh install": {history: func(*testing.T, *pgxpool.Pool) {}, wantSweep: true},
		"catch-ups but never a sweep": {history: func(t *testing.T, pool *pgxpool.Pool) {
			seedRun(t, pool, "catch_up", "succeeded", 5*time.Minute)
		}, wantSweep: true},
		"last completed sweep older than the interval": {history: func(t *testing.T, pool *pgxpool.Pool) {
			seedRun(t, pool, "sweep", "succeeded", 2*interval)
		}, wantSweep: true},
		"recent sweep failed, the last completed one is old": {history: func(t *testing.T, pool *pgxpool.Pool) {
			seedRun(t, pool, "sweep", "succeeded", 3*interval)
			seedRun(t, pool, "sweep", "failed", 10*time.Minute)
		}, wantSweep: true},
		"recent completed sweep": {history: func(t *testing.T, pool *pgxpool.Pool) {
			seedRun(t, pool, "sweep", "succeeded", 10*time.Minute)
		}, wantSweep: false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := pgtest.URL(t)
			pool, err := pgxpool.New(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			tc.history(t, pool)
			before := countRuns(t, pool, "sweep")

			s := jobs.Schedule{Sweep: interval, CatchUp: interval, Prune: interval}
			replicas := []*river.Client[pgx.Tx]{startReplica(t, url, s), startReplica(t, url, s)}
			waitSweepJobs(t, pool, 1)
			want := before
			if tc.wantSweep {
				want++
			}
			if got := countRuns(t, pool, "sweep"); got != want {
				t.Fatalf("got %d sweeps after the start, want %d", got, want)
			}

			// A new leader asks again at its start (here both replicas at once, as after
			// a lost leadership): the sweep just recorded makes both answers nothing.
			var wg sync.WaitGroup
			for _, r := range replicas {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := r.Insert(context.Background(), jobs.SweepArgs{IfOlderThan: interval}, nil); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			waitSweepJobs(t, pool, 2)
			if got := countRuns(t, pool, "sweep"); got != want {
				t.Fatalf("got %d sweeps after a second start, want %d", got, want)
			}
		})
	}
}
