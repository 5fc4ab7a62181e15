package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
)

// countingStore counts batch statements, to show that queued events share one.
type countingStore struct {
	*jobs.Tables
	pool    *pgxpool.Pool
	mu      sync.Mutex
	batches int
}

func (s *countingStore) IngestEvents(ctx context.Context, evs []events.Event) ([]bool, error) {
	s.mu.Lock()
	s.batches++
	s.mu.Unlock()
	return s.Tables.IngestEvents(ctx, evs)
}

func newTestIngester(t *testing.T, committers int) (*Ingester, *countingStore) {
	t.Helper()
	pool := pgtest.Pool(t)
	store := &countingStore{Tables: jobs.NewTables(pool), pool: pool}
	ing := New(store, Config{Committers: committers}, zerolog.Nop())
	t.Cleanup(ing.Stop)
	return ing, store
}

func testEvent(id, payload string) events.Event {
	return events.Event{ID: id, Type: "invoice.paid", Created: time.Unix(1700000000, 0), Livemode: false,
		APIVersion: events.StripeAPIVersion, Payload: []byte(payload), Source: events.SourceWebhook}
}

// queueThenStart submits evs while no committer runs, so they are all waiting when the
// first committer starts, as they are during a burst, and returns each one's answer.
func queueThenStart(t *testing.T, ing *Ingester, evs []events.Event) ([]Result, []error) {
	t.Helper()
	results, errs := make([]Result, len(evs)), make([]error, len(evs))
	var wg sync.WaitGroup
	for i, ev := range evs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = ing.Ingest(context.Background(), ev)
		}()
	}
	pgtest.WaitFor(t, 5*time.Second, "events to queue", func() bool { return len(ing.queue) == len(evs) })
	ing.Start(context.Background())
	wg.Wait()
	return results, errs
}

func TestWaitingEventsCommitTogether(t *testing.T) {
	t.Parallel()
	ing, store := newTestIngester(t, 1)
	var evs []events.Event
	for i := range 40 {
		id := fmt.Sprintf("evt_%02d", i)
		evs = append(evs, testEvent(id, `{"id":"`+id+`"}`))
	}
	evs = append(evs, evs[3]) // a duplicate delivery inside the same batch
	results, errs := queueThenStart(t, ing, evs)
	duplicates := 0
	for i := range evs {
		if errs[i] != nil {
			t.Fatalf("event %d: %v", i, errs[i])
		}
		if results[i].Duplicate {
			duplicates++
		}
	}
	if duplicates != 1 {
		t.Fatalf("got %d duplicates, want 1", duplicates)
	}
	if store.batches != 1 {
		t.Fatalf("got %d batch statements for 41 waiting events, want 1", store.batches)
	}
	var rows, jobRows int
	pool := store.pool
	_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM stripe_events`).Scan(&rows)
	_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM river_job`).Scan(&jobRows)
	if rows != 40 || jobRows != 40 {
		t.Fatalf("got %d events and %d jobs, want 40 and 40", rows, jobRows)
	}
}

func TestPoisonEventDoesNotFailItsBatch(t *testing.T) {
	t.Parallel()
	ing, store := newTestIngester(t, 1)
	evs := []events.Event{
		testEvent("evt_ok1", `{"id":"evt_ok1"}`),
		// Valid JSON that jsonb refuses: the batch fails, then the events go one by one.
		testEvent("evt_poison", `{"id":"evt_poison","x":"\u0000"}`),
		testEvent("evt_ok2", `{"id":"evt_ok2"}`),
	}
	_, errs := queueThenStart(t, ing, evs)
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("good events: got %v and %v, want both stored", errs[0], errs[2])
	}
	if errs[1] == nil {
		t.Fatal("poison event: got nil error, want the store's refusal")
	}
	var rows int
	_ = store.pool.QueryRow(context.Background(), `SELECT count(*) FROM stripe_events`).Scan(&rows)
	if rows != 2 {
		t.Fatalf("got %d rows, want 2", rows)
	}
}

func TestLoneEventIsNotDelayed(t *testing.T) {
	t.Parallel()
	ing, store := newTestIngester(t, 4)
	ing.Start(context.Background())
	for i := range 3 {
		if _, err := ing.Ingest(context.Background(), testEvent(fmt.Sprintf("evt_%d", i), `{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if store.batches != 3 {
		t.Fatalf("got %d batch statements for 3 sequential events, want 3 (one each, no waiting for company)", store.batches)
	}
}

func TestStoppedIngesterRefuses(t *testing.T) {
	t.Parallel()
	ing, store := newTestIngester(t, 1)
	ing.Start(context.Background())
	ing.Stop()
	ing.Stop() // idempotent
	if _, err := ing.Ingest(context.Background(), testEvent("evt_late", `{}`)); !errors.Is(err, ErrStopped) {
		t.Fatalf("got %v, want ErrStopped", err)
	}
	if store.batches != 0 {
		t.Fatalf("got %d batch statements, want 0", store.batches)
	}
}
