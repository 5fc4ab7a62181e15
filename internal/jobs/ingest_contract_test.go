package jobs_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

type recordingWorker struct {
	river.WorkerDefaults[jobs.EventArgs]
	got chan jobs.EventArgs
}

func (w *recordingWorker) Work(_ context.Context, job *river.Job[jobs.EventArgs]) error {
	w.got <- job.Args
	return nil
}

// Webhook ingest writes each event's River job in SQL, in the event's own statement.
// The row must be the one River's InsertMany writes for the same args, River's
// producers must hear of it (the insert notification), and River must work it.
func TestIngestWritesRiversJobRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	store := postgres.NewStore(pool)
	tables := jobs.NewTables(pool)
	ev := func(id, typ string) events.Event {
		return events.Event{ID: id, Type: typ, Created: time.Now(), APIVersion: events.StripeAPIVersion,
			Payload: []byte(`{"id":"` + id + `","type":"` + typ + `"}`), Source: events.SourceWebhook}
	}
	insertOnly, err := jobs.NewClient(pool, jobs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	listener, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Release()
	if _, err := listener.Exec(ctx, `LISTEN "public.river_insert"`); err != nil {
		t.Fatal(err)
	}

	// River's own insert, then the SQL one, for the same kind of event.
	viaRiver := ev("evt_river", "invoice.paid")
	if _, err := tables.WithoutJobs().IngestEvents(ctx, []events.Event{viaRiver}); err != nil {
		t.Fatal(err)
	}
	if err := store.InTx(ctx, func(tx pgx.Tx) error {
		return jobs.NewEnqueuer(insertOnly).EnqueueEventsTx(ctx, tx, []events.Event{viaRiver})
	}); err != nil {
		t.Fatal(err)
	}
	drain := func() {
		for {
			wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			_, err := listener.Conn().WaitForNotification(wctx)
			cancel()
			if err != nil {
				return
			}
		}
	}
	drain()
	isNew, err := tables.IngestEvents(ctx, []events.Event{ev("evt_sql", "invoice.paid"), ev("evt_other", "product.created")})
	if err != nil || !isNew[0] || !isNew[1] {
		t.Fatalf("ingest: %v %v", isNew, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	n, err := listener.Conn().WaitForNotification(wctx)
	cancel()
	if err != nil || n.Channel != "public.river_insert" {
		t.Fatalf("no River insert notification: %v %+v", err, n)
	}
	var payload struct{ Queue string }
	if err := json.Unmarshal([]byte(n.Payload), &payload); err != nil || payload.Queue != jobs.QueueEvents {
		t.Fatalf("notification payload %q", n.Payload)
	}
	// A redelivery writes no job.
	if again, err := tables.IngestEvents(ctx, []events.Event{ev("evt_sql", "invoice.paid")}); err != nil || again[0] {
		t.Fatalf("redelivery: new %v, %v", again, err)
	}

	type row struct {
		State, Kind, Queue, Metadata, Tags string
		Attempt, MaxAttempts, Priority     int
		UniqueKey, UniqueStates            *string
		Args                               map[string]any
		ScheduledSoon                      bool
	}
	read := func(eventID string) (row, int) {
		rows, err := pool.Query(ctx, `SELECT state::text, kind, queue, metadata::text, tags::text, attempt, max_attempts, priority,
			encode(unique_key, 'hex'), unique_states::text, args, scheduled_at <= now() + interval '1 second'
			FROM river_job WHERE args->>'event_id' = $1`, eventID)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.State, &x.Kind, &x.Queue, &x.Metadata, &x.Tags, &x.Attempt, &x.MaxAttempts, &x.Priority,
				&x.UniqueKey, &x.UniqueStates, &x.Args, &x.ScheduledSoon)
			return x, err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			return row{}, 0
		}
		return got[0], len(got)
	}
	river1, n1 := read("evt_river")
	sql1, n2 := read("evt_sql")
	if _, n3 := read("evt_other"); n1 != 1 || n2 != 1 || n3 != 0 {
		t.Fatalf("jobs: %d via River, %d via SQL, %d for the unhandled type; want 1, 1, 0", n1, n2, n3)
	}
	river1.Args["event_id"] = "evt_sql"
	if river1.Kind != sql1.Kind || river1.Queue != sql1.Queue || river1.State != sql1.State || river1.Metadata != sql1.Metadata ||
		river1.Tags != sql1.Tags || river1.Attempt != sql1.Attempt || river1.MaxAttempts != sql1.MaxAttempts || river1.Priority != sql1.Priority ||
		(river1.UniqueKey == nil) != (sql1.UniqueKey == nil) || (river1.UniqueStates == nil) != (sql1.UniqueStates == nil) ||
		!sql1.ScheduledSoon || len(river1.Args) != len(sql1.Args) || river1.Args["event_id"] != sql1.Args["event_id"] || river1.Args["type"] != sql1.Args["type"] {
		t.Fatalf("rows differ:\nRiver %+v\nSQL   %+v", river1, sql1)
	}

	// River works it.
	w := &recordingWorker{got: make(chan jobs.EventArgs, 2)}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	client, err := jobs.NewClient(pool, jobs.Config{Workers: workers})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()
	seen := map[string]string{}
	for range 2 {
		select {
		case a := <-w.got:
			seen[a.EventID] = a.Type
		case <-time.After(30 * time.Second):
			t.Fatalf("River worked %v of the two jobs", seen)
		}
	}
	if seen["evt_sql"] != "invoice.paid" || seen["evt_river"] != "invoice.paid" {
		t.Fatalf("worked %v", seen)
	}
}
