package reconcile_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/reconcile"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// An API key that may not read Checkout Sessions (Stripe answers 403) must not stop the
// sweep: the subscriptions are swept and repaired all the same, the run reports the
// purchases' failure, and the purchases' cursor does not move, so the next sweep looks
// at the same window again.
func TestSweepGoesOnWhenPurchasesCannotBeListed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1) // every webhook lost
	ctx := context.Background()
	sub, err := h.w.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: h.pro}}})
	if err != nil {
		t.Fatal(err)
	}
	h.idle(t)

	// Stripe as a restricted key without the Checkout permission sees it.
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/checkout/sessions") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"error":{"type":"invalid_request_error","message":"The provided key does not have the required permissions for this endpoint."}}`)
			return
		}
		h.w.Stripe.ServeHTTP(w, r)
	}))
	defer front.Close()
	sc, err := stripeapi.New(stripeapi.Config{APIKey: simtest.StripeKey, BaseURL: front.URL, RateLimit: 1000, Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	sweeper := reconcile.NewSweeper(sc, h.crypto, h.store, h.sweeperOpts, zerolog.Nop())

	sum, err := sweeper.RunOnce(ctx)
	if err == nil || !strings.Contains(err.Error(), "one-time purchases") {
		t.Fatalf("got %v, want the sweep to report the purchases it could not list", err)
	}
	drifted := false
	for _, d := range sum.Drifted {
		drifted = drifted || d.Subscription == sub.Subscription
	}
	if !drifted || sum.Scanned != 1 {
		t.Fatalf("got %d subscriptions scanned, drift %v: want the subscription swept despite the purchases' failure", sum.Scanned, sum.Drifted)
	}
	h.idle(t)
	row, err := h.store.GetSubscription(ctx, sub.Subscription)
	if err != nil || row.LicenseKey == nil {
		t.Fatalf("got %+v, %v: want the drifted subscription synced to a key", row, err)
	}
	if _, ok, err := h.store.SweepCursor(ctx); err != nil || ok {
		t.Fatalf("got a purchases' cursor (%v, %v) after a sweep that could not list them, want none", ok, err)
	}
}
