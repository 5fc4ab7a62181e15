package reconcile_test

import (
	"context"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// An event whose payload jsonb refuses as listed (a NUL in metadata) is stored by the
// catch-up as the webhook stores it, NUL replaced: before, the catch-up failed on it at
// every run and its cursor never moved again.
func TestCatchUpGetsPastANul(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1) // every webhook dropped: the catch-up is the only way in
	ctx := context.Background()
	if _, err := h.catchUp.RunOnce(ctx); err != nil { // sets the cursor
		t.Fatal(err)
	}
	res, err := h.w.Stripe.Checkout(stripesim.CheckoutParams{Email: "nul@example.com", Items: []stripesim.ItemParams{{Price: h.pro}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.w.Stripe.SetSubscriptionMetadata(res.Subscription, map[string]string{"note": "a\x00b"}); err != nil {
		t.Fatal(err)
	}
	sum, err := h.catchUp.RunOnce(ctx)
	if err != nil || sum.Inserted == 0 || sum.Refused != 0 {
		t.Fatalf("got %+v, %v; want the events inserted, the NUL one among them", sum, err)
	}
	var stored int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE source = 'events_api'
		AND payload->'data'->'object'->'metadata'->>'note' = 'a'||chr(65533)||'b'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored == 0 {
		t.Fatalf("got %d events with the NUL replaced by U+FFFD, want the metadata change's", stored)
	}

	// The cursor moved past it: the next change is caught up.
	h.w.Stripe.Advance(time.Hour)
	if err := h.w.Stripe.SetSubscriptionMetadata(res.Subscription, map[string]string{"note": "fine"}); err != nil {
		t.Fatal(err)
	}
	next, err := h.catchUp.RunOnce(ctx)
	if err != nil || next.Inserted == 0 || !next.Cursor.After(sum.Cursor) {
		t.Fatalf("got %+v, %v after %+v; want the new events inserted and the cursor moved on", next, err, sum)
	}
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE payload->'data'->'object'->'metadata'->>'note' = 'fine'`).Scan(&stored); err != nil || stored == 0 {
		t.Fatalf("got %d events of the later change (%v), want it stored", stored, err)
	}
}

// Events that are no Stripe events keysync may store (here created before Stripe
// existed, as a simulator whose clock starts in 2010 makes them) are passed over and
// counted, not retried at every run: the catch-up moves on.
func TestCatchUpPassesOverInvalidEvents(t *testing.T) {
	t.Parallel()
	h := newHarnessAt(t, 1, time.Date(2010, 6, 1, 0, 0, 0, 0, time.UTC))
	ctx := context.Background()
	if _, err := h.catchUp.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.w.Stripe.Checkout(stripesim.CheckoutParams{Email: "old@example.com", Items: []stripesim.ItemParams{{Price: h.pro}}}); err != nil {
		t.Fatal(err)
	}
	sum, err := h.catchUp.RunOnce(ctx)
	if err != nil || sum.Listed == 0 || sum.Refused != sum.Listed || sum.Inserted != 0 {
		t.Fatalf("got %+v, %v; want every listed event refused and passed over", sum, err)
	}
	var stored, failed int
	if err := h.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM stripe_events),
		(SELECT failed FROM sync_runs WHERE kind = 'catch_up' ORDER BY id DESC LIMIT 1)`).Scan(&stored, &failed); err != nil {
		t.Fatal(err)
	}
	if stored != 0 || failed != sum.Refused {
		t.Fatalf("got %d events stored and %d failed in the run's record, want 0 and %d", stored, failed, sum.Refused)
	}
}
