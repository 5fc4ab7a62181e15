package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

func TestReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	price := world.Price("App", 1000, "")
	if _, err := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "x@example.com", Items: []stripesim.ItemParams{{Price: price}}}); err != nil {
		t.Fatal(err)
	}
	// Store every simulated event except the last handled one, all processed.
	all := world.Stripe.Events()
	var stored []events.Event
	var missing stripesim.Event
	for _, ev := range all {
		if ev.Type == "checkout.session.completed" {
			missing = ev
			continue
		}
		stored = append(stored, events.Event{ID: ev.ID, Type: ev.Type, Created: time.Unix(ev.Created, 0), APIVersion: events.StripeAPIVersion,
			Payload: ev.Payload, Source: events.SourceWebhook})
	}
	if _, err := jobs.NewTables(pool).IngestEvents(ctx, stored); err != nil {
		t.Fatal(err)
	}
	// Their jobs are done and gone, as River's retention leaves them.
	_, _ = pool.Exec(ctx, `UPDATE stripe_events SET status = 'processed' WHERE status = 'pending'`)
	_, _ = pool.Exec(ctx, `DELETE FROM river_job`)
	vars := env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
	replayRun := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(ctx, append([]string{"replay"}, args...), vars, &out, io.Discard, nil); err != nil {
			t.Fatalf("replay %v: %v", args, err)
		}
		return out.String()
	}
	jobsFor := func(id string) int {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE args->>'event_id' = $1`, id).Scan(&n)
		return n
	}
	var subCreated string
	for _, e := range stored {
		if e.Type == "customer.subscription.created" {
			subCreated = e.ID
		}
	}
	if out := replayRun(subCreated); !strings.Contains(out, "1 event(s) queued") || jobsFor(subCreated) != 1 {
		t.Fatalf("replay by id: got %q and %d jobs", out, jobsFor(subCreated))
	}
	if ev, _ := store.GetEvent(ctx, subCreated); ev.Status != "pending" {
		t.Fatalf("replayed event is %s, want pending", ev.Status)
	}
	out := replayRun("--since", "1h", "--type", "invoice.paid", "--type", "invoice.created")
	if !strings.Contains(out, "1 event(s) queued") || !strings.Contains(out, "(1 skipped") {
		t.Fatalf("replay --since with types: got %q, want invoice.paid queued and invoice.created skipped", out)
	}
	// The admin API refuses what the CLI skips: an event of a type keysync does not act
	// on. Replayed, it would be stored and skipped again.
	var otherType string
	for _, e := range stored {
		if e.Type == "invoice.created" {
			otherType = e.ID
		}
	}
	before, _ := store.GetEvent(ctx, otherType)
	client, err := jobs.NewClient(pool, jobs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := (adminJobs{store: store, client: client}).ReplayEvent(ctx, otherType); !errors.Is(err, syncer.ErrPermanent) || jobsFor(otherType) != 0 {
		t.Fatalf("admin replay of invoice.created: got %v and %d jobs, want a permanent error and none", err, jobsFor(otherType))
	}
	if after, _ := store.GetEvent(ctx, otherType); after.Status != before.Status {
		t.Fatalf("admin replay of invoice.created moved it from %s to %s", before.Status, after.Status)
	}
	if out := replayRun(missing.ID); !strings.Contains(out, "fetched it from Stripe") || jobsFor(missing.ID) != 1 {
		t.Fatalf("replay of an unstored event: got %q and %d jobs", out, jobsFor(missing.ID))
	}
	if ev, err := store.GetEvent(ctx, missing.ID); err != nil || ev.Source != "events_api" {
		t.Fatalf("fetched event: got %+v, %v", ev, err)
	}
	if err := run(ctx, []string{"replay", "evt_nowhere"}, vars, io.Discard, io.Discard, nil); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown event: got %v", err)
	}
}

// A replay never carries an event the guard refused to a key: a stored one stays
// ignored (CLI and admin API), and one fetched from Stripe is stored ignored.
func TestReplayKeepsRefusedEventsIgnored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	price := world.Price("App", 1000, "")
	res, err := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "r@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil {
		t.Fatal(err)
	}
	storedLive, _ := world.Stripe.InjectEvent("customer.subscription.updated", res.Subscription, stripesim.InjectOptions{Livemode: true})
	unstoredConnect, _ := world.Stripe.InjectEvent("customer.subscription.updated", res.Subscription, stripesim.InjectOptions{Account: "acct_1X"})
	for _, ev := range world.Stripe.Events() {
		if ev.ID != storedLive {
			continue
		}
		e := events.Event{ID: ev.ID, Type: ev.Type, Created: time.Unix(ev.Created, 0), Livemode: true, APIVersion: ev.APIVersion,
			Payload: ev.Payload, Source: events.SourceWebhook}
		e.Refused = events.Guard{}.Check(e)
		if _, err := jobs.NewTables(pool).IngestEvents(ctx, []events.Event{e}); err != nil {
			t.Fatal(err)
		}
	}
	vars := env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
	replayRun := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(ctx, append([]string{"replay"}, args...), vars, &out, io.Discard, nil); err != nil {
			t.Fatalf("replay %v: %v", args, err)
		}
		return out.String()
	}
	ignoredWithoutJob := func(id string) bool {
		var status string
		var n int
		_ = pool.QueryRow(ctx, `SELECT status, (SELECT count(*) FROM river_job WHERE args->>'event_id' = $1) FROM stripe_events WHERE id = $1`,
			id).Scan(&status, &n)
		return status == "ignored" && n == 0
	}

	if out := replayRun("--since", "1h"); !strings.Contains(out, "0 event(s) queued for processing (1 skipped") || !ignoredWithoutJob(storedLive) {
		t.Fatalf("replay --since: got %q; want the refused event left ignored, without a job", out)
	}
	if out := replayRun(storedLive); !strings.Contains(out, "0 event(s) queued") || !ignoredWithoutJob(storedLive) {
		t.Fatalf("replay by id: got %q; want the refused event left ignored, without a job", out)
	}
	client, err := jobs.NewClient(pool, jobs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := (adminJobs{store: store, client: client}).ReplayEvent(ctx, storedLive); !errors.Is(err, syncer.ErrPermanent) || !ignoredWithoutJob(storedLive) {
		t.Fatalf("admin replay: got %v; want a permanent error and the event left ignored", err)
	}
	out := replayRun(unstoredConnect)
	if !strings.Contains(out, "stored it as ignored") || !strings.Contains(out, "acct_1X") || !ignoredWithoutJob(unstoredConnect) {
		t.Fatalf("replay of an unstored connected account's event: got %q; want it fetched and stored ignored, without a job", out)
	}
}

// Replay stores an event it fetched from Stripe as the webhook and the catch-up do: a
// NUL in it, which jsonb refuses, becomes U+FFFD instead of failing the replay.
func TestReplayCleansAFetchedEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	res, err := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "nul@example.com", Items: []stripesim.ItemParams{{Price: world.Price("App", 1000, "")}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := world.Stripe.SetSubscriptionMetadata(res.Subscription, map[string]string{"note": "a\x00b"}); err != nil {
		t.Fatal(err)
	}
	evs := world.Stripe.Events()
	id := evs[len(evs)-1].ID // the metadata change
	vars := env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
	var out bytes.Buffer
	if err := run(ctx, []string{"replay", id}, vars, &out, io.Discard, nil); err != nil || !strings.Contains(out.String(), "queued it") {
		t.Fatalf("replay %s: got %q, %v; want it fetched and queued", id, out.String(), err)
	}
	var note string
	if err := pool.QueryRow(ctx, `SELECT payload->'data'->'object'->'metadata'->>'note' FROM stripe_events WHERE id = $1`, id).Scan(&note); err != nil || note != "a\uFFFDb" {
		t.Fatalf("got note %q (%v), want a\\uFFFDb", note, err)
	}
}
