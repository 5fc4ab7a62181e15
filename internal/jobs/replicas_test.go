package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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

// Three replicas (three River clients, each with its own engine and clients) on one
// database work the same bursts, every event enqueued twice: one set of effects.
func TestThreeReplicasOneSetOfEffects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	// Each replica has its own pool, as separate processes do.
	newPool := func() *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 8
		p, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	store := postgres.NewStore(newPool())
	world := simtest.New(t, simtest.Options{})
	ssim, csim := world.Stripe, world.Crypto
	prod := ssim.CreateProduct("App", map[string]string{"skm_product_id": "1001"})
	price, _ := ssim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 1000, Metadata: map[string]string{"skm": `{"F1":true}`}})

	completed := make(chan struct{}, 1000)
	var clients []*river.Client[pgx.Tx]
	for range 3 {
		sc, cc := world.Clients(t) // each replica has its own clients
		pool := newPool()
		engine := syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: postgres.NewStore(pool), Mapping: license.NewMapping(0), Log: zerolog.Nop()},
			syncer.Options{Policy: license.Options{BufferDays: 5}, Now: ssim.Now})
		workers := river.NewWorkers()
		river.AddWorker(workers, &jobs.EventWorker{Store: postgres.NewStore(pool), Engine: engine})
		client, err := jobs.NewClient(pool, jobs.Config{Workers: workers, EventWorkers: 4})
		if err != nil {
			t.Fatal(err)
		}
		sub, cancel := client.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed)
		t.Cleanup(cancel)
		go func() {
			for range sub {
				completed <- struct{}{}
			}
		}()
		if err := client.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Stop(context.Background()) })
		clients = append(clients, client)
	}

	seen := 0
	burst := func() {
		t.Helper()
		all := ssim.Events()
		var evs []events.Event
		for _, ev := range all[seen:] {
			evs = append(evs, events.Event{ID: ev.ID, Type: ev.Type, Created: time.Unix(ev.Created, 0), APIVersion: events.StripeAPIVersion,
				Payload: ev.Payload, Source: events.SourceWebhook})
		}
		seen = len(all)
		handled := 0
		for _, ev := range evs {
			if events.Handled(ev.Type) {
				handled++
			}
		}
		if _, err := jobs.NewTables(store.Pool()).WithoutJobs().IngestEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		err := store.InTx(ctx, func(tx pgx.Tx) error {
			var jobsFor []events.Event
			for _, ev := range evs {
				if events.Handled(ev.Type) {
					jobsFor = append(jobsFor, ev, ev) // each twice: a replay racing the original
				}
			}
			return jobs.NewEnqueuer(clients[0]).EnqueueEventsTx(ctx, tx, jobsFor)
		})
		if err != nil {
			t.Fatal(err)
		}
		for range 2 * handled {
			select {
			case <-completed:
			case <-time.After(60 * time.Second):
				t.Fatal("timed out waiting for the burst")
			}
		}
	}

	var subs []string
	for range 6 {
		res, err := ssim.Checkout(stripesim.CheckoutParams{Email: "r@example.com", Items: []stripesim.ItemParams{{Price: price}}})
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, res.Subscription)
	}
	burst()
	s0, _ := ssim.Subscription(subs[0])
	ssim.Advance(time.Unix(s0.CurrentPeriodEnd, 0).Sub(ssim.Now()) + 2*time.Hour) // every subscription renews
	burst()

	if n := csim.AppliedCount(cryptolenssim.CreateKey); n != 6 {
		t.Fatalf("got %d keys created, want 6", n)
	}
	if n := csim.AppliedCount(cryptolenssim.ExtendLicense); n != 6 {
		t.Fatalf("got %d extensions, want 6 (one renewal each)", n)
	}
	for _, sub := range subs {
		row, err := store.GetSubscription(ctx, sub)
		if err != nil || row.LicenseKey == nil || row.PaidThrough == nil {
			t.Fatalf("%s: got %+v, %v", sub, row, err)
		}
		k, _ := csim.Key(1001, *row.LicenseKey)
		want := row.PaidThrough.AddDate(0, 0, 5)
		if k.Expires.Before(want) || k.Expires.Sub(want) >= 24*time.Hour {
			t.Fatalf("%s: key expires %s, want %s", sub, k.Expires, want)
		}
	}
}
