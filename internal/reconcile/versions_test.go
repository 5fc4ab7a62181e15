package reconcile_test

import (
	"context"
	"testing"

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
		_ = h.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE api_version = '2025-03-31.basil'),
			count(*) FILTER (WHERE status NOT IN ('processed', 'ignored')) FROM stripe_events WHERE source = $1`, source).Scan(&basil, &open)
		if basil == 0 || open != 0 {
			t.Fatalf("%s: got %d basil events and %d not processed, want some and none", source, basil, open)
		}
	}
	h.assertPolicy(t)
}
