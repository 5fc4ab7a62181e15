package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

// Two replicas, each configured with the periodic sweep: River's leader election makes
// one of them run it, so sweeps come one per interval, not two.
func TestOneSweepPerIntervalAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	const interval = time.Second
	var store *postgres.Store
	for i := range 2 {
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		s := postgres.NewStore(pool)
		if i == 0 {
			store = s
		}
		workers := river.NewWorkers()
		river.AddWorker(workers, &jobs.SweepWorker{Run: func(ctx context.Context) error {
			id, err := s.StartRun(ctx, "sweep")
			if err != nil {
				return err
			}
			return s.FinishRun(ctx, id, postgres.RunSummary{})
		}})
		client, err := jobs.NewClient(pool, jobs.Config{Workers: workers, Periodic: []*river.PeriodicJob{
			river.NewPeriodicJob(river.PeriodicInterval(interval), func() (river.JobArgs, *river.InsertOpts) { return jobs.SweepArgs{}, nil },
				&river.PeriodicJobOpts{RunOnStart: true}),
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Stop(context.Background()) })
	}
	var runs []postgres.RunRow
	pgtest.WaitFor(t, 30*time.Second, "four sweeps", func() bool {
		runs, _ = store.Runs(ctx, "sweep")
		return len(runs) >= 4
	})
	for i := 1; i < len(runs); i++ {
		if gap := runs[i].StartedAt.Sub(runs[i-1].StartedAt); gap < interval/2 {
			t.Fatalf("sweeps %d and %d started %s apart: two replicas swept in one interval", runs[i-1].ID, runs[i].ID, gap)
		}
	}
}
