package jobs_test

import (
	"context"
	"slices"
	"testing"

	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
)

// The console's jobs table: counts by kind and state, and the jobs whose last attempt
// failed, newest first, with that attempt's error.
func TestJobCountsAndFailures(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue, state, attempt, attempted_at, finalized_at, errors) VALUES
		('{"event_id":"evt_1"}', 'stripe_event', 20, 'events', 'completed', 1, now(), now(), NULL),
		('{"event_id":"evt_2"}', 'stripe_event', 20, 'events', 'completed', 1, now(), now(), NULL),
		('{"event_id":"evt_3"}', 'stripe_event', 20, 'events', 'retryable', 2, now(), NULL,
			ARRAY['{"at":"2026-01-01T00:00:00Z","attempt":1,"error":"first"}'::jsonb, '{"at":"2026-01-01T00:01:00Z","attempt":2,"error":"second"}'::jsonb]),
		('{}', 'sweep', 1, 'default', 'discarded', 1, now(), now(), ARRAY['{"attempt":1,"error":"sweep failed"}'::jsonb])`)
	if err != nil {
		t.Fatal(err)
	}
	tables := jobs.NewTables(pool)
	counts, err := tables.JobCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []jobs.KindCount{{Kind: "stripe_event", State: "completed", Count: 2}, {Kind: "stripe_event", State: "retryable", Count: 1},
		{Kind: "sweep", State: "discarded", Count: 1}}
	if !slices.Equal(counts, want) {
		t.Fatalf("got %+v, want %+v", counts, want)
	}
	failures, err := tables.RecentJobFailures(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(failures) != 2 || failures[0].Kind != "sweep" || failures[0].Error != "sweep failed" ||
		failures[1].Error != "second" || failures[1].Attempt != 2 || failures[1].Args != `{"event_id": "evt_3"}` {
		t.Fatalf("got %+v, want the discarded sweep, then the retryable event with its last error", failures)
	}
}
