package jobs_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// The worker resolves each kind of event to its subscription, syncs it, and records
// the outcome on the event: processed, or failed with the reason when retrying cannot help.
func TestEventWorker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	store := postgres.NewStore(pool)
	w := simtest.New(t, simtest.Options{})
	ssim, csim := w.Stripe, w.Crypto
	sc, cc := w.Clients(t)
	engine := syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: store, Mapping: license.NewMapping(0), Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5, BlockOnDispute: true}})

	prod := ssim.CreateProduct("App", map[string]string{"skm_product_id": "1001"})
	price, _ := ssim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 1000, Metadata: map[string]string{"skm": `{"F2":true}`}})
	res, _ := ssim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	charge := ssim.Charges(res.Invoice)[0].ID

	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.EventWorker{Store: store, Engine: engine})
	client, err := jobs.NewClient(pool, jobs.Config{Workers: workers, EventWorkers: 2})
	if err != nil {
		t.Fatal(err)
	}
	done, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()

	want := map[string]string{} // event id -> final status
	stored := func(types ...string) []events.Event {
		var out []events.Event
		for _, ev := range ssim.Events() {
			if _, done := want[ev.ID]; done || !slices.Contains(types, ev.Type) {
				continue
			}
			out = append(out, events.Event{ID: ev.ID, Type: ev.Type, Created: time.Unix(ev.Created, 0), APIVersion: events.StripeAPIVersion,
				Payload: ev.Payload, Source: events.SourceWebhook})
			want[ev.ID] = "processed"
		}
		return out
	}
	deliver := func(evs []events.Event) {
		t.Helper()
		if _, err := jobs.NewTables(pool).IngestEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		for range evs {
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("timed out waiting for the event jobs")
			}
		}
	}
	// One event of each shape, taken from what the simulator emitted.
	evs := stored("customer.subscription.created", "invoice.paid", "checkout.session.completed")
	// An event about a subscription Stripe does not know fails for good, visibly.
	ghost := events.Event{ID: "evt_ghost", Type: "customer.subscription.updated", Created: time.Now(), APIVersion: events.StripeAPIVersion,
		Payload: []byte(`{"id":"evt_ghost","data":{"object":{"id":"sub_ghost","object":"subscription"}}}`), Source: events.SourceWebhook}
	evs = append(evs, ghost)
	want["evt_ghost"] = "failed"
	deliver(evs)
	// Then the customer disputes the charge: the event names a dispute, which leads
	// through the charge and the invoice to the subscription.
	disputeID, _ := ssim.Dispute(charge, "fraudulent")
	deliver(stored("charge.dispute.created"))
	for id, status := range want {
		got, err := store.GetEvent(ctx, id)
		if err != nil || got.Status != status {
			t.Fatalf("%s: got %+v (%v), want %s", id, got, err, status)
		}
		if status == "failed" && (got.LastError == nil || *got.LastError == "") {
			t.Fatalf("%s failed without a last_error", id)
		}
	}
	// The dispute (resolved charge -> invoice -> subscription) blocked the key.
	row, _ := store.GetSubscription(ctx, res.Subscription)
	if row.LicenseKey == nil {
		t.Fatal("no key")
	}
	if k, _ := csim.Key(1001, *row.LicenseKey); !k.Block || !row.BlockedByKeysync {
		t.Fatalf("got key %+v, want blocked by keysync for dispute %s", k, disputeID)
	}
}

// An outage of Cryptolens snoozes the event's job instead of failing it: the attempts
// are not used up however often it is tried, the event stays pending with the reason,
// and it is applied once Cryptolens is back.
func TestOutageSnoozesWithoutUsingAttempts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t)
	store := postgres.NewStore(pool)
	w := simtest.New(t, simtest.Options{})
	sc, cc := w.Clients(t)
	engine := syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: store, Mapping: license.NewMapping(0), Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5}})
	prod := w.Stripe.CreateProduct("App", map[string]string{"skm_product_id": "1001"})
	price, _ := w.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 1000})
	res, _ := w.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	var ev events.Event
	for _, e := range w.Stripe.Events() {
		if e.Type == "invoice.paid" {
			ev = events.Event{ID: e.ID, Type: e.Type, Created: time.Unix(e.Created, 0), APIVersion: events.StripeAPIVersion, Payload: e.Payload, Source: events.SourceWebhook}
		}
	}
	w.Crypto.SetFaults(cryptolenssim.Faults{Down: true})

	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.EventWorker{Store: store, Engine: engine, Snooze: func(int) time.Duration { return 10 * time.Millisecond }})
	client, err := jobs.NewClient(pool, jobs.Config{Workers: workers, EventWorkers: 1})
	if err != nil {
		t.Fatal(err)
	}
	happened, cancel := client.Subscribe(river.EventKindJobSnoozed, river.EventKindJobCompleted, river.EventKindJobFailed)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()
	if _, err := jobs.NewTables(pool).IngestEvents(ctx, []events.Event{ev}); err != nil {
		t.Fatal(err)
	}
	next := func() *river.Event {
		t.Helper()
		select {
		case e := <-happened:
			return e
		case <-time.After(30 * time.Second):
			t.Fatal("timed out waiting for the job")
			return nil
		}
	}
	// Each try would use an attempt if it were a retry: after three, one at most is used.
	const tries = 3
	for i := range tries {
		if e := next(); e.Kind != river.EventKindJobSnoozed {
			t.Fatalf("try %d: job %s, want snoozed while Cryptolens is down", i, e.Kind)
		}
	}
	var attempt int
	if err := pool.QueryRow(ctx, `SELECT attempt FROM river_job WHERE kind = 'stripe_event'`).Scan(&attempt); err != nil {
		t.Fatal(err)
	}
	got, _ := store.GetEvent(ctx, ev.ID)
	if attempt > 1 || got.Status != "pending" || got.LastError == nil || !strings.Contains(*got.LastError, "cryptolens") {
		t.Fatalf("after %d snoozes: attempt %d, event %s (%v); want at most 1 attempt used and a pending event with the reason",
			tries, attempt, got.Status, got.LastError)
	}

	w.Crypto.SetFaults(cryptolenssim.Faults{})
	for {
		if e := next(); e.Kind == river.EventKindJobCompleted {
			break
		} else if e.Kind == river.EventKindJobFailed {
			t.Fatalf("job failed: %v", e.Job.Errors)
		}
	}
	got, _ = store.GetEvent(ctx, ev.ID)
	row, _ := store.GetSubscription(ctx, res.Subscription)
	if got.Status != "processed" || row.LicenseKey == nil {
		t.Fatalf("after the outage: event %s, key %v; want processed and a key", got.Status, row.LicenseKey)
	}
}

func TestSnoozeForIsBounded(t *testing.T) {
	t.Parallel()
	for n := range 40 {
		d := jobs.SnoozeFor(n)
		if d < 2500*time.Millisecond || d > time.Minute {
			t.Fatalf("SnoozeFor(%d) = %s, want between 2.5s and a minute", n, d)
		}
	}
	if d := jobs.SnoozeFor(0); d > 5*time.Second {
		t.Fatalf("first snooze %s, want at most 5s", d)
	}
}
