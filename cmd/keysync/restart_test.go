package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// A new user: subscriptions were bought, renewed in trial and cancelled over the six
// hours before keysync was first deployed, and every webhook was lost (polling mode:
// there is no endpoint at all). The first catch-up looks back an hour, so only the
// sweep at start can find them: every live subscription gets its key without waiting
// for KEYSYNC_RECONCILE_INTERVAL (an hour), and the cancelled one gets none.
func TestServeNewInstallSweepsAtStart(t *testing.T) {
	t.Parallel()
	world := simtest.New(t, simtest.Options{Start: time.Now().Add(-6 * time.Hour)})
	price := world.Price("App", 1000, `{"F3":true}`)
	checkout := func(p stripesim.CheckoutParams) string {
		t.Helper()
		p.Email, p.Items[0].Price = "new@example.com", price
		res, err := world.Stripe.Checkout(p)
		if err != nil || !res.Completed {
			t.Fatalf("checkout: %v %+v", err, res)
		}
		return res.Subscription
	}
	want := []string{
		checkout(stripesim.CheckoutParams{Items: []stripesim.ItemParams{{}}}),
		checkout(stripesim.CheckoutParams{Items: []stripesim.ItemParams{{}}, TrialDays: 14}),
		checkout(stripesim.CheckoutParams{Items: []stripesim.ItemParams{{Quantity: 3}}}),
	}
	world.Stripe.Advance(3 * time.Hour)
	gone := checkout(stripesim.CheckoutParams{Items: []stripesim.ItemParams{{}}})
	world.Stripe.Advance(30 * time.Minute)
	if err := world.Stripe.CancelNow(gone); err != nil {
		t.Fatal(err)
	}
	world.Stripe.Advance(30 * time.Minute)
	want = append(want, checkout(stripesim.CheckoutParams{Items: []stripesim.ItemParams{{}}}))
	world.Stripe.Advance(2 * time.Hour) // the simulators' clock reaches the present: keysync starts

	vars := env(map[string]string{"DATABASE_URL": pgtest.URL(t), "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_LISTEN": "127.0.0.1:0",
		"LOG_FORMAT": "json", "LOG_LEVEL": "warn"})
	srv := startServe(t, vars)
	base := srv.base

	pgtest.WaitFor(t, 30*time.Second, "a key for every live subscription", func() bool {
		return len(world.Crypto.Keys(simtest.Product)) >= len(want)
	})
	keys := map[string]bool{}
	for _, k := range world.Crypto.Keys(simtest.Product) {
		if keys[k.Notes] || !k.Features[2] || !k.Expires.After(world.Stripe.Now()) {
			t.Fatalf("got key %+v, want one unexpired key per subscription with F3", k)
		}
		keys[k.Notes] = true
	}
	for _, sub := range want {
		if !keys[syncer.Marker(sub)] {
			t.Fatalf("subscription %s has no key; keys: %v", sub, keys)
		}
	}
	if keys[syncer.Marker(gone)] || len(keys) != len(want) {
		t.Fatalf("got keys %v, want only those of %v", keys, want)
	}

	// The sweep that found them is on record: not overdue.
	pgtest.WaitFor(t, 30*time.Second, "the sweep on record", func() bool {
		_, body := get(t, base+"/readyz")
		var ready map[string]string
		return json.Unmarshal([]byte(body), &ready) == nil && ready["last_sweep_age"] != "none completed" && ready["sweep_overdue"] == "false"
	})
	if _, m := get(t, srv.admin+"/metrics"); !strings.Contains(m, "keysync_sweep_overdue 0") || !strings.Contains(m, "keysync_last_sweep_age_seconds ") {
		t.Fatalf("/metrics lacks the sweep's age:\n%s", m)
	}
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
}
