package stripesim_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

func mustNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// advanceTo moves the clock to unix time at plus d.
func advanceTo(w *world, at int64, d time.Duration) {
	w.sim.Advance(time.Unix(at, 0).Sub(w.sim.Now()) + d)
}

// An invoiced customer's subscription is active while its invoice is open, goes
// past_due when the due date passes unpaid, and is active again once paid; renewals are
// sent, not charged.
func TestSendInvoice(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	var res stripesim.SubscriptionResult
	got := w.emitted(t, func() (err error) {
		res, err = w.sim.CreateSubscription(stripesim.SubscriptionParams{Email: "net30@example.com",
			Items: []stripesim.ItemParams{{Price: w.monthly}}, CollectionMethod: stripesim.SendInvoice, DaysUntilDue: 14})
		return err
	})
	wantTypes(t, got, "customer.created", "customer.subscription.created", "invoice.created", "invoice.finalized")
	sub := w.subscription(t, res.Subscription)
	inv, _ := w.sim.Invoice(res.Invoice)
	if sub.Status != stripesim.StatusActive || inv.Status != "open" || inv.DueDate != inv.FinalizedAt+14*86400 ||
		inv.CollectionMethod != stripesim.SendInvoice || len(w.sim.Charges(inv.ID)) != 0 {
		t.Fatalf("at creation: got %s, invoice %s due %d (finalized %d), %d charges; want active, open, due in 14 days, none",
			sub.Status, inv.Status, inv.DueDate, inv.FinalizedAt, len(w.sim.Charges(inv.ID)))
	}
	if pt := w.sim.PaidThrough(res.Subscription); !pt.IsZero() {
		t.Fatalf("paid through %s with the first invoice open, want nothing", pt)
	}

	wantTypes(t, w.emitted(t, func() error { advanceTo(w, inv.DueDate, -time.Second); return nil }))
	wantTypes(t, w.emitted(t, func() error { w.sim.Advance(time.Second); return nil }), "customer.subscription.updated")
	if got := w.subscription(t, res.Subscription).Status; got != stripesim.StatusPastDue {
		t.Fatalf("after the due date: got %s, want past_due", got)
	}
	wantTypes(t, w.emitted(t, func() error { return w.sim.PayInvoice(inv.ID) }),
		"charge.succeeded", "invoice.paid", "invoice.payment_succeeded", "customer.subscription.updated")
	if got := w.subscription(t, res.Subscription).Status; got != stripesim.StatusActive {
		t.Fatalf("after paying: got %s, want active", got)
	}

	// The renewal is sent (finalized, open) an hour after the period ends, not charged.
	got = w.emitted(t, func() error { advanceTo(w, sub.CurrentPeriodEnd, 2*hour); return nil })
	wantTypes(t, got, "customer.subscription.updated", "invoice.created", "invoice.finalized")
	sub = w.subscription(t, res.Subscription)
	renewal, _ := w.sim.Invoice(sub.LatestInvoice)
	if sub.Status != stripesim.StatusActive || renewal.Status != "open" || renewal.AttemptCount != 0 || renewal.DueDate == 0 {
		t.Fatalf("renewal: got %s, invoice %+v; want active with an open, unattempted invoice", sub.Status, renewal)
	}
	wantTypes(t, w.emitted(t, func() error { return w.sim.PayOutOfBand(renewal.ID) }), "invoice.paid")
	if pt := w.sim.PaidThrough(res.Subscription); pt.Unix() != sub.CurrentPeriodEnd {
		t.Fatalf("paid through %s, want the renewed period's end", pt)
	}

	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	_, s := call(t, srv, "GET", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", nil)
	_, i := call(t, srv, "GET", "/v1/invoices/"+res.Invoice, "sk_test_sim", nil)
	if s["collection_method"] != "send_invoice" || s["days_until_due"] != 14.0 || i["collection_method"] != "send_invoice" ||
		int64(i["due_date"].(float64)) != inv.DueDate {
		t.Fatalf("rendered: subscription %v/%v, invoice %v/%v", s["collection_method"], s["days_until_due"], i["collection_method"], i["due_date"])
	}
}

// After the due date the account's "additional deadline" ends the subscription, or
// leaves it past_due when there is none.
func TestSendInvoiceDeadline(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		dunning stripesim.Dunning
		want    string
	}{
		"no deadline":           {stripesim.Dunning{}, stripesim.StatusPastDue},
		"then unpaid":           {stripesim.Dunning{InvoiceGrace: 7 * dayD, Final: stripesim.StatusUnpaid}, stripesim.StatusUnpaid},
		"then canceled":         {stripesim.Dunning{InvoiceGrace: 7 * dayD}, stripesim.StatusCanceled},
		"deadline not yet gone": {stripesim.Dunning{InvoiceGrace: 30 * dayD}, stripesim.StatusPastDue},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, stripesim.Options{Dunning: tc.dunning})
			res, err := w.sim.CreateSubscription(stripesim.SubscriptionParams{Email: "a@example.com",
				Items: []stripesim.ItemParams{{Price: w.yearly}}, CollectionMethod: stripesim.SendInvoice, DaysUntilDue: 30})
			mustNil(t, err)
			w.sim.Advance(40 * dayD)
			if got := w.subscription(t, res.Subscription).Status; got != tc.want {
				t.Fatalf("40 days after sending: got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestCreateSubscriptionRefuses(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	metered := w.meteredPrice(t)
	tests := map[string]struct {
		p    stripesim.SubscriptionParams
		want string
	}{
		"send_invoice without days":   {stripesim.SubscriptionParams{CollectionMethod: stripesim.SendInvoice}, "days_until_due is required"},
		"days without send_invoice":   {stripesim.SubscriptionParams{DaysUntilDue: 30}, "valid only when"},
		"unknown collection method":   {stripesim.SubscriptionParams{CollectionMethod: "cash"}, "collection method"},
		"a quantity on a metered one": {stripesim.SubscriptionParams{Items: []stripesim.ItemParams{{Price: metered, Quantity: 2}}}, "You cannot set the quantity for metered plans"},
	}
	for name, tc := range tests {
		if tc.p.Items == nil {
			tc.p.Items = []stripesim.ItemParams{{Price: w.monthly}}
		}
		_, err := w.sim.CreateSubscription(tc.p)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, tc.want)
		}
	}
	_, err := w.sim.Checkout(stripesim.CheckoutParams{Items: []stripesim.ItemParams{{Price: metered, Quantity: 1}}})
	if err == nil || !strings.Contains(err.Error(), "Quantity should not be specified where usage_type is `metered`") {
		t.Errorf("checkout with a metered quantity: got %v", err)
	}
}

// While collection is paused the subscription stays active and its renewal invoices
// are kept as drafts, marked uncollectible or voided, never charged.
func TestPauseCollection(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		behavior   string
		wantEvents []string
		wantStatus string
	}{
		stripesim.PauseKeepAsDraft: {stripesim.PauseKeepAsDraft,
			[]string{"customer.subscription.updated", "invoice.created"}, "draft"},
		stripesim.PauseMarkUncollectible: {stripesim.PauseMarkUncollectible,
			[]string{"customer.subscription.updated", "invoice.created", "invoice.finalized", "invoice.marked_uncollectible"}, "uncollectible"},
		stripesim.PauseVoid: {stripesim.PauseVoid,
			[]string{"customer.subscription.updated", "invoice.created", "invoice.finalized", "invoice.voided"}, "void"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, stripesim.Options{})
			res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "p@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
			mustNil(t, err)
			n := w.sim.EventCount()
			mustNil(t, w.sim.SetPauseCollection(res.Subscription, tc.behavior, time.Time{}))
			evs := w.sim.Events()[n:]
			if len(evs) != 1 || evs[0].Type != "customer.subscription.updated" || evs[0].Previous["pause_collection"] != nil {
				t.Fatalf("pausing: got %+v, want one update whose previous pause_collection is null", evs)
			}
			sub := w.subscription(t, res.Subscription)
			if sub.Status != stripesim.StatusActive || sub.PauseCollection == nil || sub.PauseCollection.Behavior != tc.behavior {
				t.Fatalf("got %s %+v, want active with pause_collection %s", sub.Status, sub.PauseCollection, tc.behavior)
			}

			got := w.emitted(t, func() error { advanceTo(w, sub.CurrentPeriodEnd, 2*hour); return nil })
			wantTypes(t, got, tc.wantEvents...)
			sub = w.subscription(t, res.Subscription)
			inv, _ := w.sim.Invoice(sub.LatestInvoice)
			if sub.Status != stripesim.StatusActive || inv.Status != tc.wantStatus || inv.Paid || len(w.sim.Charges(inv.ID)) != 0 {
				t.Fatalf("renewal while paused: got %s, invoice %s paid=%v with %d charges; want active, %s, unpaid, none",
					sub.Status, inv.Status, inv.Paid, len(w.sim.Charges(inv.ID)), tc.wantStatus)
			}
			srv := httptest.NewServer(w.sim)
			defer srv.Close()
			_, s := call(t, srv, "GET", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", nil)
			_, i := call(t, srv, "GET", "/v1/invoices/"+inv.ID, "sk_test_sim", nil)
			if pc, _ := s["pause_collection"].(map[string]any); pc["behavior"] != tc.behavior || i["auto_advance"] != false {
				t.Fatalf("rendered pause_collection %v, invoice auto_advance %v", s["pause_collection"], i["auto_advance"])
			}
		})
	}
}

// A pause with resumes_at ends by itself; the next renewal is charged.
func TestPauseCollectionResumes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "p@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	mustNil(t, err)
	sub := w.subscription(t, res.Subscription)
	resume := time.Unix(sub.CurrentPeriodEnd, 0).Add(10 * dayD)
	mustNil(t, w.sim.SetPauseCollection(res.Subscription, stripesim.PauseVoid, resume))
	got := w.emitted(t, func() error { w.sim.Advance(resume.Sub(w.sim.Now())); return nil })
	wantTypes(t, got, "customer.subscription.updated", "invoice.created", "invoice.finalized", "invoice.voided", "customer.subscription.updated")
	if sub = w.subscription(t, res.Subscription); sub.PauseCollection != nil {
		t.Fatalf("got pause_collection %+v after resumes_at, want none", sub.PauseCollection)
	}
	w.sim.Advance(time.Unix(sub.CurrentPeriodEnd, 0).Sub(w.sim.Now()) + 2*hour)
	inv, _ := w.sim.Invoice(w.subscription(t, res.Subscription).LatestInvoice)
	if inv.Status != "paid" {
		t.Fatalf("first renewal after the pause: got %s, want paid", inv.Status)
	}
	if err := w.sim.SetPauseCollection(res.Subscription, "skip", time.Time{}); err == nil {
		t.Fatal("an unknown behavior was accepted")
	}
}

func (w *world) meteredPrice(t *testing.T) string {
	t.Helper()
	prod := w.sim.CreateProduct("API calls", nil)
	p, err := w.sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 10, UsageType: stripesim.UsageMetered})
	mustNil(t, err)
	return p
}

// Metered usage is billed at the period's end, in arrears: the renewal invoice's metered
// line covers the period that just ended, its licensed line the one that starts.
func TestMeteredUsage(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		licensed bool
	}{
		"metered only":          {false},
		"metered with licensed": {true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, stripesim.Options{})
			metered := w.meteredPrice(t)
			items := []stripesim.ItemParams{{Price: metered}}
			if tc.licensed {
				items = append(items, stripesim.ItemParams{Price: w.monthly})
			}
			res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "m@example.com", Items: items})
			mustNil(t, err)
			first, _ := w.sim.Invoice(res.Invoice)
			sub := w.subscription(t, res.Subscription)
			wantFirst := int64(0)
			if tc.licensed {
				wantFirst = 3000
			}
			if !first.Paid || first.Total() != wantFirst || first.Lines[0].Quantity != 0 || first.Lines[0].Amount != 0 {
				t.Fatalf("first invoice: got total %d, lines %+v; want %d with a metered line for nothing", first.Total(), first.Lines, wantFirst)
			}
			mustNil(t, w.sim.ReportUsage(sub.Items[0].ID, 5))
			mustNil(t, w.sim.ReportUsage(sub.Items[0].ID, 2))
			p0s, p0e := sub.CurrentPeriodStart, sub.CurrentPeriodEnd

			advanceTo(w, p0e, 2*hour)
			sub = w.subscription(t, res.Subscription)
			renewal, _ := w.sim.Invoice(sub.LatestInvoice)
			var usage *stripesim.LineItem
			for _, l := range renewal.Lines {
				if l.Price == metered {
					usage = l
				} else if l.PeriodStart != sub.CurrentPeriodStart || l.PeriodEnd != sub.CurrentPeriodEnd {
					t.Fatalf("licensed line covers %d-%d, want the new period %d-%d", l.PeriodStart, l.PeriodEnd, sub.CurrentPeriodStart, sub.CurrentPeriodEnd)
				}
			}
			if usage == nil || usage.Quantity != 7 || usage.Amount != 70 || usage.PeriodStart != p0s || usage.PeriodEnd != p0e || !renewal.Paid {
				t.Fatalf("usage line: got %+v (invoice paid %v), want 7 units, 70, for the period just ended %d-%d", usage, renewal.Paid, p0s, p0e)
			}
			if sub.Items[0].Usage != 0 {
				t.Fatalf("usage after billing: got %d, want 0", sub.Items[0].Usage)
			}
			if pt := w.sim.PaidThrough(res.Subscription); pt.Unix() != sub.CurrentPeriodEnd {
				t.Fatalf("paid through %s, want the current period's end %s", pt, time.Unix(sub.CurrentPeriodEnd, 0).UTC())
			}

			srv := httptest.NewServer(w.sim)
			defer srv.Close()
			_, s := call(t, srv, "GET", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", nil)
			item := s["items"].(map[string]any)["data"].([]any)[0].(map[string]any)
			recurring := item["price"].(map[string]any)["recurring"].(map[string]any)
			if _, has := item["quantity"]; has || recurring["usage_type"] != "metered" {
				t.Fatalf("metered item rendered with quantity %v, usage_type %v", item["quantity"], recurring["usage_type"])
			}
		})
	}
}

func TestReportUsageRefuses(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "m@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	mustNil(t, err)
	licensed := w.subscription(t, res.Subscription).Items[0].ID
	tests := map[string]struct {
		item     string
		quantity int64
	}{
		"a licensed item": {licensed, 1},
		"an unknown item": {"si_nope", 1},
		"negative usage":  {licensed, -1},
	}
	for name, tc := range tests {
		if err := w.sim.ReportUsage(tc.item, tc.quantity); err == nil {
			t.Errorf("%s: got no error", name)
		}
	}
}

// Moving a trial's end moves the period end with it and makes no invoice.
func TestExtendTrial(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "t@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}, TrialDays: 14})
	mustNil(t, err)
	before := w.subscription(t, res.Subscription)
	end := time.Unix(before.TrialEnd, 0).Add(30 * dayD)
	n := w.sim.EventCount()
	mustNil(t, w.sim.ExtendTrial(res.Subscription, end))
	evs := w.sim.Events()[n:]
	if len(evs) != 1 || evs[0].Type != "customer.subscription.updated" || evs[0].Previous["trial_end"] != before.TrialEnd {
		t.Fatalf("got %+v, want one update with the old trial_end", evs)
	}
	sub := w.subscription(t, res.Subscription)
	if sub.TrialEnd != end.Unix() || sub.CurrentPeriodEnd != end.Unix() || len(w.sim.Invoices(res.Subscription)) != 1 {
		t.Fatalf("got trial end %d, period end %d, %d invoices; want %d, %d, 1", sub.TrialEnd, sub.CurrentPeriodEnd,
			len(w.sim.Invoices(res.Subscription)), end.Unix(), end.Unix())
	}
	if pt := w.sim.PaidThrough(res.Subscription); !pt.Equal(end) {
		t.Fatalf("paid through %s, want the new trial end %s", pt, end)
	}
	advanceTo(w, before.TrialEnd, 2*hour)
	if got := w.subscription(t, res.Subscription).Status; got != stripesim.StatusTrialing {
		t.Fatalf("at the old trial end: got %s, want still trialing", got)
	}
	advanceTo(w, end.Unix(), 2*hour)
	sub = w.subscription(t, res.Subscription)
	if inv, _ := w.sim.Invoice(sub.LatestInvoice); sub.Status != stripesim.StatusActive || !inv.Paid || inv.Lines[0].PeriodStart != end.Unix() {
		t.Fatalf("at the new trial end: got %s, invoice %+v", sub.Status, inv)
	}
	if err := w.sim.ExtendTrial(res.Subscription, end.AddDate(0, 2, 0)); err == nil {
		t.Fatal("extended the trial of an active subscription")
	}
}
