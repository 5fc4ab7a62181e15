package jobs_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

// A redelivered event is not stored twice; an event of a type keysync does not act on is
// stored as ignored.
func TestIngestEventsDedupes(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	store := postgres.NewStore(pool)
	tables := jobs.NewTables(pool).WithoutJobs()
	ctx := context.Background()
	ev := func(id, typ string) events.Event {
		return events.Event{ID: id, Type: typ, Created: time.Unix(1700000000, 0), APIVersion: events.StripeAPIVersion,
			Payload: []byte(`{"id":"` + id + `"}`), Source: events.SourceWebhook}
	}
	insert := func(evs ...events.Event) []bool {
		got, err := tables.IngestEvents(ctx, evs)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := insert(ev("evt_1", "invoice.paid"), ev("evt_2", "customer.created")); !got[0] || !got[1] {
		t.Fatalf("got new=%v, want both new", got)
	}
	if got := insert(ev("evt_1", "invoice.paid"), ev("evt_3", "invoice.paid")); got[0] || !got[1] {
		t.Fatalf("got new=%v, want [false true]", got)
	}
	for id, want := range map[string]events.Status{"evt_1": events.StatusPending, "evt_2": events.StatusIgnored} {
		got, err := store.GetEvent(ctx, id)
		if err != nil || got.Status != string(want) {
			t.Fatalf("%s: got %+v, %v, want status %s", id, got, err, want)
		}
	}
}

// Jobs left running by a dead process are made available again by its successor with
// the same client id; another client's running jobs are left alone.
func TestReclaimJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	tables := jobs.NewTables(pool)
	for _, by := range []string{"keysync@host:8080", "keysync@host:8081"} {
		_, err := pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue, state, attempt, attempted_at, attempted_by)
			VALUES ('{}', 'stripe_event', 20, 'events', 'running', 1, now(), ARRAY['keysync@old:1', $1])`, by)
		if err != nil {
			t.Fatal(err)
		}
	}
	n, err := tables.ReclaimJobs(ctx, "keysync@host:8080")
	if err != nil || n != 1 {
		t.Fatalf("reclaimed %d, %v; want 1", n, err)
	}
	rows, _ := pool.Query(ctx, `SELECT attempted_by[array_upper(attempted_by, 1)], state FROM river_job ORDER BY id`)
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var by, state string
		err := r.Scan(&by, &state)
		return by + "=" + state, err
	})
	if err != nil || strings.Join(got, ",") != "keysync@host:8080=available,keysync@host:8081=running" {
		t.Fatalf("got %v (%v)", got, err)
	}
}

// Unfinished counts pending events and the jobs not yet done, but not the periodic jobs
// that look for work; JobsByState reports every state River has, empty ones as 0.
func TestUnfinishedAndJobsByState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	tables := jobs.NewTables(pool)
	unfinished := func() int {
		t.Helper()
		n, err := tables.Unfinished(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := unfinished(); n != 0 {
		t.Fatalf("empty database: got %d unfinished, want 0", n)
	}
	ev := events.Event{ID: "evt_u", Type: "invoice.paid", Created: time.Unix(1700000000, 0), APIVersion: events.StripeAPIVersion,
		Payload: []byte(`{"id":"evt_u"}`), Source: events.SourceWebhook}
	if _, err := tables.IngestEvents(ctx, []events.Event{ev}); err != nil {
		t.Fatal(err)
	}
	_, err := pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue, state, finalized_at) VALUES
		('{}', 'sweep', 3, 'default', 'scheduled', NULL), ('{}', 'sync_subscription', 20, 'events', 'completed', now())`)
	if err != nil {
		t.Fatal(err)
	}
	if n := unfinished(); n != 2 {
		t.Fatalf("got %d unfinished, want 2 (the pending event and its job)", n)
	}
	states, err := tables.JobsByState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 8 || states["available"] != 1 || states["scheduled"] != 1 || states["completed"] != 1 || states["discarded"] != 0 {
		t.Fatalf("got %v, want all 8 states with available, scheduled and completed at 1", states)
	}
}
