package syncer_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
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

// A vendor moving from Cryptolens' hosted Stripe module has live keys that carry no
// Notes marker: the module recorded each on its subscription's metadata as skm_key_id
// (the key's id within the product) or skm_key_globalid. keysync adopts that key rather
// than creating a second one, in the order cryptolens_key, skm_key_id,
// skm_key_globalid, Notes marker.
func TestAdoptsHostedModuleKeys(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		// metadata names the entries the subscription carries; "skm_key_id=none" is an
		// skm_key_id that no key has.
		metadata []string
		// want is the entry whose key is adopted.
		want string
	}{
		"skm_key_id":                          {[]string{"skm_key_id"}, "skm_key_id"},
		"skm_key_globalid, past a full page":  {[]string{"skm_key_globalid"}, "skm_key_globalid"},
		"cryptolens_key before skm_key_id":    {[]string{"cryptolens_key", "skm_key_id"}, "cryptolens_key"},
		"skm_key_id before skm_key_globalid":  {[]string{"skm_key_id", "skm_key_globalid"}, "skm_key_id"},
		"an unknown skm_key_id falls through": {[]string{"skm_key_id=none", "skm_key_globalid"}, "skm_key_globalid"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			put := func(notes string) cryptolenssim.Key {
				k, err := e.crypto.PutKey(cryptolenssim.Key{ProductID: product, Expires: t0.Add(20 * 24 * time.Hour),
					Features: [8]bool{true}, MaxNoOfMachines: 2, Notes: notes})
				if err != nil {
					t.Fatal(err)
				}
				return k
			}
			// Keys the hosted module issued (no marker in their Notes) among more than a
			// page of others, and one the vendor named by hand.
			byID := put("Issued by the Stripe module")
			for range 120 {
				put("")
			}
			byGlobalID, named := put("Issued by the Stripe module"), put("")
			res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
			if err != nil {
				t.Fatal(err)
			}
			put(syncer.Marker(res.Subscription)) // the marker comes last in the order
			entries := map[string]struct {
				name, value string
				key         cryptolenssim.Key
			}{
				"cryptolens_key":   {syncer.KeyMetadata, named.Key, named},
				"skm_key_id":       {"skm_key_id", strconv.FormatInt(byID.ID, 10), byID},
				"skm_key_globalid": {"skm_key_globalid", strconv.FormatInt(byGlobalID.GlobalID, 10), byGlobalID},
				"skm_key_id=none":  {"skm_key_id", "999999", cryptolenssim.Key{}},
			}
			md := map[string]string{}
			for _, m := range tc.metadata {
				md[entries[m].name] = entries[m].value
			}
			if err := e.stripe.SetSubscriptionMetadata(res.Subscription, md); err != nil {
				t.Fatal(err)
			}

			e.sync(t, res.Subscription)
			want := entries[tc.want]
			if got := e.key(t, res.Subscription); got.Key != want.key.Key {
				t.Fatalf("adopted %s (id %d), want %s (id %d)", got.Key, got.ID, want.key.Key, want.key.ID)
			}
			if n := e.crypto.CallCount(cryptolenssim.CreateKey); n != 0 {
				t.Fatalf("got %d keys created, want none: the subscription has a key", n)
			}
			source := "subscription metadata " + want.name
			if want.name != syncer.KeyMetadata {
				source += "=" + want.value
			}
			adopted := e.auditOf(t, res.Subscription, "adopt_key")
			if len(adopted) != 1 || adopted[0].Params["source"] != source {
				t.Fatalf("got adopt_key rows %+v, want one with source %q", adopted, source)
			}
			if s, _ := e.stripe.Subscription(res.Subscription); s.Metadata[syncer.KeyMetadata] != want.key.Key {
				t.Fatalf("cryptolens_key metadata: got %q, want %q", s.Metadata[syncer.KeyMetadata], want.key.Key)
			}
			e.wantExpiry(t, res.Subscription, "adopted")

			// The next Sync uses the recorded key: no search, no second adoption.
			e.crypto.ResetCalls()
			e.sync(t, res.Subscription)
			if n := e.crypto.CallCount(cryptolenssim.GetKeys); n != 0 {
				t.Fatalf("got %d GetKeys calls after adoption, want none", n)
			}
		})
	}
}

// skm_key_id is the key's id within the product, found with the search the module's
// docs name ("Id=<skm_key_id>"): one GetKeys call, not a scan of the product.
func TestHostedKeyIDIsOneSearch(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for range 200 {
		_, _ = e.crypto.PutKey(cryptolenssim.Key{ProductID: product, Expires: t0})
	}
	k, _ := e.crypto.PutKey(cryptolenssim.Key{ProductID: product, Expires: t0.Add(40 * 24 * time.Hour), Features: [8]bool{true}, MaxNoOfMachines: 2})
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}},
		SubscriptionMetadata: map[string]string{"skm_key_id": strconv.FormatInt(k.ID, 10)}})
	e.sync(t, res.Subscription)
	if got := e.key(t, res.Subscription); got.Key != k.Key {
		t.Fatalf("adopted %s, want %s", got.Key, k.Key)
	}
	var searches []string
	for _, c := range e.crypto.Calls() {
		if c.Method == cryptolenssim.GetKeys {
			searches = append(searches, c.Params.Get("searchquery"))
		}
	}
	if want := "id=" + strconv.FormatInt(k.ID, 10); len(searches) != 1 || searches[0] != want {
		t.Fatalf("got GetKeys searches %q, want one: %q", searches, want)
	}
}

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

// Cryptolens may keep dates to the second or as whole days (unverified which). Either
// way no key is ever short of its target, nor a day past it; with seconds no call is
// spent finding out beyond the first key created, and extensions cost no extra read.
func TestWholeOrSecondDays(t *testing.T) {
	t.Parallel()
	for name, whole := range map[string]bool{"seconds": false, "whole days": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setupWorld(t, pgtest.Pool(t), simtest.Options{WholeDays: whole})
			checkout := func() stripesim.CheckoutResult {
				res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			// gets counts the GetKey calls of one Sync.
			gets := func(sub string) int {
				e.crypto.ResetCalls()
				e.sync(t, sub)
				return e.crypto.CallCount(cryptolenssim.GetKey)
			}

			// The first key: whether dates are whole days is found out once.
			a := checkout()
			gets(a.Subscription)
			e.wantExpiry(t, a.Subscription, "first key")
			wantExtends := 0
			if whole {
				wantExtends = 1 // the first key fell short and was extended in the same Sync
			}
			if n := e.crypto.AppliedCount(cryptolenssim.ExtendLicense); n != wantExtends {
				t.Fatalf("first key: got %d extensions, want %d", n, wantExtends)
			}

			// The next key is counted right at once: no read, no extension.
			e.stripe.Advance(7 * time.Hour)
			b := checkout()
			if n := gets(b.Subscription); n != 0 || e.crypto.CallCount(cryptolenssim.ExtendLicense) != 0 {
				t.Fatalf("second key: got %d GetKey and %d ExtendLicense calls, want none", n, e.crypto.CallCount(cryptolenssim.ExtendLicense))
			}
			e.wantExpiry(t, b.Subscription, "second key")

			// Renewals: one read (the key) and one extension each.
			for i := range 3 {
				e.stripe.Advance(31 * 24 * time.Hour)
				for _, sub := range []string{a.Subscription, b.Subscription} {
					if n := gets(sub); n != 1 || e.crypto.AppliedCount(cryptolenssim.ExtendLicense) != 1 {
						t.Fatalf("renewal %d: got %d GetKey and %d extensions, want 1 and 1", i+1, n, e.crypto.AppliedCount(cryptolenssim.ExtendLicense))
					}
					e.wantExpiry(t, sub, fmt.Sprintf("renewal %d", i+1))
				}
			}

			// A key that expired while the card failed is extended from today, which
			// with whole days is today's midnight.
			_ = e.stripe.SetCardDeclines(a.Customer, true)
			e.pastRenewal(t, a.Subscription)
			e.sync(t, a.Subscription)
			e.stripe.Advance(6*24*time.Hour + 5*time.Hour)
			if k := e.key(t, a.Subscription); !k.Expires.Before(e.stripe.Now()) {
				t.Fatalf("the key did not lapse: expires %s", k.Expires)
			}
			_ = e.stripe.SetCardDeclines(a.Customer, false)
			s, _ := e.stripe.Subscription(a.Subscription)
			if err := e.stripe.PayInvoice(s.LatestInvoice); err != nil {
				t.Fatal(err)
			}
			if n := gets(a.Subscription); n != 1 || e.crypto.AppliedCount(cryptolenssim.ExtendLicense) != 1 {
				t.Fatalf("after the lapse: got %d GetKey and %d extensions, want 1 and 1", n, e.crypto.AppliedCount(cryptolenssim.ExtendLicense))
			}
			e.wantExpiry(t, a.Subscription, "after the lapse")
			if k := e.key(t, a.Subscription); k.Block {
				t.Fatal("the expiry block stayed after payment")
			}
		})
	}
}

// Stripe refuses to change a canceled subscription's metadata (in 2023–24, and by the
// simulator's default). keysync adopts the key of a subscription canceled before it
// ever synced, blocks it, and sends no metadata write, then or later.
func TestNoMetadataWriteToCanceled(t *testing.T) {
	t.Parallel()
	tests := map[string]func(e *env, sub string, k cryptolenssim.Key){
		"key found by its marker": func(e *env, sub string, k cryptolenssim.Key) {
			e.crypto.EditKey(product, k.Key, func(k *cryptolenssim.Key) { k.Notes = syncer.Marker(sub) })
		},
		"hosted module key": func(e *env, sub string, k cryptolenssim.Key) {
			_ = e.stripe.SetSubscriptionMetadata(sub, map[string]string{"skm_key_id": strconv.FormatInt(k.ID, 10)})
		},
	}
	for name, link := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
			k, _ := e.crypto.PutKey(cryptolenssim.Key{ProductID: product, Expires: t0.Add(35 * 24 * time.Hour), Features: [8]bool{true}, MaxNoOfMachines: 2})
			link(e, res.Subscription, k)
			if err := e.stripe.CancelNow(res.Subscription); err != nil {
				t.Fatal(err)
			}
			e.sync(t, res.Subscription)
			e.sync(t, res.Subscription)
			if got := e.key(t, res.Subscription); got.Key != k.Key || !got.Block {
				t.Fatalf("got %+v, want %s adopted and blocked", got, k.Key)
			}
			if n := e.metadataWrites(); n != 0 {
				t.Fatalf("got %d subscription updates sent to Stripe, want none for a canceled subscription", n)
			}
		})
	}
}

// A dispute arrives weeks after its charge, after the next renewal was paid: it blocks
// the key (KEYSYNC_ON_DISPUTE=block) though the latest charge is clean, and a won
// dispute lifts keysync's block.
func TestDisputeOnAnEarlierCharge(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	sub := res.Subscription
	e.sync(t, sub)
	e.stripe.Advance(31 * 24 * time.Hour)
	e.sync(t, sub)
	if s, _ := e.stripe.Subscription(sub); s.LatestInvoice == res.Invoice {
		t.Fatal("no renewal invoice")
	}

	charges := e.stripe.Charges(res.Invoice)
	if len(charges) != 1 {
		t.Fatalf("got %d charges on the first invoice, want 1", len(charges))
	}
	dispute, err := e.stripe.Dispute(charges[0].ID, "fraudulent")
	if err != nil {
		t.Fatal(err)
	}
	e.stripe.Advance(20 * 24 * time.Hour)
	e.sync(t, sub)
	if !e.key(t, sub).Block {
		t.Fatal("a dispute on the previous period's charge did not block the key")
	}
	// The charges come expanded with the paid invoices: none is read one by one.
	if n := e.stripe.Requests()["GET /v1/charges/{id}"]; n != 0 {
		t.Fatalf("got %d charge reads, want none", n)
	}

	if err := e.stripe.CloseDispute(dispute, true); err != nil {
		t.Fatal(err)
	}
	e.sync(t, sub)
	if e.key(t, sub).Block {
		t.Fatal("the won dispute did not lift keysync's block")
	}
	e.wantExpiry(t, sub, "after the won dispute")
}

// A refund blocks (KEYSYNC_ON_REFUND=block) only when the latest paid invoice was
// refunded in full: a refund of an earlier period is not a lapse of this one.
func TestRefundOfTheLatestInvoiceOnly(t *testing.T) {
	t.Parallel()
	e := setup(t, func(o *syncer.Options) { o.Policy.BlockOnDispute, o.Policy.BlockOnRefund = false, true })
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	sub := res.Subscription
	e.sync(t, sub)
	e.stripe.Advance(31 * 24 * time.Hour)
	e.sync(t, sub)

	if _, err := e.stripe.Refund(e.stripe.Charges(res.Invoice)[0].ID, 0); err != nil {
		t.Fatal(err)
	}
	e.sync(t, sub)
	if e.key(t, sub).Block {
		t.Fatal("a refund of the previous period blocked the key")
	}
	s, _ := e.stripe.Subscription(sub)
	latest := e.stripe.Charges(s.LatestInvoice)[0].ID
	if _, err := e.stripe.Refund(latest, 100); err != nil { // part of it
		t.Fatal(err)
	}
	e.sync(t, sub)
	if e.key(t, sub).Block {
		t.Fatal("a partial refund of the latest invoice blocked the key")
	}
	if _, err := e.stripe.Refund(latest, 0); err != nil { // the rest
		t.Fatal(err)
	}
	e.sync(t, sub)
	if !e.key(t, sub).Block {
		t.Fatal("a full refund of the latest invoice did not block the key")
	}
}
