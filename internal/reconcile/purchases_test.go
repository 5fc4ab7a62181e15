package reconcile_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// lifetime adds a one-time price mapped to the world's product (skm metadata).
func (h *harness) lifetime(t *testing.T) string {
	t.Helper()
	prod := h.w.Stripe.CreateProduct("Lifetime", map[string]string{"skm_product_id": "1001"})
	price, err := h.w.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 19900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F2":true}`}})
	if err != nil {
		t.Fatal(err)
	}
	return price
}

// purchaseKeys returns the keys whose Notes carry the purchase's marker.
func (h *harness) purchaseKeys(purchase string) []cryptolenssim.Key {
	var out []cryptolenssim.Key
	for _, k := range h.w.Crypto.Keys(simtest.Product) {
		if k.Notes == syncer.Marker(purchase) {
			out = append(out, k)
		}
	}
	return out
}

// Every webhook lost: the sweep finds the purchases of its window that keysync never
// saw (a Checkout payment, an invoice of no subscription) and, on a later sweep, the one
// whose delayed payment settled meanwhile. A purchase made before the window is left to
// the catch-up. The cursor moves with each sweep.
func TestSweepFindsPurchasesWhoseWebhooksWereLost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	ctx := context.Background()
	if _, err := h.catchUp.RunOnce(ctx); err != nil { // sets the catch-up's cursor
		t.Fatal(err)
	}
	price := h.lifetime(t)
	sim := h.w.Stripe
	old, err := sim.CheckoutPayment(stripesim.PaymentParams{Email: "old@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil {
		t.Fatal(err)
	}
	sim.Advance(3 * 24 * time.Hour) // the first sweep looks one day back
	card, _ := sim.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	oneOff, _ := sim.CreateInvoice(stripesim.InvoiceParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	async, _ := sim.CheckoutPayment(stripesim.PaymentParams{Email: "c@example.com", Items: []stripesim.ItemParams{{Price: price}}, Async: true})
	sub, _ := sim.Checkout(stripesim.CheckoutParams{Email: "d@example.com", Items: []stripesim.ItemParams{{Price: h.pro}}})
	h.idle(t)
	if n := len(h.w.Crypto.Keys(simtest.Product)); n != 0 {
		t.Fatalf("got %d keys with every webhook lost, want none yet", n)
	}

	sum, err := h.sweeper.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	drifted := map[string]string{}
	for _, d := range sum.Drifted {
		drifted[d.ID()] = d.Reason
	}
	for _, id := range []string{card.Session, oneOff.Invoice, async.Session} {
		if drifted[id] != "purchase not recorded" {
			t.Errorf("%s: got drift %q, want \"purchase not recorded\"", id, drifted[id])
		}
	}
	if _, ok := drifted[old.Session]; ok || sum.Purchases != 3 {
		t.Errorf("got %d purchases scanned and drift %v: want the three of the window, not the one made before it", sum.Purchases, drifted)
	}
	if _, ok := drifted[sub.Session]; ok {
		t.Error("a subscription's Checkout Session drifted as a purchase")
	}
	h.idle(t)
	for _, id := range []string{card.Session, oneOff.Invoice} {
		if n := len(h.purchaseKeys(id)); n != 1 {
			t.Fatalf("%s: got %d keys after the sweep, want 1", id, n)
		}
	}
	if n := len(h.purchaseKeys(async.Session)); n != 0 {
		t.Fatalf("the processing payment got %d keys, want none", n)
	}
	runs, _ := h.store.Runs(ctx, "sweep")
	if len(runs) != 1 || runs[0].Cursor == nil || *runs[0].Cursor != strconv.FormatInt(sim.Now().Unix(), 10) {
		t.Fatalf("sync_runs: got %+v, want the sweep's start as its cursor", runs)
	}

	// The delayed payment settles, its webhook lost too: the next sweep re-syncs it
	// because keysync recorded it unsettled, and then all is settled.
	if err := sim.SettleAsyncPayment(async.Session, true); err != nil {
		t.Fatal(err)
	}
	h.idle(t)
	sim.Advance(2 * time.Hour)
	sum, err = h.sweeper.RunOnce(ctx)
	if err != nil || len(sum.Drifted) != 1 || sum.Drifted[0].Purchase != async.Session || sum.Drifted[0].Reason != "purchase not settled" {
		t.Fatalf("second sweep: got %+v, %v; want the settled payment", sum.Drifted, err)
	}
	h.idle(t)
	if n := len(h.purchaseKeys(async.Session)); n != 1 {
		t.Fatalf("the settled payment got %d keys, want 1", n)
	}
	if again, err := h.sweeper.RunOnce(ctx); err != nil || len(again.Drifted) != 0 {
		t.Fatalf("third sweep: got %+v, %v; want nothing left", again.Drifted, err)
	}

	// The purchase made before the window: the catch-up brings its events.
	if _, err := h.catchUp.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	h.idle(t)
	if n := len(h.purchaseKeys(old.Session)); n != 1 {
		t.Fatalf("the purchase before the window: got %d keys after the catch-up, want 1", n)
	}
	if n := h.w.Crypto.AppliedCount(cryptolenssim.CreateKey); n != 5 {
		t.Fatalf("got %d keys created, want 5 (four purchases, the subscription)", n)
	}
}

// Every webhook lost: the catch-up's events bring a Checkout payment, an invoice of no
// subscription and a delayed payment's settlement to their keys, once each.
func TestCatchUpFindsPurchasesWhoseWebhooksWereLost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	ctx := context.Background()
	if _, err := h.catchUp.RunOnce(ctx); err != nil { // sets the cursor
		t.Fatal(err)
	}
	price := h.lifetime(t)
	sim := h.w.Stripe
	card, _ := sim.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}, InvoiceCreation: true})
	oneOff, _ := sim.CreateInvoice(stripesim.InvoiceParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	async, _ := sim.CheckoutPayment(stripesim.PaymentParams{Email: "c@example.com", Items: []stripesim.ItemParams{{Price: price}}, Async: true})
	if err := sim.SettleAsyncPayment(async.Session, true); err != nil {
		t.Fatal(err)
	}
	sim.Advance(5 * time.Minute)
	for range 2 { // a second catch-up adds nothing
		if _, err := h.catchUp.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		h.idle(t)
	}
	for _, id := range []string{card.Session, oneOff.Invoice, async.Session} {
		if n := len(h.purchaseKeys(id)); n != 1 {
			t.Errorf("%s: got %d keys, want 1", id, n)
		}
	}
	if n := h.w.Crypto.AppliedCount(cryptolenssim.CreateKey); n != 3 {
		t.Fatalf("got %d keys created, want 3 (the post-payment invoice is the session's)", n)
	}
}
