package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// keysync serve on an account whose events come in 2025-03-31.basil: a basil webhook
// is accepted and its key made from the objects read at 2023-10-16. Events from live
// mode (the key is a test key) and from a connected account are answered 200, stored
// ignored, counted in /metrics and never reach a key.
func TestServeEventsOfAnyVersionModeAndAccount(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	if err := world.Stripe.SetAccountAPIVersion(stripesim.VersionBasil); err != nil {
		t.Fatal(err)
	}
	price := world.Price("App", 1000, `{"F3":true}`)
	const secret = "whsec_events_test_secret"
	vars := env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"STRIPE_WEBHOOK_SECRETS": secret, "CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL,
		"KEYSYNC_LISTEN": "127.0.0.1:0", "LOG_FORMAT": "json", "LOG_LEVEL": "warn"})
	srv := startServe(t, vars)
	defer func() {
		if err := srv.stop(); err != nil {
			t.Error(err)
		}
	}()
	base, logs := srv.base, srv.logs
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// The catch-up at start has run: from here on, the webhooks below are the only way
	// the events arrive (the next catch-up is minutes away).
	pgtest.WaitFor(t, 20*time.Second, "the catch-up at start", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM sync_runs WHERE kind = 'catch_up' AND finished_at IS NOT NULL`).Scan(&n)
		return n > 0
	})

	res, err := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil {
		t.Fatal(err)
	}
	live, _ := world.Stripe.InjectEvent("customer.subscription.created", res.Subscription, stripesim.InjectOptions{Livemode: true})
	connect, _ := world.Stripe.InjectEvent("customer.subscription.created", res.Subscription, stripesim.InjectOptions{Account: "acct_1Other"})
	payloads := map[string][]byte{}
	var paid string
	for _, ev := range world.Stripe.Events() {
		payloads[ev.ID] = ev.Payload
		if ev.Type == "invoice.paid" && ev.APIVersion == stripesim.VersionBasil {
			paid = ev.ID
		}
	}
	post := func(id string) {
		t.Helper()
		body := payloads[id]
		sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret})
		req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", sig.Header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: got %d, want 200", id, resp.StatusCode)
		}
	}

	// The refused events first: had either reached a Sync, the key would exist already.
	post(live)
	post(connect)
	for _, id := range []string{live, connect} {
		var status string
		var jobs int
		_ = pool.QueryRow(ctx, `SELECT status, (SELECT count(*) FROM river_job WHERE args->>'event_id' = $1) FROM stripe_events WHERE id = $1`,
			id).Scan(&status, &jobs)
		if status != "ignored" || jobs != 0 {
			t.Fatalf("%s: got status %q and %d jobs, want ignored and none", id, status, jobs)
		}
	}
	if keys := world.Crypto.Keys(simtest.Product); len(keys) != 0 {
		t.Fatalf("got %d keys after the refused events, want none", len(keys))
	}

	// The basil invoice.paid makes the key.
	post(paid)
	pgtest.WaitFor(t, 20*time.Second, "the key from the basil event", func() bool {
		keys := world.Crypto.Keys(simtest.Product)
		return len(keys) == 1 && keys[0].Notes == syncer.Marker(res.Subscription) && keys[0].Features[2]
	})
	_, metrics := get(t, srv.admin+"/metrics")
	for _, want := range []string{
		`keysync_events_refused_total{reason="connected_account"} 1`,
		`keysync_events_refused_total{reason="livemode_mismatch"} 1`,
		`keysync_webhooks_total{outcome="ignored",type="customer.subscription.created"} 2`,
		`keysync_webhooks_total{outcome="stored",type="invoice.paid"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if n := strings.Count(logs.String(), "event refused"); n != 2 {
		t.Errorf("got %d refusal log lines, want one per reason (2):\n%s", n, logs)
	}
}
