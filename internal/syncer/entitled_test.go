package syncer_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// periodEnd returns the subscription's current period end in Stripe.
func (e *env) periodEnd(t *testing.T, sub string) time.Time {
	t.Helper()
	s, ok := e.stripe.Subscription(sub)
	if !ok {
		t.Fatalf("no subscription %s", sub)
	}
	return time.Unix(s.CurrentPeriodEnd, 0).UTC()
}

// wantThrough checks that the key runs to through + 5 days (within a day, never
// before) and that keysync recorded through as the entitled-through date.
func (e *env) wantThrough(t *testing.T, sub string, through time.Time, step string) {
	t.Helper()
	want := through.AddDate(0, 0, 5)
	k := e.key(t, sub)
	if k.Block || k.Expires.Before(want) || k.Expires.Sub(want) >= 24*time.Hour {
		t.Fatalf("%s: key expires %s (blocked %v), want entitled-through + 5 days = %s, unblocked", step, k.Expires, k.Block, want)
	}
	row, err := e.store.GetSubscription(context.Background(), sub)
	if err != nil || row.EntitledThrough == nil || !row.EntitledThrough.Equal(through) {
		t.Fatalf("%s: recorded entitled-through %v (%v), want %s", step, row.EntitledThrough, err, through)
	}
}

// An invoiced customer (send_invoice, Net 30) is active while the invoice is open:
// Stripe grants the period before payment, so the key runs through the period + 5 days
// at sign-up and at each renewal, paid or not yet.
func TestInvoicedCustomerKeyRunsThroughThePeriod(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, err := e.stripe.CreateSubscription(stripesim.SubscriptionParams{Email: "net30@example.com", Items: []stripesim.ItemParams{{Price: e.pro}},
		CollectionMethod: stripesim.SendInvoice, DaysUntilDue: 30})
	if err != nil {
		t.Fatal(err)
	}
	sub := res.Subscription
	e.sync(t, sub)
	e.wantThrough(t, sub, e.periodEnd(t, sub), "sign-up, invoice open")
	audit, _ := e.store.AuditFor(context.Background(), sub)
	if len(audit) == 0 || audit[0].Action != "create_key" || audit[0].Params["entitled_through"] == nil {
		t.Fatalf("got audit %+v, want create_key with its entitled_through", audit)
	}
	for i := range 3 {
		step := "renewal " + string(rune('1'+i))
		e.stripe.Advance(20 * 24 * time.Hour)
		s, _ := e.stripe.Subscription(sub)
		if err := e.stripe.PayInvoice(s.LatestInvoice); err != nil {
			t.Fatalf("%s: pay: %v", step, err)
		}
		e.pastRenewal(t, sub) // the renewal invoice is sent, not charged
		if s, _ := e.stripe.Subscription(sub); s.Status != stripesim.StatusActive {
			t.Fatalf("%s: got %s, want active with the invoice open", step, s.Status)
		}
		e.sync(t, sub)
		e.wantThrough(t, sub, e.periodEnd(t, sub), step)
	}
}

// Paused collection: Stripe keeps the subscription active and says the customer keeps
// access, so by default (keep) the key runs through the period; with lapse it runs out
// at paid-through + 5 days.
func TestPausedCollection(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		lapse bool
	}{
		"keep":  {lapse: false},
		"lapse": {lapse: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, func(o *syncer.Options) { o.Policy.LapseOnPausedCollection = tc.lapse })
			res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "p@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
			sub := res.Subscription
			e.sync(t, sub)
			paid := e.stripe.PaidThrough(sub)
			if err := e.stripe.SetPauseCollection(sub, stripesim.PauseVoid, time.Time{}); err != nil {
				t.Fatal(err)
			}
			e.pastRenewal(t, sub) // the renewal invoice is voided, never charged
			e.sync(t, sub)
			if s, _ := e.stripe.Subscription(sub); s.Status != stripesim.StatusActive || s.PauseCollection == nil {
				t.Fatalf("got %s (pause %+v), want active with collection paused", s.Status, s.PauseCollection)
			}
			want := e.periodEnd(t, sub)
			if tc.lapse {
				want = paid
			}
			e.wantThrough(t, sub, want, "renewal while paused")
		})
	}
}

// A subscription of metered prices only is billed in arrears: no paid invoice lies
// ahead of the period in use, yet its key must not lapse 5 days into the period.
func TestMeteredOnlyKeyDoesNotLapse(t *testing.T) {
	t.Parallel()
	e := setup(t)
	prod := e.stripe.CreateProduct("API", map[string]string{"skm_product_id": "1001"})
	usage, err := e.stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 2, UsageType: "metered", Metadata: map[string]string{"skm": `{"F1":true}`}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "m@example.com", Items: []stripesim.ItemParams{{Price: usage}}})
	if err != nil {
		t.Fatal(err)
	}
	sub := res.Subscription
	e.sync(t, sub)
	e.wantThrough(t, sub, e.periodEnd(t, sub), "sign-up")
	for i := range 2 {
		step := "period " + string(rune('2'+i))
		s, _ := e.stripe.Subscription(sub)
		if err := e.stripe.ReportUsage(s.Items[0].ID, 120); err != nil {
			t.Fatal(err)
		}
		e.pastRenewal(t, sub) // the usage is billed and paid
		e.sync(t, sub)
		e.stripe.Advance(6 * 24 * time.Hour) // past the buffer a paid-through key would get
		e.sync(t, sub)
		if k := e.key(t, sub); k.Block || !k.Expires.After(e.stripe.Now()) {
			t.Fatalf("%s: key expires %s (blocked %v) 6 days into the period", step, k.Expires, k.Block)
		}
		e.wantThrough(t, sub, e.periodEnd(t, sub), step)
	}
}

// A trial moved later by trial_end issues no invoice: the key follows the new end.
func TestMovedTrialExtendsTheKey(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "t@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}, TrialDays: 14})
	sub := res.Subscription
	e.sync(t, sub)
	e.wantThrough(t, sub, e.periodEnd(t, sub), "trial")
	end := e.stripe.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	if err := e.stripe.ExtendTrial(sub, end); err != nil {
		t.Fatal(err)
	}
	e.sync(t, sub)
	e.wantThrough(t, sub, end, "trial moved")
}

// failUnblock wraps the Cryptolens simulator: while on is set, UnblockKey answers 500
// and changes nothing.
func failUnblock(on *atomic.Bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if on.Load() && strings.HasSuffix(strings.ToLower(r.URL.Path), "/"+strings.ToLower(cryptolenssim.UnblockKey)) {
				http.Error(w, "<html>Internal Server Error</html>", http.StatusInternalServerError)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// lapse lets the customer's card fail at the renewal and waits past the buffer, until
// Cryptolens' "Block Expired Licenses" blocks the key; the subscription is past_due.
func (e *env) lapse(t *testing.T, res stripesim.CheckoutResult) {
	t.Helper()
	_ = e.stripe.SetCardDeclines(res.Customer, true)
	e.pastRenewal(t, res.Subscription)
	e.sync(t, res.Subscription)
	e.stripe.Advance(6 * 24 * time.Hour) // past the 5-day buffer, before dunning's last retry (7 days)
	if k := e.key(t, res.Subscription); !k.Block || !k.AutoBlocked {
		t.Fatalf("got %+v, want Cryptolens' expiry block", k)
	}
	if s, _ := e.stripe.Subscription(res.Subscription); s.Status != stripesim.StatusPastDue {
		t.Fatalf("got %s, want past_due", s.Status)
	}
}

// payLatest pays the subscription's open invoice with a working card.
func (e *env) payLatest(t *testing.T, res stripesim.CheckoutResult) {
	t.Helper()
	_ = e.stripe.SetCardDeclines(res.Customer, false)
	s, _ := e.stripe.Subscription(res.Subscription)
	if err := e.stripe.PayInvoice(s.LatestInvoice); err != nil {
		t.Fatal(err)
	}
}

// Extended, then the unblock failed: the key no longer looks expired, but keysync
// recorded the expiry block it saw, so the retry lifts it.
func TestExpiryBlockLiftedAfterFailedUnblock(t *testing.T) {
	t.Parallel()
	var failing atomic.Bool
	e := setupWith(t, pgtest.Pool(t), failUnblock(&failing))
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	sub := res.Subscription
	e.sync(t, sub)
	e.lapse(t, res)
	e.payLatest(t, res)

	failing.Store(true)
	if _, err := e.syncer.Sync(context.Background(), sub, syncer.Cause{Kind: "webhook", ID: "evt_paid"}); err == nil {
		t.Fatal("got nil error with UnblockKey failing")
	}
	if k := e.key(t, sub); !k.Block || !k.Expires.After(e.stripe.Now()) {
		t.Fatalf("after the failed unblock: got %+v, want extended and still blocked", k)
	}
	if row, _ := e.store.GetSubscription(context.Background(), sub); !row.ExpiryBlockSeen {
		t.Fatal("the expiry block is not recorded after the failed unblock")
	}

	failing.Store(false)
	e.sync(t, sub)
	e.wantThrough(t, sub, e.stripe.PaidThrough(sub), "retry")
	if row, _ := e.store.GetSubscription(context.Background(), sub); row.ExpiryBlockSeen || row.BlockedByKeysync {
		t.Fatalf("after the unblock: got expiry_block_seen %v, blocked_by_keysync %v, want both false", row.ExpiryBlockSeen, row.BlockedByKeysync)
	}
	if n := e.crypto.AppliedCount(cryptolenssim.ExtendLicense); n != 1 {
		t.Fatalf("got %d extensions, want 1", n)
	}
}

// A past_due customer whose key lapsed stays blocked: Cryptolens would block the
// expired key again within the hour, so keysync never toggles the block.
func TestLapsedPastDueKeyStaysBlocked(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	sub := res.Subscription
	e.sync(t, sub)
	e.lapse(t, res)
	for range 3 {
		e.sync(t, sub)
		e.stripe.Advance(time.Hour)
	}
	if k := e.key(t, sub); !k.Block {
		t.Fatal("the lapsed past_due key was unblocked")
	}
	if n := e.crypto.CallCount(cryptolenssim.UnblockKey); n != 0 {
		t.Fatalf("got %d UnblockKey calls, want 0", n)
	}
	if row, _ := e.store.GetSubscription(context.Background(), sub); !row.ExpiryBlockSeen || row.BlockedByKeysync {
		t.Fatalf("got expiry_block_seen %v, blocked_by_keysync %v, want true and false", row.ExpiryBlockSeen, row.BlockedByKeysync)
	}
}
