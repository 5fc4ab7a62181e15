package syncer_test

import (
	"context"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// auditOf returns the subscription's audit rows of one action, oldest first.
func (e *env) auditOf(t *testing.T, sub, action string) []postgres.AuditEntry {
	t.Helper()
	audit, err := e.store.AuditFor(context.Background(), sub)
	if err != nil {
		t.Fatal(err)
	}
	var out []postgres.AuditEntry
	for _, a := range audit {
		if a.Action == action {
			out = append(out, a)
		}
	}
	return out
}

// metadataWrites counts the subscription updates keysync sent to Stripe.
func (e *env) metadataWrites() int { return e.stripe.Requests()["POST /v1/subscriptions/{id}"] }

// An SKGL product gives a key a new string when ExtendLicense or a feature change
// alters it, and answers the new string in message. keysync follows it: the mapping,
// the Stripe metadata and the audit name the new string, and the next action of the
// same Sync already uses it.
func TestFollowsSKGLKeyChanges(t *testing.T) {
	t.Parallel()
	e := setupWorld(t, pgtest.Pool(t), simtest.Options{SKGL: true})
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	sub := res.Subscription
	e.sync(t, sub)
	first := e.key(t, sub).Key

	// A renewal and an upgrade in one Sync: extend, then add F3 (each gives a new
	// string), then the machine limit, all on the string of the moment.
	e.stripe.Advance(31 * 24 * time.Hour)
	if err := e.stripe.ChangePrice(sub, e.team, stripesim.ChangeOptions{}); err != nil {
		t.Fatal(err)
	}
	r := e.sync(t, sub)
	k := e.key(t, sub) // by the recorded string
	if k.Key == first || r.Key != k.Key {
		t.Fatalf("recorded key %s (result %s), want a new string after the extension", k.Key, r.Key)
	}
	if _, ok := e.crypto.Key(product, first); ok {
		t.Fatal("the old string still names a key: the simulator made no SKGL change")
	}
	if k.Features != [8]bool{true, false, true} || k.MaxNoOfMachines != 5 {
		t.Fatalf("after the upgrade: got %+v", k)
	}
	e.wantExpiry(t, sub, "renewal")
	if s, _ := e.stripe.Subscription(sub); s.Metadata[syncer.KeyMetadata] != k.Key {
		t.Fatalf("cryptolens_key metadata: got %q, want %q", s.Metadata[syncer.KeyMetadata], k.Key)
	}
	changes := e.auditOf(t, sub, "adopt_key")
	if len(changes) != 2 {
		t.Fatalf("got %d adopt_key rows, want 2 (extend, add_feature)", len(changes))
	}
	old := first
	for _, c := range changes {
		if c.Params["source"] != "skgl key change" || c.Params["old_key"] != old || c.LicenseKey == nil || c.Params["new_key"] != *c.LicenseKey {
			t.Fatalf("got %+v, want an skgl key change from %s", c.Params, old)
		}
		old = *c.LicenseKey
	}
	if old != k.Key {
		t.Fatalf("the last change names %s, want the key's string %s", old, k.Key)
	}
	for _, a := range e.auditOf(t, sub, "error") {
		t.Fatalf("audited an error: %+v", a)
	}

	// The next Sync finds the key by its recorded string and has nothing to do.
	if r := e.sync(t, sub); len(r.Actions) != 0 || r.Key != k.Key {
		t.Fatalf("got %+v on %s, want nothing to do on %s", r.Actions, r.Key, k.Key)
	}
}

// With the Stripe metadata write switched off, an SKGL change still moves the mapping.
func TestFollowsSKGLKeyChangesWithoutMetadata(t *testing.T) {
	t.Parallel()
	e := setupWorld(t, pgtest.Pool(t), simtest.Options{SKGL: true}, func(o *syncer.Options) { o.WriteStripeMetadata = false })
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	e.sync(t, res.Subscription)
	e.stripe.Advance(31 * 24 * time.Hour)
	e.sync(t, res.Subscription)
	e.wantExpiry(t, res.Subscription, "renewal")
	if n := e.metadataWrites(); n != 0 {
		t.Fatalf("got %d metadata writes with the write switched off", n)
	}
}
