package syncer_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
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

// otherProduct is the second Cryptolens product one-time purchases map to.
const otherProduct = 2002

// shop is an env selling one-time prices: app (product 1001, F2, two machines a seat,
// perpetual), addon (1001, F3, one machine), other (2002, F4, perpetual) and merch
// (unmapped), through a plans file; the product's time-limited feature is F1 and
// "Block Expired Licenses" is on. It blocks on refunds and disputes.
type shop struct {
	*env
	app, addon, other, merch string
	mapping                  *license.Mapping
	world                    *simtest.World
}

func setupShop(t *testing.T, pool *pgxpool.Pool, wrap func(http.Handler) http.Handler) *shop {
	t.Helper()
	e := &env{store: postgres.NewStore(pool)}
	w := simtest.New(t, simtest.Options{Start: t0, BlockExpired: true, WrapCryptolens: wrap})
	w.Crypto.AddProduct(otherProduct, cryptolenssim.ProductOptions{BlockExpired: true})
	e.stripe, e.crypto = w.Stripe, w.Crypto
	price := func(name string) string {
		prod := e.stripe.CreateProduct(name, nil)
		id, err := e.stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 9900, OneTime: true})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	s := &shop{env: e, world: w, app: price("App, lifetime"), addon: price("Add-on"), other: price("Other app"), merch: price("Mug")}
	var err error
	s.mapping, err = license.ParsePlans("plans.yaml", []byte(fmt.Sprintf(`plans:
  - price: %s
    cryptolens_product: 1001
    features: [2]
    machines_per_seat: 2
    perpetual: true
  - price: %s
    cryptolens_product: 1001
    features: [3]
    machines: 1
  - price: %s
    cryptolens_product: 2002
    features: [4]
    perpetual: true
`, s.app, s.addon, s.other)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.mapping.RequireTimeLimited(1); err != nil {
		t.Fatal(err)
	}
	e.syncer = s.replica(t, e.store)
	return s
}

// replica returns another Syncer of the shop: its own clients, on store.
func (s *shop) replica(t *testing.T, store syncer.Store) *syncer.Syncer {
	t.Helper()
	sc, cc := s.world.Clients(t)
	return syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: store, Mapping: s.mapping, Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5, BlockOnDispute: true, BlockOnRefund: true, TimeLimitedFeature: 1},
			WriteStripeMetadata: true, Now: s.stripe.Now})
}

func (s *shop) syncPurchase(t *testing.T, id string) syncer.Result {
	t.Helper()
	res, err := s.syncer.SyncPurchase(context.Background(), id, syncer.Cause{Kind: "operator", ID: "test"})
	if err != nil {
		t.Fatalf("sync purchase %s: %v", id, err)
	}
	return res
}

// keys returns the purchase's keys as Cryptolens has them, by product, as keysync
// recorded them.
func (s *shop) keys(t *testing.T, purchase string) map[int]cryptolenssim.Key {
	t.Helper()
	recs, err := s.store.PurchaseKeys(context.Background(), purchase)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]cryptolenssim.Key{}
	for _, r := range recs {
		k, ok := s.crypto.Key(r.ProductID, *r.LicenseKey)
		if !ok {
			t.Fatalf("key %s of %s missing in Cryptolens", *r.LicenseKey, purchase)
		}
		out[r.ProductID] = k
	}
	return out
}

// allKeys returns every key of both products.
func (s *shop) allKeys() []cryptolenssim.Key {
	return append(s.crypto.Keys(product), s.crypto.Keys(otherProduct)...)
}

// A paid purchase gets one perpetual key per Cryptolens product: the product's items'
// features together, machines per seat × quantity summed, the time-limited feature off,
// the purchase's Notes marker and the customer. It is never extended, however long
// after, and Cryptolens' "Block Expired Licenses" leaves it alone.
func TestPurchaseGetsPerpetualKeys(t *testing.T) {
	t.Parallel()
	s := setupShop(t, pgtest.Pool(t), nil)
	res, err := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "ada@example.com", Name: "Ada",
		Items: []stripesim.ItemParams{{Price: s.app, Quantity: 3}, {Price: s.merch}, {Price: s.addon, Quantity: 2}, {Price: s.other}}})
	if err != nil {
		t.Fatal(err)
	}
	got := s.syncPurchase(t, res.Session)
	if got.Status != syncer.PurchasePaid || len(got.Keys) != 2 || got.Keys[0].ProductID != product || got.Keys[1].ProductID != otherProduct {
		t.Fatalf("got %+v, want two keys, product 1001 first", got)
	}
	keys := s.keys(t, res.Session)
	app, other := keys[product], keys[otherProduct]
	if app.Features != [8]bool{1: true, 2: true} || app.MaxNoOfMachines != 3*2+1 || app.Notes != syncer.Marker(res.Session) || app.CustomerID == 0 {
		t.Fatalf("product 1001's key: got %+v, want F2+F3, 7 machines, the session's marker, a customer", app)
	}
	if other.Features != [8]bool{3: true} || other.MaxNoOfMachines != 0 || other.Notes != syncer.Marker(res.Session) {
		t.Fatalf("product 2002's key: got %+v, want F4 alone, no machine limit, the session's marker", other)
	}
	row, err := s.store.GetPurchase(context.Background(), res.Session)
	if err != nil || row.Status != syncer.PurchasePaid || row.CustomerID != res.Customer || len(row.Keys) != 2 || row.LastSyncedAt == nil {
		t.Fatalf("purchase row: got %+v, %v", row, err)
	}
	audit, _ := s.store.AuditFor(context.Background(), res.Session)
	if len(audit) != 2 || audit[0].Action != "create_key" || audit[0].Params["perpetual"] != true || *audit[0].PurchaseID != res.Session ||
		audit[0].SubscriptionID != nil || *audit[0].ProductID != product || *audit[1].ProductID != otherProduct {
		t.Fatalf("audit: got %+v, want a perpetual create_key per product, naming the purchase", audit)
	}

	// Years later: no extension, no block, nothing to do.
	for range 3 {
		s.stripe.Advance(400 * 24 * time.Hour)
		if got := s.syncPurchase(t, res.Session); len(got.Actions) != 0 {
			t.Fatalf("a later Sync: got actions %+v, want none", got.Actions)
		}
	}
	if n := s.crypto.CallCount(cryptolenssim.ExtendLicense); n != 0 {
		t.Fatalf("got %d ExtendLicense calls, want none ever", n)
	}
	for _, k := range s.keys(t, res.Session) {
		if k.Block || k.Features[0] {
			t.Fatalf("after years: got %+v, want the key unblocked with F1 off", k)
		}
	}
	if n := s.crypto.AppliedCount(cryptolenssim.CreateKey); n != 2 {
		t.Fatalf("got %d keys created, want 2", n)
	}
}

// A purchase through Checkout and one through an invoice of no subscription get their
// keys whatever the order and number of their events' deliveries: every event three
// times, shuffled, ends with one key per purchase and product. A post-payment invoice
// is the session's purchase, and a payment still processing gets its key when it
// settles.
func TestPurchaseEventsShuffledAndDuplicated(t *testing.T) {
	t.Parallel()
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			s := setupShop(t, pgtest.Pool(t), nil)
			card, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}, {Price: s.other}},
				InvoiceCreation: true})
			async, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: s.app}}, Async: true})
			guest, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Guest: true, Email: "c@example.com", Items: []stripesim.ItemParams{{Price: s.addon}}})
			oneOff, _ := s.stripe.CreateInvoice(stripesim.InvoiceParams{Email: "d@example.com", Items: []stripesim.ItemParams{{Price: s.other, Quantity: 2}}})
			if err := s.stripe.SettleAsyncPayment(async.Session, true); err != nil {
				t.Fatal(err)
			}
			evs := s.stripe.Events()
			var deliveries []stripesim.Event
			for _, ev := range evs {
				deliveries = append(deliveries, ev, ev, ev)
			}
			rng := rand.New(rand.NewPCG(seed, 7))
			rng.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })
			for _, ev := range deliveries {
				s.handleAny(t, ev)
			}

			want := map[string]int{card.Session: 2, async.Session: 1, guest.Session: 1, oneOff.Invoice: 1}
			for id, n := range want {
				if got := s.keys(t, id); len(got) != n {
					t.Errorf("%s: got %d keys, want %d", id, len(got), n)
				}
			}
			if n := s.crypto.AppliedCount(cryptolenssim.CreateKey); n != 5 || len(s.allKeys()) != 5 {
				t.Fatalf("got %d creates and %d keys, want 5 and 5", n, len(s.allKeys()))
			}
			if _, err := s.store.GetPurchase(context.Background(), card.Invoice); err == nil {
				t.Fatal("the post-payment invoice got a purchase row of its own")
			}
		})
	}
}

// handleAny is what the event worker does with one delivered event: it syncs the
// subscription or purchase the event is about.
func (e *env) handleAny(t *testing.T, ev stripesim.Event) {
	t.Helper()
	ctx := context.Background()
	target, err := e.syncer.TargetFor(ctx, ev.Type, ev.Payload)
	if err != nil {
		t.Fatal(err)
	}
	cause := syncer.Cause{Kind: "webhook", ID: ev.ID}
	switch {
	case target.Subscription != "":
		_, err = e.syncer.Sync(ctx, target.Subscription, cause)
	case target.Purchase != "":
		_, err = e.syncer.SyncPurchase(ctx, target.Purchase, cause)
	}
	if err != nil {
		t.Fatalf("sync on %s: %v", ev.Type, err)
	}
}

// Two replicas, on their own database pools, syncing one purchase again and again at
// once create one key per product.
func TestPurchaseTwoReplicas(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	pools := make([]*pgxpool.Pool, 2)
	for i := range pools {
		var err error
		if pools[i], err = pgxpool.New(context.Background(), url); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pools[i].Close)
	}
	s := setupShop(t, pools[0], nil)
	replicas := []*syncer.Syncer{s.syncer, s.replica(t, postgres.NewStore(pools[1]))}
	res, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}, {Price: s.other}}})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := replicas[i%2].SyncPurchase(context.Background(), res.Session, syncer.Cause{Kind: "webhook", ID: fmt.Sprint("evt_", i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := s.crypto.AppliedCount(cryptolenssim.CreateKey); n != 2 || len(s.keys(t, res.Session)) != 2 {
		t.Fatalf("got %d keys created by two replicas, want 2 (one per product)", n)
	}
}

// A Sync interrupted after Cryptolens created the key and before the database
// committed it (the database goes away at that instant) is run again: it finds the key
// by its marker and creates no second one.
func TestPurchaseInterruptedAfterCreateBeforeCommit(t *testing.T) {
	t.Parallel()
	pool, proxy := proxiedPool(t)
	var cut atomic.Bool
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r)
			if cut.Load() && strings.HasSuffix(r.URL.Path, "/"+cryptolenssim.CreateKey) {
				proxy.Cut() // the key is created and answered; the commit will fail
			}
		})
	}
	s := setupShop(t, pool, wrap)
	res, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}}})
	cut.Store(true)
	if _, err := s.syncer.SyncPurchase(context.Background(), res.Session, syncer.Cause{Kind: "webhook", ID: "evt_1"}); err == nil {
		t.Fatal("got nil error with the database gone before the commit")
	}
	cut.Store(false)
	proxy.Restore()
	for range 2 {
		s.syncPurchase(t, res.Session)
	}
	if n := s.crypto.AppliedCount(cryptolenssim.CreateKey); n != 1 || len(s.crypto.Keys(product)) != 1 || len(s.keys(t, res.Session)) != 1 {
		t.Fatalf("got %d creates and %d keys after the interrupted create, want 1 and 1", n, len(s.crypto.Keys(product)))
	}
	audit, _ := s.store.AuditFor(context.Background(), res.Session)
	if len(audit) != 1 || audit[0].Action != "adopt_key" {
		t.Fatalf("audit: got %+v, want the adopted key (the create's row went with the commit)", audit)
	}
}

// With KEYSYNC_ON_REFUND=block a full refund blocks the purchase's keys as keysync's
// own; a partial one does not.
func TestPurchaseRefundBlocks(t *testing.T) {
	t.Parallel()
	s := setupShop(t, pgtest.Pool(t), nil)
	full, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}, {Price: s.other}}})
	part, _ := s.stripe.CreateInvoice(stripesim.InvoiceParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: s.app}}})
	s.syncPurchase(t, full.Session)
	s.syncPurchase(t, part.Invoice)
	if _, err := s.stripe.Refund(full.Charge, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.stripe.Refund(s.stripe.Charges(part.Invoice)[0].ID, 100); err != nil {
		t.Fatal(err)
	}
	for _, ev := range s.stripe.Events() {
		if ev.Type == "charge.refunded" {
			s.handleAny(t, ev)
		}
	}
	for p, k := range s.keys(t, full.Session) {
		if !k.Block {
			t.Errorf("product %d: the refunded purchase's key is not blocked", p)
		}
	}
	if row, _ := s.store.GetPurchase(context.Background(), full.Session); !row.Refunded || len(row.Keys) != 2 || !row.Keys[0].BlockedByKeysync || !row.Keys[1].BlockedByKeysync {
		t.Fatalf("row: got %+v, want refunded, both keys blocked by keysync", row)
	}
	if k := s.keys(t, part.Invoice)[product]; k.Block {
		t.Fatal("a partial refund blocked the key")
	}
}

// With KEYSYNC_ON_DISPUTE=block a dispute blocks the keys; a won dispute lifts
// keysync's block, a lost one keeps it.
func TestPurchaseDisputeBlocksAndWonUnblocks(t *testing.T) {
	t.Parallel()
	s := setupShop(t, pgtest.Pool(t), nil)
	won, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}}})
	lost, _ := s.stripe.CreateInvoice(stripesim.InvoiceParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: s.other}}})
	deliverNew := func() {
		t.Helper()
		for _, ev := range s.stripe.Events() {
			s.handleAny(t, ev)
		}
	}
	deliverNew()
	disputes := map[string]string{}
	var err error
	if disputes[won.Session], err = s.stripe.Dispute(won.Charge, "fraudulent"); err != nil {
		t.Fatal(err)
	}
	if disputes[lost.Invoice], err = s.stripe.Dispute(s.stripe.Charges(lost.Invoice)[0].ID, "fraudulent"); err != nil {
		t.Fatal(err)
	}
	deliverNew()
	for id := range disputes {
		for p, k := range s.keys(t, id) {
			if !k.Block {
				t.Fatalf("%s product %d: disputed and not blocked", id, p)
			}
		}
	}
	if err := s.stripe.CloseDispute(disputes[won.Session], true); err != nil {
		t.Fatal(err)
	}
	if err := s.stripe.CloseDispute(disputes[lost.Invoice], false); err != nil {
		t.Fatal(err)
	}
	deliverNew()
	if k := s.keys(t, won.Session)[product]; k.Block {
		t.Fatal("a won dispute left keysync's block")
	}
	if k := s.keys(t, lost.Invoice)[otherProduct]; !k.Block {
		t.Fatal("a lost dispute lifted the block")
	}
}

// A purchase paid by a delayed payment method gets no key while the payment processes,
// its key when the payment succeeds, and none when it fails.
func TestAsyncPurchase(t *testing.T) {
	t.Parallel()
	s := setupShop(t, pgtest.Pool(t), nil)
	ok, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}}, Async: true})
	bad, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: s.app}}, Async: true})
	for _, id := range []string{ok.Session, bad.Session} {
		if res := s.syncPurchase(t, id); res.Status != syncer.PurchaseProcessing || len(res.Keys) != 0 {
			t.Fatalf("processing: got %+v", res)
		}
	}
	if n := s.crypto.CallCount(cryptolenssim.GetKeys); n != 0 {
		t.Fatalf("got %d key searches for unpaid purchases, want none", n)
	}
	if err := s.stripe.SettleAsyncPayment(ok.Session, true); err != nil {
		t.Fatal(err)
	}
	if err := s.stripe.SettleAsyncPayment(bad.Session, false); err != nil {
		t.Fatal(err)
	}
	if res := s.syncPurchase(t, ok.Session); res.Status != syncer.PurchasePaid || len(res.Keys) != 1 {
		t.Fatalf("succeeded: got %+v, want paid and a key", res)
	}
	if res := s.syncPurchase(t, bad.Session); res.Status != syncer.PurchasePaymentFailed || len(res.Keys) != 0 {
		t.Fatalf("failed: got %+v, want payment_failed and no key", res)
	}
}

// An invoice a Checkout Session made is the session's purchase: syncing it syncs the
// session, and writes no row of its own.
func TestPostPaymentInvoiceSyncsItsSession(t *testing.T) {
	t.Parallel()
	s := setupShop(t, pgtest.Pool(t), nil)
	res, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}}, InvoiceCreation: true})
	got := s.syncPurchase(t, res.Invoice)
	if len(got.Keys) != 1 || s.keys(t, res.Session)[product].Key != got.Keys[0].Key {
		t.Fatalf("got %+v, want the session's key", got)
	}
	if row, err := s.store.GetPurchase(context.Background(), res.Session); err != nil || row.InvoiceID == nil || *row.InvoiceID != res.Invoice {
		t.Fatalf("session row: got %+v, %v, want its invoice recorded", row, err)
	}
	if _, err := s.store.GetPurchase(context.Background(), res.Invoice); err == nil {
		t.Fatal("the invoice got a row of its own")
	}
}

// A purchase nothing maps is recorded once and gets no key; a subscription's session
// or a subscription's invoice is no purchase.
func TestPurchaseUnmappedAndNotPurchases(t *testing.T) {
	t.Parallel()
	s := setupShop(t, pgtest.Pool(t), nil)
	mug, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.merch}}})
	for range 2 {
		if res := s.syncPurchase(t, mug.Session); !res.Unmapped {
			t.Fatalf("got %+v, want unmapped", res)
		}
	}
	audit, _ := s.store.AuditFor(context.Background(), mug.Session)
	if len(audit) != 1 || audit[0].Action != "skip_unmapped" || len(s.allKeys()) != 0 {
		t.Fatalf("got audit %+v and %d keys, want one skip_unmapped and none", audit, len(s.allKeys()))
	}

	prod := s.stripe.CreateProduct("Monthly", map[string]string{"skm_product_id": "1001"})
	monthly, _ := s.stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 1000})
	sub, _ := s.stripe.Checkout(stripesim.CheckoutParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: monthly}}})
	for _, id := range []string{sub.Session, sub.Invoice, sub.Subscription} {
		if _, err := s.syncer.SyncPurchase(context.Background(), id, syncer.Cause{Kind: "operator", ID: "test"}); !errors.Is(err, syncer.ErrPermanent) {
			t.Errorf("%s: got %v, want a permanent error", id, err)
		}
	}
}

// Every event of a purchase leads to it: the session's, the invoice's, and their
// charges' and disputes' (followed through the charge's invoice or PaymentIntent),
// whatever the API version the event came in.
func TestTargetForPurchases(t *testing.T) {
	t.Parallel()
	for name, version := range map[string]string{"2023-10-16": stripesim.APIVersion, "basil": stripesim.VersionBasil} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := setupShop(t, pgtest.Pool(t), nil)
			if err := s.stripe.SetAccountAPIVersion(version); err != nil {
				t.Fatal(err)
			}
			pay, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}}, Async: true})
			if err := s.stripe.SettleAsyncPayment(pay.Session, true); err != nil {
				t.Fatal(err)
			}
			inv, _ := s.stripe.CreateInvoice(stripesim.InvoiceParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: s.other}}})
			invCharge := s.stripe.Charges(inv.Invoice)[0].ID
			for _, ch := range []string{pay.Charge, invCharge} {
				if _, err := s.stripe.Refund(ch, 100); err != nil {
					t.Fatal(err)
				}
				if _, err := s.stripe.Dispute(ch, ""); err != nil {
					t.Fatal(err)
				}
			}
			wantOf := func(ev stripesim.Event) string {
				switch {
				case strings.HasPrefix(ev.Type, "checkout.session."):
					return pay.Session
				case strings.HasPrefix(ev.Type, "invoice."):
					return inv.Invoice
				}
				return ""
			}
			seen := map[string]bool{}
			for _, ev := range s.stripe.Events() {
				if !strings.HasPrefix(ev.Type, "checkout.") && !strings.HasPrefix(ev.Type, "invoice.") && !strings.HasPrefix(ev.Type, "charge.") {
					continue
				}
				got, err := s.syncer.TargetFor(context.Background(), ev.Type, ev.Payload)
				if err != nil {
					t.Fatalf("%s: %v", ev.Type, err)
				}
				want := wantOf(ev)
				if want == "" { // a charge or dispute: of the payment or of the invoice
					want = pay.Session
					if strings.Contains(string(ev.Payload), invCharge) {
						want = inv.Invoice
					}
				}
				if got.Purchase != want || got.Subscription != "" {
					t.Errorf("%s (%s): got %+v, want purchase %s", ev.Type, ev.APIVersion, got, want)
				}
				seen[ev.Type] = true
			}
			for _, typ := range []string{"checkout.session.completed", "checkout.session.async_payment_succeeded", "invoice.paid",
				"charge.refunded", "charge.dispute.created", "charge.succeeded"} {
				if !seen[typ] {
					t.Errorf("no %s event was resolved", typ)
				}
			}
		})
	}
}
