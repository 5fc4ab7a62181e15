package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

func TestEventWorkerMarksEventProcessed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	store := postgres.NewStore(pool)
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.EventWorker{Store: store})
	client, err := jobs.NewClient(pool, jobs.Config{Workers: workers, EventWorkers: 2})
	if err != nil {
		t.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()

	ev := events.Event{ID: "evt_work", Type: "invoice.paid", Created: time.Now(), APIVersion: events.StripeAPIVersion,
		Payload: []byte(`{}`), Source: events.SourceWebhook}
	err = store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := store.InsertEventsTx(ctx, tx, []events.Event{ev}); err != nil {
			return err
		}
		return jobs.NewEnqueuer(client).EnqueueEventsTx(ctx, tx, []events.Event{ev})
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-completed:
		if e.Job.Kind != "stripe_event" {
			t.Fatalf("got completed job of kind %q, want stripe_event", e.Job.Kind)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the event job to complete")
	}
	got, err := store.GetEvent(ctx, "evt_work")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != "processed" || got.Attempts != 1 {
		t.Fatalf("got status %s after %d attempts, want processed after 1", got.Status, got.Attempts)
	}
}
