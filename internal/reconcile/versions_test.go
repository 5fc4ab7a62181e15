package reconcile_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// The sandbox run: an account whose default API version is 2025-03-31.basil,
// so that webhooks and the Events API both carry basil events, with 30% of webhooks
// lost. The webhooks that arrive are accepted and worked from the objects read at
// 2023-10-16; the catch-up brings in the rest; every key is right at the end.
func TestBasilEventsWithDroppedWebhooksAfterCatchUp(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 0.3)
	if err := h.w.Stripe.SetAccountAPIVersion(stripesim.VersionBasil); err != nil {
		t.Fatal(err)
	}
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
	st := h.endpoint.Stats()
	if st.Dropped == 0 || inserted == 0 || st.Failed != 0 {
		t.Fatalf("dropped %d webhooks, %d deliveries refused, catch-up inserted %d events: want drops, no refusals, and a catch-up",
			st.Dropped, st.Failed, inserted)
	}
	// Both sources carried basil events, and every one was worked.
	for _, source := range []string{"webhook", "events_api"} {
		var basil, open int
		if err := h.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE api_version = '2025-03-31.basil'),
			count(*) FILTER (WHERE status NOT IN ('processed', 'ignored')) FROM stripe_events WHERE source = $1`, source).Scan(&basil, &open); err != nil {
			t.Fatal(err)
		}
		if basil == 0 || open != 0 {
			t.Fatalf("%s: got %d basil events and %d not processed, want some and none", source, basil, open)
		}
	}
	h.assertPolicy(t)
}

// Events the Events API lists from live mode (keysync holds a test key here) or from a
// connected account are stored ignored with the reason by the catch-up, as the
// webhook stores them, and never reach a Sync.
func TestCatchUpRefusesOtherModeAndConnectedAccounts(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 0)
	ctx := context.Background()
	if _, err := h.catchUp.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := h.w.Stripe.Checkout(stripesim.CheckoutParams{Email: "m@example.com", Items: []stripesim.ItemParams{{Price: h.pro}}})
	if err != nil {
		t.Fatal(err)
	}
	h.idle(t)
	s, _ := h.w.Stripe.Subscription(res.Subscription)
	// Types the endpoint does not receive, so that the catch-up alone brings them in.
	live, err := h.w.Stripe.InjectEvent("invoice.payment_succeeded", s.LatestInvoice, stripesim.InjectOptions{Livemode: true})
	if err != nil {
		t.Fatal(err)
	}
	connect, err := h.w.Stripe.InjectEvent("customer.subscription.paused", res.Subscription, stripesim.InjectOptions{Account: "acct_1Connected"})
	if err != nil {
		t.Fatal(err)
	}
	own, err := h.w.Stripe.InjectEvent("invoice.payment_succeeded", s.LatestInvoice, stripesim.InjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h.w.Stripe.Advance(2 * time.Minute) // past the catch-up's overlap
	if _, err := h.catchUp.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 30*time.Second, "keysync to be idle", func() bool {
		n, err := jobs.NewTables(h.pool).Unfinished(ctx)
		return err == nil && n == 0
	})
	tests := map[string]struct {
		id, status, inError string
	}{
		"live-mode event":   {live, "ignored", "live-mode event"},
		"connected account": {connect, "ignored", "acct_1Connected"},
		"own mode":          {own, "processed", ""},
	}
	for name, tc := range tests {
		var status, source, lastError string
		var jobsFor, audits int
		err := h.pool.QueryRow(ctx, `SELECT status, source, coalesce(last_error, ''),
			(SELECT count(*) FROM river_job WHERE args->>'event_id' = $1 OR args->>'cause_id' = $1),
			(SELECT count(*) FROM audit_log WHERE cause_id = $1)
			FROM stripe_events WHERE id = $1`, tc.id).Scan(&status, &source, &lastError, &jobsFor, &audits)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if status != tc.status || source != "events_api" || (tc.inError != "" && !strings.Contains(lastError, tc.inError)) {
			t.Errorf("%s: got %s from %s (%q), want %s from events_api with %q", name, status, source, lastError, tc.status, tc.inError)
		}
		if tc.status == "ignored" && (jobsFor != 0 || audits != 0) {
			t.Errorf("%s: got %d jobs and %d audit rows, want neither", name, jobsFor, audits)
		}
		// The count above must be able to see a job: the event keysync accepts has one.
		if tc.status == "processed" && jobsFor == 0 {
			t.Errorf("%s: got no job, want the event's job (the job query matches nothing)", name)
		}
	}
}
