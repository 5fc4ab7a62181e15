package syncer_test

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
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

const product = 1001

var t0 = time.Date(2026, 2, 1, 9, 0, 0, 0, time.UTC)

type env struct {
	store    *postgres.Store
	stripe   *stripesim.Sim
	crypto   *cryptolenssim.Sim
	syncer   *syncer.Syncer
	pro      string // price: F1 on, 2 machines
	team     string // price: F1 + F3 on, 5 machines
	unmapped string
}

type opt func(*syncer.Options)

func setup(t *testing.T, opts ...opt) *env {
	t.Helper()
	return setupWith(t, pgtest.Pool(t), nil, opts...)
}

// setupWith builds the env on pool, with wrap (if set) around the Cryptolens simulator.
func setupWith(t *testing.T, pool *pgxpool.Pool, wrap func(http.Handler) http.Handler, opts ...opt) *env {
	t.Helper()
	return setupWorld(t, pool, simtest.Options{WrapCryptolens: wrap}, opts...)
}

// setupWorld builds the env on pool in a world shaped by wo (its start and "Block
// Expired Licenses" are the env's).
func setupWorld(t *testing.T, pool *pgxpool.Pool, wo simtest.Options, opts ...opt) *env {
	t.Helper()
	e := &env{store: postgres.NewStore(pool)}
	wo.Start, wo.BlockExpired = t0, true
	w := simtest.New(t, wo)
	e.stripe, e.crypto = w.Stripe, w.Crypto
	sc, cc := w.Clients(t)
	prod := e.stripe.CreateProduct("App", map[string]string{"skm_product_id": "1001"})
	e.pro, _ = e.stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 3000, Metadata: map[string]string{"skm": `{"F1":true,"F3":false,"MaxNoOfMachines":2}`}})
	e.team, _ = e.stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 9000, Metadata: map[string]string{"skm": `{"F1":true,"F3":true,"MaxNoOfMachines":5}`}})
	merch := e.stripe.CreateProduct("T-shirt", nil)
	e.unmapped, _ = e.stripe.CreatePrice(stripesim.PriceParams{Product: merch, UnitAmount: 2000})
	o := syncer.Options{Policy: license.Options{BufferDays: 5, BlockOnDispute: true}, WriteStripeMetadata: true, Now: e.stripe.Now}
	for _, f := range opts {
		f(&o)
	}
	e.syncer = syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: e.store, Mapping: license.NewMapping(0), Log: zerolog.Nop()}, o)
	return e
}

func (e *env) sync(t *testing.T, sub string) syncer.Result {
	t.Helper()
	res, err := e.syncer.Sync(context.Background(), sub, syncer.Cause{Kind: "operator", ID: "test"})
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}

func (e *env) key(t *testing.T, sub string) cryptolenssim.Key {
	t.Helper()
	row, err := e.store.GetSubscription(context.Background(), sub)
	if err != nil || row.LicenseKey == nil {
		t.Fatalf("no key recorded for %s (%v)", sub, err)
	}
	k, ok := e.crypto.Key(product, *row.LicenseKey)
	if !ok {
		t.Fatalf("key %s missing in Cryptolens", *row.LicenseKey)
	}
	return k
}

// pastRenewal advances the clock to two hours after the current period ends: the
// renewal invoice has been finalized and charged.
func (e *env) pastRenewal(t *testing.T, sub string) {
	t.Helper()
	s, _ := e.stripe.Subscription(sub)
	e.stripe.Advance(time.Unix(s.CurrentPeriodEnd, 0).Sub(e.stripe.Now()) + 2*time.Hour)
}

func (e *env) wantExpiry(t *testing.T, sub, step string) {
	t.Helper()
	want := e.stripe.PaidThrough(sub).AddDate(0, 0, 5)
	k := e.key(t, sub)
	if k.Expires.Before(want) || k.Expires.Sub(want) >= 24*time.Hour {
		t.Fatalf("%s: key expires %s, want paid-through + 5 days = %s (within a day, never before)", step, k.Expires, want)
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Name: "Ada", Items: []stripesim.ItemParams{{Price: e.pro}}, TrialDays: 14})
	if err != nil {
		t.Fatal(err)
	}
	sub := res.Subscription
	e.sync(t, sub)
	k := e.key(t, sub)
	if k.Features != [8]bool{true} || k.MaxNoOfMachines != 2 || k.Notes != syncer.Marker(sub) || k.Block || k.CustomerID == 0 {
		t.Fatalf("trial key: got %+v", k)
	}
	e.wantExpiry(t, sub, "trial")
	if s, _ := e.stripe.Subscription(sub); s.Metadata[syncer.KeyMetadata] != k.Key {
		t.Fatalf("cryptolens_key metadata: got %q, want %q", s.Metadata[syncer.KeyMetadata], k.Key)
	}

	// Conversion: the period moves an hour before payment; a sync in between must not extend.
	e.stripe.Advance(14*24*time.Hour + 30*time.Minute)
	before := e.key(t, sub).Expires
	e.sync(t, sub)
	if got := e.key(t, sub).Expires; !got.Equal(before) {
		t.Fatalf("extended to %s before the renewal was paid", got)
	}
	e.stripe.Advance(time.Hour)
	e.sync(t, sub)
	e.wantExpiry(t, sub, "conversion")

	for i := range 3 {
		e.stripe.Advance(31 * 24 * time.Hour)
		e.sync(t, sub)
		e.sync(t, sub) // a redelivery finds nothing to do
		e.wantExpiry(t, sub, "renewal "+string(rune('1'+i)))
	}
	if n := e.crypto.AppliedCount(cryptolenssim.ExtendLicense); n != 4 {
		t.Fatalf("got %d extensions, want 4 (conversion + 3 renewals)", n)
	}

	// A failed payment: past_due keeps the key to paid-through + buffer; recovery extends.
	_ = e.stripe.FailNextPayment(res.Customer)
	e.pastRenewal(t, sub) // the renewal fails; the first retry is 3 days away
	e.sync(t, sub)
	if s, _ := e.stripe.Subscription(sub); s.Status != "past_due" {
		t.Fatalf("got %s, want past_due", s.Status)
	}
	e.wantExpiry(t, sub, "past_due")
	if k := e.key(t, sub); k.Block {
		t.Fatal("blocked a past_due subscription's key")
	}
	s, _ := e.stripe.Subscription(sub)
	if err := e.stripe.PayInvoice(s.LatestInvoice); err != nil {
		t.Fatal(err)
	}
	e.sync(t, sub)
	e.wantExpiry(t, sub, "recovered")

	// Upgrade, then seats: features and machines follow the plan.
	if err := e.stripe.ChangePrice(sub, e.team, stripesim.ChangeOptions{}); err != nil {
		t.Fatal(err)
	}
	e.sync(t, sub)
	if k := e.key(t, sub); k.Features != [8]bool{true, false, true} || k.MaxNoOfMachines != 5 {
		t.Fatalf("after upgrade: got %+v", k)
	}
	if err := e.stripe.ChangePrice(sub, e.pro, stripesim.ChangeOptions{}); err != nil {
		t.Fatal(err)
	}
	e.sync(t, sub)
	if k := e.key(t, sub); k.Features != [8]bool{true} || k.MaxNoOfMachines != 2 {
		t.Fatalf("after downgrade: got %+v (F3 must go: the plan manages it)", k)
	}

	// Cancellation at period end: still valid until then, blocked after.
	_ = e.stripe.CancelAtPeriodEnd(sub, true)
	e.sync(t, sub)
	if e.key(t, sub).Block {
		t.Fatal("blocked before the period ended")
	}
	e.stripe.Advance(32 * 24 * time.Hour)
	e.sync(t, sub)
	if !e.key(t, sub).Block {
		t.Fatal("not blocked after cancellation")
	}
	row, _ := e.store.GetSubscription(context.Background(), sub)
	if !row.BlockedByKeysync || row.Status != "canceled" {
		t.Fatalf("row: got %+v", row)
	}
	if n := e.crypto.AppliedCount(cryptolenssim.CreateKey); n != 1 {
		t.Fatalf("got %d keys created, want 1", n)
	}
	audit, _ := e.store.AuditFor(context.Background(), sub)
	kinds := map[string]int{}
	for _, a := range audit {
		kinds[a.Action]++
		if a.Cause != "operator" || a.Outcome != "applied" {
			t.Fatalf("audit row %+v", a)
		}
	}
	if kinds["create_key"] != 1 || kinds["extend"] != 5 || kinds["block"] != 1 || kinds["add_feature"] != 1 || kinds["remove_feature"] != 1 || kinds["machine_limit"] != 2 {
		t.Fatalf("audit: got %v", kinds)
	}
}

// Crash safety: a change applied in Cryptolens whose answer is lost is not made twice.
func TestLostAnswersDoNotDoubleApply(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	ctx := context.Background()
	e.crypto.SetFaults(cryptolenssim.Faults{LostAnswerRate: 1})
	if _, err := e.syncer.Sync(ctx, res.Subscription, syncer.Cause{Kind: "webhook", ID: "evt_1"}); err == nil {
		t.Fatal("got nil error with the CreateKey answer lost")
	}
	e.crypto.SetFaults(cryptolenssim.Faults{})
	e.sync(t, res.Subscription) // adopts the key by its Notes marker
	if n := e.crypto.AppliedCount(cryptolenssim.CreateKey); n != 1 || len(e.crypto.Keys(product)) != 1 {
		t.Fatalf("got %d creates, %d keys: want 1 and 1", n, len(e.crypto.Keys(product)))
	}
	e.stripe.Advance(31*24*time.Hour + 2*time.Hour)
	e.crypto.SetFaults(cryptolenssim.Faults{LostAnswerRate: 1})
	if _, err := e.syncer.Sync(ctx, res.Subscription, syncer.Cause{Kind: "webhook", ID: "evt_2"}); err == nil {
		t.Fatal("got nil error with the ExtendLicense answer lost")
	}
	e.crypto.SetFaults(cryptolenssim.Faults{})
	e.sync(t, res.Subscription)
	e.sync(t, res.Subscription)
	if n := e.crypto.AppliedCount(cryptolenssim.ExtendLicense); n != 1 {
		t.Fatalf("got %d extensions applied, want 1", n)
	}
	e.wantExpiry(t, res.Subscription, "after the lost answer")
}

func TestConcurrentSyncsHaveOneEffect(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.syncer.Sync(context.Background(), res.Subscription, syncer.Cause{Kind: "webhook", ID: "evt"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := e.crypto.AppliedCount(cryptolenssim.CreateKey); n != 1 {
		t.Fatalf("got %d keys created by 6 concurrent syncs, want 1", n)
	}
}

func TestDryRun(t *testing.T) {
	t.Parallel()
	e := setup(t, func(o *syncer.Options) { o.DryRun = true })
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	e.sync(t, res.Subscription)
	e.stripe.Advance(40 * 24 * time.Hour)
	_ = e.stripe.CancelNow(res.Subscription)
	e.sync(t, res.Subscription)
	for _, m := range cryptolenssim.Mutating {
		if c := e.crypto.CallCount(m); c != 0 {
			t.Fatalf("dry run made %d %s calls", c, m)
		}
	}
	if s, _ := e.stripe.Subscription(res.Subscription); s.Metadata[syncer.KeyMetadata] != "" {
		t.Fatal("dry run wrote Stripe metadata")
	}
	for route, n := range e.stripe.Requests() {
		if strings.HasPrefix(route, "POST ") && n > 0 {
			t.Fatalf("dry run sent %d %s requests to Stripe", n, route)
		}
	}
	audit, _ := e.store.AuditFor(context.Background(), res.Subscription)
	if len(audit) == 0 {
		t.Fatal("dry run audited nothing")
	}
	for _, a := range audit {
		if a.Outcome != "dry_run" || a.Action != "create_key" {
			t.Fatalf("got %+v, want only dry_run create_key rows (no key exists to block)", a)
		}
	}
}

func TestUnmappedIsRecordedOnce(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.unmapped}}})
	for range 3 {
		if r := e.sync(t, res.Subscription); !r.Unmapped {
			t.Fatal("got mapped")
		}
	}
	audit, _ := e.store.AuditFor(context.Background(), res.Subscription)
	if len(audit) != 1 || audit[0].Action != "skip_unmapped" || len(e.crypto.Calls()) != 0 {
		t.Fatalf("got %d audit rows, %d Cryptolens calls: want one skip_unmapped and no calls", len(audit), len(e.crypto.Calls()))
	}
}

func TestBlocksThatAreNotKeysyncs(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	e.sync(t, res.Subscription)
	k := e.key(t, res.Subscription)
	// The vendor blocks a valid key by hand: keysync leaves it blocked.
	e.crypto.EditKey(product, k.Key, func(k *cryptolenssim.Key) { k.Block = true })
	e.sync(t, res.Subscription)
	if !e.key(t, res.Subscription).Block {
		t.Fatal("keysync lifted a vendor's manual block")
	}
	e.crypto.EditKey(product, k.Key, func(k *cryptolenssim.Key) { k.Block = false })
	// The card fails until the key lapses and "Block Expired Licenses" blocks it; then
	// the customer pays: keysync extends and lifts the expiry block.
	_ = e.stripe.SetCardDeclines(res.Customer, true)
	e.pastRenewal(t, res.Subscription)
	e.sync(t, res.Subscription)
	e.stripe.Advance(6 * 24 * time.Hour) // past the 5-day buffer, before dunning's last retry (7 days)
	if k := e.key(t, res.Subscription); !k.Block || !k.AutoBlocked {
		t.Fatalf("got %+v, want Cryptolens' expiry block", k)
	}
	_ = e.stripe.SetCardDeclines(res.Customer, false)
	s, _ := e.stripe.Subscription(res.Subscription)
	if err := e.stripe.PayInvoice(s.LatestInvoice); err != nil {
		t.Fatal(err)
	}
	e.sync(t, res.Subscription)
	if k := e.key(t, res.Subscription); k.Block {
		t.Fatal("the expiry block stayed after payment")
	}
	e.wantExpiry(t, res.Subscription, "after the expiry block")
}

// Dry run with a key that already exists (adopted by its Notes marker): the planned
// extension is audited as dry_run, and neither the key nor Stripe's metadata changes.
func TestDryRunWithAnExistingKey(t *testing.T) {
	t.Parallel()
	e := setup(t, func(o *syncer.Options) { o.DryRun = true })
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	k, _ := e.crypto.PutKey(cryptolenssim.Key{ProductID: product, Notes: syncer.Marker(res.Subscription), Expires: t0.Add(24 * time.Hour),
		Features: [8]bool{true}, MaxNoOfMachines: 2})
	if r := e.sync(t, res.Subscription); len(r.Actions) != 1 || r.Actions[0].Kind != license.Extend {
		t.Fatalf("got %+v, want one planned extension", r.Actions)
	}
	if got, _ := e.crypto.Key(product, k.Key); !got.Expires.Equal(k.Expires) {
		t.Fatalf("dry run extended the key to %s", got.Expires)
	}
	if s, _ := e.stripe.Subscription(res.Subscription); s.Metadata[syncer.KeyMetadata] != "" {
		t.Fatal("dry run wrote Stripe metadata")
	}
	audit, _ := e.store.AuditFor(context.Background(), res.Subscription)
	if len(audit) != 2 || audit[0].Action != "adopt_key" || audit[1].Action != "extend" || audit[1].Outcome != "dry_run" {
		t.Fatalf("got %+v, want adopt_key then a dry_run extend", audit)
	}
}

// A failed Sync records its failure but does not count as a sync.
func TestFailedSyncIsNotLastSynced(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	e.sync(t, res.Subscription)
	row, _ := e.store.GetSubscription(context.Background(), res.Subscription)
	first := *row.LastSyncedAt
	e.stripe.Advance(40 * 24 * time.Hour)
	e.crypto.SetFaults(cryptolenssim.Faults{Down: true})
	if _, err := e.syncer.Sync(context.Background(), res.Subscription, syncer.Cause{Kind: "operator", ID: "t"}); err == nil {
		t.Fatal("got nil error with Cryptolens down")
	}
	row, _ = e.store.GetSubscription(context.Background(), res.Subscription)
	if !row.LastSyncedAt.Equal(first) {
		t.Fatalf("last_synced_at moved to %s after a failed sync", row.LastSyncedAt)
	}
}

// Preview is Sync's plan without its apply: it shows the actions the next Sync takes
// and changes nothing, not even to record a key it would adopt.
func TestPreviewPlansWhatSyncApplies(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	k, _ := e.crypto.PutKey(cryptolenssim.Key{ProductID: product, Notes: syncer.Marker(res.Subscription), Expires: t0.Add(24 * time.Hour),
		Features: [8]bool{true}, MaxNoOfMachines: 2})
	p, err := e.syncer.Preview(ctx, res.Subscription)
	if err != nil {
		t.Fatal(err)
	}
	if p.Found || p.Status != "active" || p.Key.Key != k.Key || len(p.Actions) != 1 || p.Actions[0].Kind != license.Extend {
		t.Fatalf("got %+v, want no row yet, the marked key and one extension", p)
	}
	if _, err := e.store.GetSubscription(ctx, res.Subscription); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("after preview: got %v, want no row", err)
	}
	if audit, _ := e.store.AuditFor(ctx, res.Subscription); len(audit) != 0 {
		t.Fatalf("after preview: got %d audit rows, want none", len(audit))
	}
	for _, m := range cryptolenssim.Mutating {
		if c := e.crypto.CallCount(m); c != 0 {
			t.Fatalf("preview made %d %s calls", c, m)
		}
	}
	if r := e.sync(t, res.Subscription); !reflect.DeepEqual(r.Actions, p.Actions) {
		t.Fatalf("sync did %+v, want the previewed %+v", r.Actions, p.Actions)
	}
}

// The marker is a contract with the keys already in Cryptolens: keysync finds its keys
// by it, so its spelling never changes.
func TestMarkerSpelling(t *testing.T) {
	t.Parallel()
	if got := syncer.Marker("sub_1"); got != "stripe:sub_1" {
		t.Fatalf("Marker: got %q, want stripe:sub_1", got)
	}
	if sub, ok := syncer.MarkedSubscription("stripe:sub_1"); !ok || sub != "sub_1" {
		t.Fatalf("MarkedSubscription: got %q, %v, want sub_1, true", sub, ok)
	}
	if sub, ok := syncer.MarkedSubscription("sub_1"); ok {
		t.Fatalf("MarkedSubscription of a plain word: got %q, true, want false", sub)
	}
	if syncer.KeyMetadata != "cryptolens_key" {
		t.Fatalf("KeyMetadata: got %q, want cryptolens_key (vendors' metadata carries it)", syncer.KeyMetadata)
	}
}
