package syncer_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// bundle is an env whose addon price maps to a second Cryptolens product (2002, skm
// metadata: F5, one machine), beside pro (1001).
type bundle struct {
	*env
	world *simtest.World
	pool  *pgxpool.Pool
	addon string
}

func setupBundle(t *testing.T) *bundle {
	t.Helper()
	pool := pgtest.Pool(t)
	e := &env{store: postgres.NewStore(pool)}
	w := simtest.New(t, simtest.Options{Start: t0, BlockExpired: true})
	w.Crypto.AddProduct(otherProduct, cryptolenssim.ProductOptions{BlockExpired: true})
	e.stripe, e.crypto = w.Stripe, w.Crypto
	prod := e.stripe.CreateProduct("App", map[string]string{"skm_product_id": "1001"})
	e.pro, _ = e.stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 3000, Metadata: map[string]string{"skm": `{"F1":true,"F3":false,"MaxNoOfMachines":2}`}})
	addon := e.stripe.CreateProduct("Add-on", map[string]string{"skm_product_id": fmt.Sprint(otherProduct)})
	b := &bundle{env: e, world: w, pool: pool}
	b.addon, _ = e.stripe.CreatePrice(stripesim.PriceParams{Product: addon, UnitAmount: 1000, Metadata: map[string]string{"skm": `{"F1":true,"F5":true,"MaxNoOfMachines":1}`}})
	e.syncer = b.newSyncer(t, license.NewMapping(0))
	return b
}

func (b *bundle) newSyncer(t *testing.T, m *license.Mapping) *syncer.Syncer {
	t.Helper()
	sc, cc := b.world.Clients(t)
	return syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: b.store, Mapping: m, Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5, TimeLimitedFeature: 1}, WriteStripeMetadata: true, Now: b.stripe.Now})
}

// keysOf returns the subscription's keys by product, as keysync recorded them.
func (b *bundle) keysOf(t *testing.T, sub string) map[int]cryptolenssim.Key {
	t.Helper()
	recs, err := b.store.SubscriptionKeys(context.Background(), sub)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]cryptolenssim.Key{}
	for _, r := range recs {
		k, ok := b.crypto.Key(r.ProductID, *r.LicenseKey)
		if !ok {
			t.Fatalf("key %s missing in Cryptolens", *r.LicenseKey)
		}
		out[r.ProductID] = k
	}
	return out
}

// A subscription whose items map to two Cryptolens products gets a key in each: its own
// features and machines, the subscription's marker in its own product. Both are
// extended on renewal and blocked on cancellation.
func TestBundleGetsOneKeyPerProduct(t *testing.T) {
	t.Parallel()
	b := setupBundle(t)
	res, err := b.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: b.pro}, {Price: b.addon, Quantity: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	got := b.sync(t, res.Subscription)
	if len(got.Keys) != 2 || got.Keys[0].ProductID != product || got.Keys[1].ProductID != otherProduct || got.Key != got.Keys[0].Key {
		t.Fatalf("got %+v, want a key in 1001, then one in 2002", got)
	}
	keys := b.keysOf(t, res.Subscription)
	if k := keys[product]; k.Features != [8]bool{true} || k.MaxNoOfMachines != 2 || k.Notes != syncer.Marker(res.Subscription) {
		t.Fatalf("1001: got %+v, want F1, 2 machines, the marker", k)
	}
	if k := keys[otherProduct]; k.Features != [8]bool{0: true, 4: true} || k.MaxNoOfMachines != 1 || k.Notes != syncer.Marker(res.Subscription) {
		t.Fatalf("2002: got %+v, want F1 and F5, 1 machine, the marker", k)
	}
	row, _ := b.store.GetSubscription(context.Background(), res.Subscription)
	if *row.ProductID != product || len(row.Bundle) != 1 || row.Bundle[0].ProductID != otherProduct {
		t.Fatalf("row: got %+v, want 1001's key on the row and 2002's in the bundle", row)
	}
	if s, _ := b.stripe.Subscription(res.Subscription); s.Metadata[syncer.KeyMetadata] != keys[product].Key {
		t.Fatalf("metadata: got %q, want the first key", s.Metadata[syncer.KeyMetadata])
	}

	b.pastRenewal(t, res.Subscription)
	b.sync(t, res.Subscription)
	want := b.stripe.PaidThrough(res.Subscription).AddDate(0, 0, 5)
	for p, k := range b.keysOf(t, res.Subscription) {
		if k.Expires.Before(want) || k.Expires.Sub(want) >= 24*time.Hour {
			t.Fatalf("product %d after the renewal: expires %s, want %s", p, k.Expires, want)
		}
	}
	if n := b.crypto.AppliedCount(cryptolenssim.ExtendLicense); n != 2 {
		t.Fatalf("got %d extensions, want one per key", n)
	}

	if err := b.stripe.CancelNow(res.Subscription); err != nil {
		t.Fatal(err)
	}
	b.sync(t, res.Subscription)
	row, _ = b.store.GetSubscription(context.Background(), res.Subscription)
	for p, k := range b.keysOf(t, res.Subscription) {
		if !k.Block {
			t.Fatalf("product %d: not blocked after cancellation", p)
		}
	}
	if !row.BlockedByKeysync || !row.Bundle[0].BlockedByKeysync {
		t.Fatalf("row: got %+v, want both blocks recorded as keysync's", row)
	}
	audit, _ := b.store.AuditFor(context.Background(), res.Subscription)
	blocks := map[int]bool{}
	for _, a := range audit {
		if a.Action == "block" {
			blocks[*a.ProductID] = *a.LicenseKey == keys[*a.ProductID].Key
		}
	}
	if !blocks[product] || !blocks[otherProduct] {
		t.Fatalf("audit: got blocks %v, want one naming each key", blocks)
	}
	if n := b.crypto.AppliedCount(cryptolenssim.CreateKey); n != 2 {
		t.Fatalf("got %d creates, want 2", n)
	}
}

// A subscription that had one product's key today keeps it as it is when a second item
// comes to map to another product (the vendor starts licensing the add-on): the key is
// not re-created, the add-on's key is made beside it. Today's key of a subscription
// whose mapping row was lost is adopted by its marker, not duplicated.
func TestBundleAdoptsTodaysKey(t *testing.T) {
	t.Parallel()
	b := setupBundle(t)
	ctx := context.Background()
	plain := b.stripe.CreateProduct("Add-on, not licensed yet", nil)
	addon, _ := b.stripe.CreatePrice(stripesim.PriceParams{Product: plain, UnitAmount: 1000})
	after, err := license.ParsePlans("plans.yaml", []byte(fmt.Sprintf("plans:\n  - price: %s\n    cryptolens_product: %d\n    features: [5]\n    machines: 1\n",
		addon, otherProduct)), 0)
	if err != nil {
		t.Fatal(err)
	}
	today := b.syncer // the add-on maps to nothing: one key, as keysync made it before bundles
	kept, _ := b.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: b.pro}, {Price: addon}}})
	lost, _ := b.stripe.Checkout(stripesim.CheckoutParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: b.pro}, {Price: addon}}})
	old := map[string]string{}
	for _, sub := range []string{kept.Subscription, lost.Subscription} {
		res, err := today.Sync(ctx, sub, syncer.Cause{Kind: "operator", ID: "test"})
		if err != nil || len(res.Keys) != 1 {
			t.Fatalf("today: got %+v, %v, want one key", res, err)
		}
		old[sub] = res.Key
	}
	// The lost one's key is found by its marker alone: no row, no metadata.
	if _, err := b.pool.Exec(ctx, `DELETE FROM subscriptions WHERE id = $1`, lost.Subscription); err != nil {
		t.Fatal(err)
	}
	if err := b.stripe.SetSubscriptionMetadata(lost.Subscription, map[string]string{syncer.KeyMetadata: ""}); err != nil {
		t.Fatal(err)
	}

	b.syncer = b.newSyncer(t, after)
	for _, sub := range []string{kept.Subscription, lost.Subscription} {
		b.sync(t, sub)
		b.sync(t, sub)
		keys := b.keysOf(t, sub)
		if len(keys) != 2 || keys[product].Key != old[sub] || keys[otherProduct].Features != [8]bool{0: true, 4: true} {
			t.Fatalf("%s: got %+v, want today's key kept in 1001 and the add-on's made in 2002", sub, keys)
		}
		row, _ := b.store.GetSubscription(ctx, sub)
		if *row.LicenseKey != old[sub] {
			t.Fatalf("%s: the row names %s, want today's key %s", sub, *row.LicenseKey, old[sub])
		}
	}
	if n, keys := b.crypto.AppliedCount(cryptolenssim.CreateKey), len(b.crypto.Keys(product)); n != 4 || keys != 2 {
		t.Fatalf("got %d creates and %d keys in 1001, want 4 (two today, two add-ons) and 2", n, keys)
	}
	audit, _ := b.store.AuditFor(ctx, lost.Subscription)
	adopted := slices.ContainsFunc(audit, func(a postgres.AuditEntry) bool {
		return a.Action == "adopt_key" && *a.LicenseKey == old[lost.Subscription] && a.Params["source"] == "notes marker "+syncer.Marker(lost.Subscription)
	})
	if !adopted {
		t.Fatalf("lost row: got audit %+v, want today's key adopted by its marker", audit)
	}
}

// Status (Preview) shows every key of a bundle, and the store reads them all.
func TestBundlePreviewShowsEveryKey(t *testing.T) {
	t.Parallel()
	b := setupBundle(t)
	res, _ := b.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: b.addon}, {Price: b.pro}}})
	p, err := b.syncer.Preview(context.Background(), res.Subscription)
	if err != nil || len(p.Keys) != 2 || p.Keys[0].Desired.ProductID != otherProduct || p.Keys[1].Desired.ProductID != product ||
		p.Keys[0].Actions[0].Kind != license.CreateKey || p.Desired.ProductID != otherProduct {
		t.Fatalf("preview: got %+v, %v, want a create in 2002, then one in 1001", p, err)
	}
	b.sync(t, res.Subscription)
	if p, _ := b.syncer.Preview(context.Background(), res.Subscription); len(p.Keys) != 2 || len(p.Keys[0].Actions)+len(p.Keys[1].Actions) != 0 ||
		!p.Keys[0].Key.Exists || !p.Keys[1].Key.Exists {
		t.Fatalf("preview after the sync: got %+v, want both keys and nothing to do", p.Keys)
	}
	if keys := b.keysOf(t, res.Subscription); len(keys) != 2 {
		t.Fatalf("SubscriptionKeys: got %d, want 2", len(keys))
	}
}
