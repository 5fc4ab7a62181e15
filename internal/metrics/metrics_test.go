package metrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/metrics"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

// The sweep gauges, read from sync_runs at scrape time: the last completed sweep's age,
// and overdue once it is older than the overdue age.
func TestSweepGauges(t *testing.T) {
	t.Parallel()
	const overdueAfter = 2 * time.Hour
	for name, tc := range map[string]struct {
		finishedAgo time.Duration
		wantOverdue float64
	}{
		"recent":  {finishedAgo: 30 * time.Minute, wantOverdue: 0},
		"overdue": {finishedAgo: 3 * time.Hour, wantOverdue: 1},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := pgtest.Pool(t)
			if _, err := pool.Exec(context.Background(), `INSERT INTO sync_runs (kind, status, started_at, finished_at)
				VALUES ('sweep', 'succeeded', now() - make_interval(secs => $1 + 60), now() - make_interval(secs => $1))`, tc.finishedAgo.Seconds()); err != nil {
				t.Fatal(err)
			}
			m := metrics.New()
			m.WatchSweeps(postgres.NewStore(pool), overdueAfter)
			fams, err := m.Registry.Gather()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			for _, f := range fams {
				for _, mt := range f.GetMetric() {
					got[f.GetName()] = mt.GetGauge().GetValue()
				}
			}
			if age := got["keysync_last_sweep_age_seconds"]; age < tc.finishedAgo.Seconds() || age > (tc.finishedAgo+time.Minute).Seconds() {
				t.Fatalf("keysync_last_sweep_age_seconds: got %v, want %v", age, tc.finishedAgo.Seconds())
			}
			if got["keysync_sweep_overdue"] != tc.wantOverdue {
				t.Fatalf("keysync_sweep_overdue: got %v, want %v", got["keysync_sweep_overdue"], tc.wantOverdue)
			}
		})
	}
}
