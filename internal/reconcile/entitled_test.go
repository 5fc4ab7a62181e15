package reconcile_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/reconcile"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// The sweep judges keys by entitled-through, as the Sync does: once synced, an invoiced
// (send_invoice), a paused-collection, a metered-only and a trial-moved subscription
// show no drift, though none is paid through its current period. A key left short (at
// paid-through + 5 days, what judging by paid-through alone gives) is drift the sweep
// finds and the Sync fixes; so is an expiry block keysync saw and could not lift yet.
func TestSweepJudgesByEntitledThrough(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 0)
	ctx := context.Background()
	sim := h.w.Stripe
	prod := sim.CreateProduct("API", map[string]string{"skm_product_id": "1001"})
	usage, err := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 2, UsageType: "metered", Metadata: map[string]string{"skm": `{"F1":true}`}})
	if err != nil {
		t.Fatal(err)
	}
	start := sim.Now()

	// Four subscriptions Stripe grants the current period without a paid invoice, and a
	// card-charged one for the expiry block.
	inv, err := sim.CreateSubscription(stripesim.SubscriptionParams{Email: "net30@example.com", Items: []stripesim.ItemParams{{Price: h.pro}},
		CollectionMethod: stripesim.SendInvoice, DaysUntilDue: 30})
	if err != nil {
		t.Fatal(err)
	}
	checkout := func(price string, trial int) string {
		t.Helper()
		res, err := sim.Checkout(stripesim.CheckoutParams{Email: "s@example.com", Items: []stripesim.ItemParams{{Price: price}}, TrialDays: trial})
		if err != nil {
			t.Fatal(err)
		}
		return res.Subscription
	}
	subs := map[string]string{"invoiced": inv.Subscription, "paused": checkout(h.pro, 0), "metered": checkout(usage, 0),
		"trial moved": checkout(h.pro, 14), "expiry block": checkout(h.pro, 0)}
	for _, sub := range subs {
		h.subs = append(h.subs, sub)
	}
	if err := sim.SetPauseCollection(subs["paused"], stripesim.PauseVoid, time.Time{}); err != nil {
		t.Fatal(err)
	}
	h.idle(t)
	trialEnd := start.Add(60 * 24 * time.Hour).Truncate(time.Second)
	if err := sim.ExtendTrial(subs["trial moved"], trialEnd); err != nil {
		t.Fatal(err)
	}

	// Into the next period: the invoice paid on time and the next one sent, collection
	// still paused, usage billed; the trial goes on.
	sim.Advance(20 * 24 * time.Hour)
	if s, _ := sim.Subscription(subs["invoiced"]); sim.PayInvoice(s.LatestInvoice) != nil {
		t.Fatal("could not pay the first invoice")
	}
	s, _ := sim.Subscription(subs["metered"])
	if err := sim.ReportUsage(s.Items[0].ID, 40); err != nil {
		t.Fatal(err)
	}
	s, _ = sim.Subscription(subs["invoiced"])
	sim.Advance(time.Unix(s.CurrentPeriodEnd, 0).Sub(sim.Now()) + 2*time.Hour)
	h.idle(t)

	// Each key runs through its current period + 5 days; the sweep agrees.
	keyOf := func(sub string) cryptolenssim.Key {
		t.Helper()
		for _, k := range h.w.Crypto.Keys(simtest.Product) {
			if k.Notes == syncer.Marker(sub) {
				return k
			}
		}
		t.Fatalf("%s: no key", sub)
		return cryptolenssim.Key{}
	}
	wantKeys := func(step string) {
		t.Helper()
		for name, sub := range subs {
			s, _ := sim.Subscription(sub)
			want := time.Unix(s.CurrentPeriodEnd, 0).UTC().AddDate(0, 0, 5)
			if k := keyOf(sub); k.Block || k.Expires.Before(want) || k.Expires.Sub(want) >= 24*time.Hour {
				t.Fatalf("%s: %s (%s): key expires %s (blocked %v), want %s", step, name, s.Status, k.Expires, k.Block, want)
			}
		}
	}
	wantKeys("synced")
	if s, _ := sim.Subscription(subs["trial moved"]); s.CurrentPeriodEnd != trialEnd.Unix() {
		t.Fatalf("trial moved: period ends %d, want the moved trial end %d", s.CurrentPeriodEnd, trialEnd.Unix())
	}
	sum, err := h.sweeper.RunOnce(ctx)
	if err != nil || len(sum.Drifted) != 0 {
		t.Fatalf("sweep of synced keys: got drift %+v, %v; want none", sum.Drifted, err)
	}

	// Keys left short, and an expiry block keysync saw but did not lift: drift.
	short := map[string]time.Time{"trial moved": start.AddDate(0, 0, 14+5)}
	for _, name := range []string{"invoiced", "paused", "metered"} {
		s, _ := sim.Subscription(subs[name])
		short[name] = time.Unix(s.CurrentPeriodStart, 0).UTC().AddDate(0, 0, 5)
	}
	for name, exp := range short {
		h.w.Crypto.EditKey(simtest.Product, keyOf(subs[name]).Key, func(k *cryptolenssim.Key) { k.Expires = exp })
	}
	h.w.Crypto.EditKey(simtest.Product, keyOf(subs["expiry block"]).Key, func(k *cryptolenssim.Key) { k.Block, k.AutoBlocked = true, true })
	if _, err := h.pool.Exec(ctx, `UPDATE subscriptions SET expiry_block_seen = true WHERE id = $1`, subs["expiry block"]); err != nil {
		t.Fatal(err)
	}
	sum, err = h.sweeper.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, sub := range subs {
		want := "extend"
		if name == "expiry block" {
			want = "unblock"
		}
		i := slices.IndexFunc(sum.Drifted, func(d reconcile.Drift) bool { return d.Subscription == sub })
		if i < 0 || !strings.Contains(sum.Drifted[i].Reason, want) {
			t.Errorf("%s: got drift %+v, want %s", name, sum.Drifted, want)
		}
	}
	if len(sum.Drifted) != len(subs) {
		t.Fatalf("got %d drifted, want %d: %+v", len(sum.Drifted), len(subs), sum.Drifted)
	}
	h.idle(t)
	wantKeys("fixed")
	if again, err := h.sweeper.RunOnce(ctx); err != nil || len(again.Drifted) != 0 {
		t.Fatalf("sweep after the fixes: got %+v, %v; want no drift", again.Drifted, err)
	}
}
