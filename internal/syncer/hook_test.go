package syncer_test

import (
	"context"
	"testing"

	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// KeyCreated is told of each key a Sync creates, once, and only after the key's
// create_key audit row is committed: the e-mail of new keys reads that row.
func TestKeyCreatedHookFollowsTheCommittedAuditRow(t *testing.T) {
	t.Parallel()
	var sub string
	var calls, rowsSeen int
	var e *env
	e = setup(t, func(o *syncer.Options) {
		o.KeyCreated = func(ctx context.Context) {
			calls++
			// Another connection than the Sync's: it sees only what is committed.
			rows, err := e.store.AuditFor(ctx, sub)
			if err != nil {
				t.Errorf("audit: %v", err)
			}
			for _, r := range rows {
				if r.Action == "create_key" && r.Outcome == "applied" && r.LicenseKey != nil {
					rowsSeen++
				}
			}
		}
	})
	res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	if err != nil {
		t.Fatal(err)
	}
	sub = res.Subscription
	e.sync(t, sub)
	if calls != 1 || rowsSeen != 1 {
		t.Fatalf("after the key's creation: got %d calls seeing %d committed create_key rows, want 1 and 1", calls, rowsSeen)
	}
	e.sync(t, sub)
	if calls != 1 {
		t.Fatalf("a Sync that created no key called KeyCreated: %d calls, want 1", calls)
	}
}
