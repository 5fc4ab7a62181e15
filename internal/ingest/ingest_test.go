package ingest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
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

// An event the database refuses, for its data (SQLSTATE class 22) or its size (54),
// costs only itself its delivery: the others of its batch are stored, and it is answered
// ErrNotStorable, alone in its batch or not.
func TestPoisonEventDoesNotFailItsBatch(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		poison events.Event
		// direct hands the event to a committer as it is, past Storable's checks, as
		// an event they let through would reach it.
		direct bool
	}{
		// Valid JSON that jsonb refuses: 22003, numeric value out of range.
		"data": {poison: testEvent("evt_poison", `{"id":"evt_poison","n":1e1000000}`)},
		// An id too large for its index entry: 54000, program limit exceeded.
		"size": {poison: testEvent("evt_"+randomWord(8000), `{}`), direct: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ing, store := newTestIngester(t, 1)
			ingest := func(ev events.Event) (Result, error) { return ing.Ingest(context.Background(), ev) }
			if tc.direct {
				ingest = func(ev events.Event) (Result, error) { return ing.enqueue(context.Background(), ev) }
			}
			evs := []events.Event{testEvent("evt_ok1", `{"id":"evt_ok1"}`), tc.poison, testEvent("evt_ok2", `{"id":"evt_ok2"}`)}
			errs := make([]error, len(evs))
			var wg sync.WaitGroup
			for i, ev := range evs {
				wg.Go(func() { _, errs[i] = ingest(ev) })
			}
			pgtest.WaitFor(t, 5*time.Second, "events to queue", func() bool { return len(ing.queue) == len(evs) })
			ing.Start(context.Background())
			wg.Wait()
			if errs[0] != nil || errs[2] != nil {
				t.Fatalf("good events: got %v and %v, want both stored", errs[0], errs[2])
			}
			if !errors.Is(errs[1], ErrNotStorable) {
				t.Fatalf("poison event: got %v, want ErrNotStorable", errs[1])
			}
			var rows int
			_ = store.pool.QueryRow(context.Background(), `SELECT count(*) FROM stripe_events`).Scan(&rows)
			if rows != 2 {
				t.Fatalf("got %d rows, want 2", rows)
			}

			// Alone in its batch, it is refused the same way, and is no outage.
			if _, err := ingest(tc.poison); !errors.Is(err, ErrNotStorable) || errors.Is(err, postgres.ErrUnavailable) {
				t.Fatalf("poison event alone: got %v, want ErrNotStorable", err)
			}
		})
	}
}

// randomWord returns n random letters: random, so that Postgres cannot compress them
// into a smaller index entry.
func randomWord(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rand.IntN(len(letters))]
	}
	return string(b)
}

// Every event is checked and cleaned on its way in, whichever path it came by: a NUL
// or a lone surrogate, which jsonb refuses, becomes U+FFFD, and an envelope that is no
// Stripe event's is refused before the database sees it.
func TestIngestCleansAndChecks(t *testing.T) {
	t.Parallel()
	ing, store := newTestIngester(t, 1)
	ing.Start(context.Background())
	ctx := context.Background()
	for id, payload := range map[string]string{"evt_nul": `{"note":"a\u0000b"}`, "evt_surrogate": `{"note":"a\ud800b"}`} {
		if _, err := ing.Ingest(ctx, testEvent(id, payload)); err != nil {
			t.Fatalf("%s: got %v, want it stored", id, err)
		}
		var note string
		if err := store.pool.QueryRow(ctx, `SELECT payload->>'note' FROM stripe_events WHERE id = $1`, id).Scan(&note); err != nil || note != "a\uFFFDb" {
			t.Fatalf("%s: got note %q (%v), want a\uFFFDb", id, note, err)
		}
	}
	bad := testEvent("evt_future", `{}`)
	bad.Created = time.Now().AddDate(50, 0, 0)
	if _, err := ing.Ingest(ctx, bad); !errors.Is(err, events.ErrInvalid) {
		t.Fatalf("got %v, want events.ErrInvalid", err)
	}
	var rows int
	_ = store.pool.QueryRow(ctx, `SELECT count(*) FROM stripe_events`).Scan(&rows)
	if rows != 2 || store.batches != 2 {
		t.Fatalf("got %d rows in %d batches, want 2 and 2: the invalid event never reaches the database", rows, store.batches)
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
