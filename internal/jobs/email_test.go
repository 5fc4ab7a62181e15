package jobs_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
)

// jobArgs returns the args of the jobs of a kind, oldest first.
func jobArgs(t *testing.T, pool *pgxpool.Pool, kind string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT args::text FROM river_job WHERE kind = $1 ORDER BY id`, kind)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// The lost-keys form's per-address limit: one job per address (in any case) in each
// ResendPeriod, across replicas; other addresses are not held up.
func TestResendOncePerAddressPerPeriod(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	client, err := jobs.NewClient(pool, jobs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	q := jobs.ResendQueue{Client: client}
	for _, a := range []string{"Ada@Example.com", "ada@example.com", "ada@example.com", "bob@example.com"} {
		if err := q.QueueResend(context.Background(), a); err != nil {
			t.Fatal(err)
		}
	}
	got := jobArgs(t, pool, "resend_keys")
	want := []string{`{"address": "Ada@Example.com", "normalized": "ada@example.com"}`, `{"address": "bob@example.com", "normalized": "bob@example.com"}`}
	if !slices.Equal(got, want) {
		t.Fatalf("got jobs %v, want %v", got, want)
	}
}

// An outbox scan queues one e-mail job per key, however often it runs; the scans each
// new key asks for start after the key was recorded (scheduled for the next second),
// and those asked for within a second share one job.
func TestOutboxQueuesEachKeyOnce(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	client, err := jobs.NewClient(pool, jobs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before := time.Now()
	for range 3 {
		if err := jobs.QueueOutboxScan(ctx, client); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	var first time.Time
	if err := pool.QueryRow(ctx, `SELECT count(*), min(scheduled_at) FROM river_job WHERE kind = 'email_outbox'`).Scan(&n, &first); err != nil {
		t.Fatal(err)
	}
	if n < 1 || n > 2 || !first.After(before) {
		t.Fatalf("three asks within a moment: got %d scans, the first at %s; want one (two across a second's turn), after %s", n, first, before)
	}

	w := &jobs.EmailOutboxWorker{Client: client, Outbox: func(context.Context) ([]int64, error) { return []int64{7, 8}, nil }}
	for range 2 {
		if err := w.Work(ctx, &river.Job[jobs.EmailOutboxArgs]{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := jobArgs(t, pool, "email_key"); !slices.Equal(got, []string{`{"audit_id": 7}`, `{"audit_id": 8}`}) {
		t.Fatalf("two scans of the same outbox: got jobs %v, want one per key", got)
	}
}

// Serve's wiring, end to end on River: a queued scan runs the outbox and each key's
// job runs the e-mail once.
func TestOutboxScanRunsTheEmails(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	var mu sync.Mutex
	sent := map[int64]int{}
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.EmailKeyWorker{Send: func(_ context.Context, id int64) error {
		mu.Lock()
		defer mu.Unlock()
		sent[id]++
		return nil
	}})
	outbox := &jobs.EmailOutboxWorker{Outbox: func(context.Context) ([]int64, error) { return []int64{41, 42}, nil }}
	river.AddWorker(workers, outbox)
	client, err := jobs.NewClient(pool, jobs.Config{Workers: workers})
	if err != nil {
		t.Fatal(err)
	}
	outbox.Client = client
	if err := client.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Stop(context.Background()) })
	if err := jobs.QueueOutboxScan(context.Background(), client); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 30*time.Second, "both e-mails", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return sent[41] == 1 && sent[42] == 1
	})
}
