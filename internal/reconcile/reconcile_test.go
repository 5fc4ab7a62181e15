package reconcile_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/reconcile"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
	"github.com/keysync/keysync/internal/webhook"
)

const secret = "whsec_reconcile_test"

// harness is a keysync in process: webhook handler, ingester, River workers, engine,
// sweeper and catch-up, against both simulators.
type harness struct {
	w        *simtest.World
	pool     *pgxpool.Pool
	store    *postgres.Store
	sweeper  *reconcile.Sweeper
	catchUp  *reconcile.CatchUp
	endpoint *stripesim.Endpoint
	pro      string
	subs     []string
	// sweeperOpts and crypto make another sweeper over the same world (sweeperWith).
	sweeperOpts reconcile.SweeperOptions
	crypto      *cryptolens.Client
}

func newHarness(t *testing.T, dropRate float64) *harness {
	t.Helper()
	return newHarnessAt(t, dropRate, time.Time{})
}

// newHarnessAt is newHarness with the simulators' clock starting at start (zero: the
// simulator's default).
func newHarnessAt(t *testing.T, dropRate float64, start time.Time) *harness {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	h := &harness{pool: pool, store: postgres.NewStore(pool)}
	h.w = simtest.New(t, simtest.Options{Start: start})
	sc, cc := h.w.Clients(t)
	mapping := license.NewMapping(0)
	policy := license.Options{BufferDays: 5}
	engine := syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: h.store, Mapping: mapping, Log: zerolog.Nop()},
		syncer.Options{Policy: policy, WriteStripeMetadata: true, Now: h.w.Stripe.Now})
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.EventWorker{Store: h.store, Engine: engine})
	river.AddWorker(workers, &jobs.SyncWorker{Engine: engine, Runs: h.store})
	client, err := jobs.NewClient(pool, jobs.Config{Workers: workers, EventWorkers: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Stop(context.Background()) })
	enq := jobs.NewEnqueuer(client)
	ing := ingest.New(jobs.NewTables(pool), ingest.Config{}, zerolog.Nop())
	ing.Start(ctx)
	t.Cleanup(ing.Stop)
	handler, err := webhook.NewHandler(webhook.Config{Secrets: []string{secret}}, ing, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	h.endpoint = h.w.Stripe.AddEndpoint(srv.URL, stripesim.EndpointOptions{Secrets: []string{secret}, DropRate: dropRate,
		RetryBackoff: 10 * time.Millisecond, Seed: 11, Types: events()})
	h.sweeperOpts = reconcile.SweeperOptions{Mapping: mapping, Policy: policy, Enqueue: enq.EnqueueSyncs, Now: h.w.Stripe.Now}
	h.crypto = cc
	h.sweeper = reconcile.NewSweeper(sc, cc, h.store, h.sweeperOpts, zerolog.Nop())
	h.catchUp = reconcile.NewCatchUp(sc, ing, h.store, reconcile.CatchUpOptions{Now: h.w.Stripe.Now}, zerolog.Nop())
	h.pro = h.w.Price("Pro", 3000, `{"F1":true,"MaxNoOfMachines":2}`)
	return h
}

// events is what a vendor's endpoint subscribes to: the handled types.
func events() []string {
	return []string{"customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
		"invoice.paid", "invoice.payment_failed", "checkout.session.completed"}
}

// idle waits until every webhook was delivered (or dropped) and every job finished.
func (h *harness) idle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.endpoint.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 30*time.Second, "keysync to be idle", func() bool {
		n, err := jobs.NewTables(h.pool).Unfinished(ctx)
		return err == nil && n == 0
	})
}

// play runs six subscriptions through months of life; after each step, between is called.
func (h *harness) play(t *testing.T, between func()) {
	t.Helper()
	sim := h.w.Stripe
	for i := range 6 {
		trial := 0
		if i%2 == 0 {
			trial = 10
		}
		res, err := sim.Checkout(stripesim.CheckoutParams{Email: "r@example.com", Items: []stripesim.ItemParams{{Price: h.pro}}, TrialDays: trial})
		if err != nil {
			t.Fatal(err)
		}
		h.subs = append(h.subs, res.Subscription)
	}
	between()
	for month := range 4 {
		switch month {
		case 1:
			_ = sim.CancelNow(h.subs[1])
			_ = sim.CancelAtPeriodEnd(h.subs[2], true)
		case 2:
			s, _ := sim.Subscription(h.subs[3])
			_ = sim.FailNextPayment(s.Customer)
		}
		sim.Advance(16 * 24 * time.Hour)
		between()
		sim.Advance(16 * 24 * time.Hour)
		between()
	}
}

// assertPolicy checks every subscription's key against Stripe's state.
func (h *harness) assertPolicy(t *testing.T) {
	t.Helper()
	for _, sub := range h.subs {
		s, _ := h.w.Stripe.Subscription(sub)
		var key *cryptolenssim.Key
		for _, k := range h.w.Crypto.Keys(simtest.Product) {
			if k.Notes == syncer.Marker(sub) {
				k := k
				key = &k
			}
		}
		if key == nil {
			t.Fatalf("%s (%s): no key", sub, s.Status)
		}
		ended := s.Status == stripesim.StatusCanceled || s.Status == stripesim.StatusUnpaid
		if key.Block != ended {
			t.Fatalf("%s (%s): key blocked=%v", sub, s.Status, key.Block)
		}
		if ended {
			continue
		}
		want := h.w.Stripe.PaidThrough(sub).AddDate(0, 0, 5)
		if key.Expires.Before(want) || key.Expires.Sub(want) >= 24*time.Hour {
			t.Fatalf("%s (%s): key expires %s, want %s", sub, s.Status, key.Expires, want)
		}
	}
	if n := h.w.Crypto.AppliedCount(cryptolenssim.CreateKey); n != len(h.subs) {
		t.Fatalf("got %d keys created for %d subscriptions", n, len(h.subs))
	}
}

func TestCatchUpAloneRecoversDroppedWebhooks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 0.3)
	ctx := context.Background()
	if _, err := h.catchUp.RunOnce(ctx); err != nil { // at start: sets the cursor
		t.Fatal(err)
	}
	inserted := 0
	h.play(t, func() {
		h.idle(t)
		sum, err := h.catchUp.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		inserted += sum.Inserted
		h.idle(t)
	})
	if st := h.endpoint.Stats(); st.Dropped == 0 || inserted == 0 {
		t.Fatalf("dropped %d webhooks, catch-up inserted %d events: want both above 0", st.Dropped, inserted)
	}
	var fromAPI int
	_ = h.pool.QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE source = 'events_api'`).Scan(&fromAPI)
	if fromAPI != inserted {
		t.Fatalf("got %d events_api rows, want %d", fromAPI, inserted)
	}
	h.assertPolicy(t)
}

func TestSweepAloneRecoversDroppedWebhooks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 0.3)
	h.play(t, func() { h.idle(t) })
	sum, err := h.sweeper.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Scanned != len(h.subs) || len(sum.Drifted) == 0 {
		t.Fatalf("got %+v: want every subscription scanned and some drift after 30%% loss", sum)
	}
	h.idle(t)
	h.assertPolicy(t)
	runs, _ := h.store.Runs(context.Background(), "sweep")
	if len(runs) != 1 || runs[0].Drifted != len(sum.Drifted) || runs[0].Fixed != len(sum.Drifted) || runs[0].Status != "succeeded" {
		t.Fatalf("sync_runs: got %+v", runs)
	}
	// A second sweep finds nothing left to do.
	if again, err := h.sweeper.RunOnce(context.Background()); err != nil || len(again.Drifted) != 0 {
		t.Fatalf("second sweep: got %+v, %v", again.Drifted, err)
	}
}

func TestSweepRebuildsLostMapping(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 0)
	ctx := context.Background()
	h.play(t, func() { h.idle(t) })
	before := mapping(t, h.pool)
	creates := h.w.Crypto.AppliedCount(cryptolenssim.CreateKey)
	// CASCADE: a bundle's other keys (subscription_keys) are lost with the mapping.
	if _, err := h.pool.Exec(ctx, "TRUNCATE subscriptions CASCADE"); err != nil {
		t.Fatal(err)
	}
	sum, err := h.sweeper.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.idle(t)
	after := mapping(t, h.pool)
	if len(before) != len(h.subs) || len(after) != len(before) {
		t.Fatalf("got %d rows back of %d (%d drifted)", len(after), len(before), len(sum.Drifted))
	}
	for sub, key := range before {
		if after[sub] != key {
			t.Fatalf("%s: mapped to %s after the sweep, was %s", sub, after[sub], key)
		}
	}
	if n := h.w.Crypto.AppliedCount(cryptolenssim.CreateKey); n != creates {
		t.Fatalf("the sweep created %d keys, want 0", n-creates)
	}
}

func TestOrphansAreReportedNotTouched(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 0)
	h.play(t, func() { h.idle(t) })
	orphan, _ := h.w.Crypto.PutKey(cryptolenssim.Key{ProductID: simtest.Product, Notes: syncer.Marker("sub_gone"), Expires: h.w.Stripe.Now()})
	h.w.Crypto.ResetCalls()
	sum, err := h.sweeper.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h.idle(t)
	if len(sum.Orphans) != 1 || !strings.Contains(sum.Orphans[0], orphan.Key) || !strings.Contains(sum.Orphans[0], "sub_gone") {
		t.Fatalf("got orphans %v, want the key naming sub_gone", sum.Orphans)
	}
	for _, c := range h.w.Crypto.Calls() {
		if c.Params.Get("key") == orphan.Key {
			t.Fatalf("the sweep touched the orphan: %s", c.Method)
		}
	}
	runs, _ := h.store.Runs(context.Background(), "sweep")
	if runs[len(runs)-1].Orphans != 1 {
		t.Fatalf("sync_runs orphans: got %d, want 1", runs[len(runs)-1].Orphans)
	}
}

func mapping(t *testing.T, pool *pgxpool.Pool) map[string]string {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT id, coalesce(license_key, '') FROM subscriptions`)
	out := map[string]string{}
	var id, key string
	if _, err := pgx.ForEachRow(rows, []any{&id, &key}, func() error { out[id] = key; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// One sweep and one catch-up at a time across replicas: a run that starts while another
// holds the run lock does nothing (no run row, cursor untouched); once it is free, runs
// go ahead.
func TestOneRunOfAKindAtATime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, 0)
	h.play(t, func() { h.idle(t) })
	for _, kind := range []string{"sweep", "catch_up"} {
		run := func() (bool, error) {
			if kind == "sweep" {
				sum, err := h.sweeper.RunOnce(ctx)
				return sum.Skipped, err
			}
			sum, err := h.catchUp.RunOnce(ctx)
			return sum.Skipped, err
		}
		held, ok, err := h.store.TryLockRun(ctx, kind) // another replica's run
		if err != nil || !ok {
			t.Fatalf("%s: lock: %v %v", kind, ok, err)
		}
		if skipped, err := run(); err != nil || !skipped {
			t.Fatalf("%s while another runs: skipped %v, %v; want skipped", kind, skipped, err)
		}
		if runs, _ := h.store.Runs(ctx, kind); len(runs) != 0 {
			t.Fatalf("%s: a skipped run wrote %d run rows", kind, len(runs))
		}
		held.Release()
		if skipped, err := run(); err != nil || skipped {
			t.Fatalf("%s after the other ended: skipped %v, %v; want a run", kind, skipped, err)
		}
		if runs, _ := h.store.Runs(ctx, kind); len(runs) != 1 {
			t.Fatalf("%s: got %d run rows, want 1", kind, len(runs))
		}
	}
}

// A renewal invoice lists its prorations before the subscription line, and Stripe
// embeds only 10 lines: after six seat changes in a period, the line that says what was
// paid for is on the invoice's second page. Webhooks (through the Sync) and the sweep
// alone must both read it and extend the key.
func TestLongRenewalInvoices(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"webhooks", "sweep alone"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			drop := 0.0
			if path == "sweep alone" {
				drop = 1
			}
			h := newHarness(t, drop)
			sim := h.w.Stripe
			step := func() {
				h.idle(t)
				if path == "sweep alone" {
					if _, err := h.sweeper.RunOnce(context.Background()); err != nil {
						t.Fatal(err)
					}
					h.idle(t)
				}
			}
			res, err := sim.Checkout(stripesim.CheckoutParams{Email: "long@example.com", Items: []stripesim.ItemParams{{Price: h.pro}}})
			if err != nil {
				t.Fatal(err)
			}
			h.subs = append(h.subs, res.Subscription)
			step()
			for q := range 6 {
				if err := sim.ChangeQuantity(res.Subscription, int64(2+q%2), stripesim.ChangeOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			s, _ := sim.Subscription(res.Subscription)
			sim.Advance(time.Unix(s.CurrentPeriodEnd, 0).Sub(sim.Now()) + 2*time.Hour)
			step()
			invs := sim.Invoices(res.Subscription)
			renewal := invs[len(invs)-1]
			if renewal.Status != "paid" || len(renewal.Lines) <= stripesim.EmbeddedLines || renewal.Lines[len(renewal.Lines)-1].Type != "subscription" {
				t.Fatalf("the renewal invoice (%s, %d lines) does not put its subscription line past the embedded page", renewal.Status, len(renewal.Lines))
			}
			h.assertPolicy(t)
		})
	}
}
