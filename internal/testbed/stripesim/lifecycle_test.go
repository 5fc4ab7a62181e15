package stripesim_test

import (
	"slices"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

const hour = time.Hour
const dayD = 24 * time.Hour

type world struct {
	sim             *stripesim.Sim
	monthly, yearly string
	seat            string
}

func newWorld(t *testing.T, opts stripesim.Options) *world {
	t.Helper()
	sim := stripesim.New(opts)
	t.Cleanup(sim.Close)
	prod := sim.CreateProduct("Pro", nil)
	monthly, _ := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 3000})
	yearly, _ := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 30000, Interval: "year"})
	seat, _ := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 5000}) // an upgrade from monthly
	return &world{sim: sim, monthly: monthly, yearly: yearly, seat: seat}
}

// emitted runs action and returns the event types it emitted, in order.
func (w *world) emitted(t *testing.T, action func() error) []string {
	t.Helper()
	n := w.sim.EventCount()
	if err := action(); err != nil {
		t.Fatal(err)
	}
	return w.sim.EventTypes(n)
}

func wantTypes(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("got events\n  %v\nwant\n  %v", got, want)
	}
}

func (w *world) subscription(t *testing.T, id string) stripesim.Subscription {
	t.Helper()
	s, ok := w.sim.Subscription(id)
	if !ok {
		t.Fatalf("no subscription %s", id)
	}
	return s
}

func TestCheckoutWithTrialThenConversion(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	var res stripesim.CheckoutResult
	got := w.emitted(t, func() (err error) {
		res, err = w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}, TrialDays: 14})
		return err
	})
	wantTypes(t, got, "customer.created", "customer.subscription.created", "invoice.created", "invoice.finalized",
		"invoice.paid", "invoice.payment_succeeded", "checkout.session.completed")
	sub := w.subscription(t, res.Subscription)
	start := w.sim.Now().Unix()
	if sub.Status != stripesim.StatusTrialing || sub.TrialEnd != start+14*86400 || sub.CurrentPeriodEnd != sub.TrialEnd {
		t.Fatalf("got %+v", sub)
	}
	inv, _ := w.sim.Invoice(res.Invoice)
	if inv.Status != "paid" || inv.Total() != 0 || inv.BillingReason != "subscription_create" ||
		inv.Lines[0].Type != "subscription" || inv.Lines[0].PeriodEnd != sub.TrialEnd {
		t.Fatalf("trial invoice: got %+v (line %+v)", inv, inv.Lines[0])
	}

	// The trial ends: the period moves and a draft invoice appears, then an hour later it
	// is finalized and paid.
	got = w.emitted(t, func() error { w.sim.Advance(14*dayD + 30*time.Minute); return nil })
	wantTypes(t, got, "customer.subscription.updated", "invoice.created")
	sub = w.subscription(t, res.Subscription)
	draft, _ := w.sim.Invoice(sub.LatestInvoice)
	if sub.Status != stripesim.StatusActive || sub.CurrentPeriodStart != start+14*86400 || draft.Status != "draft" || draft.Paid {
		t.Fatalf("at conversion: got %s period %d, invoice %s — want active, moved, draft unpaid", sub.Status, sub.CurrentPeriodStart, draft.Status)
	}
	got = w.emitted(t, func() error { w.sim.Advance(hour); return nil })
	wantTypes(t, got, "invoice.finalized", "charge.succeeded", "invoice.paid", "invoice.payment_succeeded")
	paid, _ := w.sim.Invoice(sub.LatestInvoice)
	if paid.Status != "paid" || paid.Total() != 3000 || paid.BillingReason != "subscription_cycle" ||
		paid.Lines[0].PeriodStart != sub.CurrentPeriodStart || paid.Lines[0].PeriodEnd != sub.CurrentPeriodEnd {
		t.Fatalf("renewal invoice: got %+v", paid)
	}
}

func TestRenewalMovesThePeriodBeforePayment(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	first := w.subscription(t, res.Subscription)
	w.sim.Advance(31*dayD + 10*time.Minute) // Jan 1 + 1 month = Feb 1, then 10 minutes
	sub := w.subscription(t, res.Subscription)
	inv, _ := w.sim.Invoice(sub.LatestInvoice)
	if sub.CurrentPeriodStart != first.CurrentPeriodEnd || sub.CurrentPeriodEnd <= first.CurrentPeriodEnd || inv.Paid || inv.Status != "draft" {
		t.Fatalf("got period %d-%d, invoice %s paid=%v: the period must move before the invoice is paid",
			sub.CurrentPeriodStart, sub.CurrentPeriodEnd, inv.Status, inv.Paid)
	}
	// Months have different lengths: the period follows the calendar, not 30 days.
	if time.Unix(sub.CurrentPeriodEnd, 0).UTC().Format("2006-01-02") != "2026-03-01" {
		t.Fatalf("got period end %s, want 2026-03-01", time.Unix(sub.CurrentPeriodEnd, 0).UTC())
	}
}

func TestFailedRenewalAndRecovery(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	if err := w.sim.SetCardDeclines(res.Customer, true); err != nil {
		t.Fatal(err)
	}
	w.sim.Advance(31*dayD + 2*hour)
	sub := w.subscription(t, res.Subscription)
	inv, _ := w.sim.Invoice(sub.LatestInvoice)
	if sub.Status != stripesim.StatusPastDue || inv.Status != "open" || inv.AttemptCount != 1 || inv.NextPaymentAttempt == 0 {
		t.Fatalf("got %s, invoice %+v: a failed renewal leaves the subscription past_due", sub.Status, inv)
	}
	// First retry (3 days after the failure) fails again: no new status event.
	got := w.emitted(t, func() error { w.sim.Advance(3 * dayD); return nil })
	wantTypes(t, got, "charge.failed", "invoice.payment_failed")
	// The customer fixes the card; the next retry succeeds.
	_ = w.sim.SetCardDeclines(res.Customer, false)
	got = w.emitted(t, func() error { w.sim.Advance(2 * dayD); return nil })
	wantTypes(t, got, "charge.succeeded", "invoice.paid", "invoice.payment_succeeded", "customer.subscription.updated")
	if sub = w.subscription(t, res.Subscription); sub.Status != stripesim.StatusActive {
		t.Fatalf("got %s, want active after payment", sub.Status)
	}
}

func TestDunningEnds(t *testing.T) {
	t.Parallel()
	for _, final := range []string{stripesim.StatusCanceled, stripesim.StatusUnpaid} {
		t.Run(final, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, stripesim.Options{Dunning: stripesim.Dunning{Final: final}})
			res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
			_ = w.sim.SetCardDeclines(res.Customer, true)
			got := w.emitted(t, func() error { w.sim.Advance(31*dayD + 8*dayD); return nil }) // renewal + 3 retries
			failures := 0
			for _, typ := range got {
				if typ == "invoice.payment_failed" {
					failures++
				}
			}
			last := got[len(got)-1]
			wantLast := "customer.subscription.deleted"
			if final == stripesim.StatusUnpaid {
				wantLast = "customer.subscription.updated"
			}
			sub := w.subscription(t, res.Subscription)
			if failures != 4 || last != wantLast || sub.Status != final {
				t.Fatalf("got %d failures, last event %s, status %s; want 4, %s, %s", failures, last, sub.Status, wantLast, final)
			}
		})
	}
}

func TestExhaustDunningNow(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	_ = w.sim.FailNextPayment(res.Customer)
	w.sim.Advance(31*dayD + 2*hour)
	got := w.emitted(t, func() error { return w.sim.ExhaustDunning(res.Subscription, stripesim.StatusUnpaid) })
	if got[len(got)-1] != "customer.subscription.updated" || w.subscription(t, res.Subscription).Status != stripesim.StatusUnpaid {
		t.Fatalf("got %v, status %s", got, w.subscription(t, res.Subscription).Status)
	}
	// Paying the open invoice later reactivates the subscription.
	sub := w.subscription(t, res.Subscription)
	got = w.emitted(t, func() error { return w.sim.PayInvoice(sub.LatestInvoice) })
	wantTypes(t, got, "charge.succeeded", "invoice.paid", "invoice.payment_succeeded", "customer.subscription.updated")
}

func TestCancellation(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	got := w.emitted(t, func() error { return w.sim.CancelAtPeriodEnd(res.Subscription, true) })
	wantTypes(t, got, "customer.subscription.updated")
	sub := w.subscription(t, res.Subscription)
	if sub.Status != stripesim.StatusActive || !sub.CancelAtPeriodEnd || sub.CancelAt != sub.CurrentPeriodEnd {
		t.Fatalf("got %+v: still active until the period ends", sub)
	}
	got = w.emitted(t, func() error { w.sim.Advance(32 * dayD); return nil })
	wantTypes(t, got, "customer.subscription.deleted")
	sub = w.subscription(t, res.Subscription)
	if sub.Status != stripesim.StatusCanceled || sub.EndedAt != sub.CurrentPeriodEnd || sub.CancelReason != "cancellation_requested" {
		t.Fatalf("got %+v", sub)
	}
	other, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	wantTypes(t, w.emitted(t, func() error { return w.sim.CancelNow(other.Subscription) }), "customer.subscription.deleted")
}

func TestPlanChanges(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	w.sim.Advance(10 * dayD)
	before := w.subscription(t, res.Subscription)

	// Seats: prorations wait for the next invoice; the period does not move.
	wantTypes(t, w.emitted(t, func() error { return w.sim.ChangeQuantity(res.Subscription, 5, stripesim.ChangeOptions{}) }),
		"customer.subscription.updated")
	sub := w.subscription(t, res.Subscription)
	if sub.Items[0].Quantity != 5 || sub.CurrentPeriodEnd != before.CurrentPeriodEnd || sub.LatestInvoice != before.LatestInvoice {
		t.Fatalf("got %+v", sub)
	}
	w.sim.Advance(22 * dayD)
	renewal, _ := w.sim.Invoice(w.subscription(t, res.Subscription).LatestInvoice)
	if len(renewal.Lines) != 3 || !renewal.Lines[0].Proration || renewal.Lines[0].Type != "invoiceitem" || renewal.Lines[2].Type != "subscription" ||
		renewal.Lines[2].Quantity != 5 {
		t.Fatalf("renewal lines: got %+v, want 2 prorations then the subscription line", renewal.Lines)
	}

	// Upgrade billed now: an invoice of prorations only; paid-through does not move.
	got := w.emitted(t, func() error {
		return w.sim.ChangePrice(res.Subscription, w.seat, stripesim.ChangeOptions{InvoiceNow: true})
	})
	wantTypes(t, got, "customer.subscription.updated", "invoice.created", "invoice.finalized", "charge.succeeded", "invoice.paid", "invoice.payment_succeeded")
	inv, _ := w.sim.Invoice(w.subscription(t, res.Subscription).LatestInvoice)
	for _, l := range inv.Lines {
		if l.Type != "invoiceitem" || !l.Proration {
			t.Fatalf("an immediate proration invoice has only proration items, got %+v", l)
		}
	}

	// Monthly to yearly resets the billing cycle: a new year starts now and is invoiced now.
	now := w.sim.Now().Unix()
	got = w.emitted(t, func() error { return w.sim.ChangePrice(res.Subscription, w.yearly, stripesim.ChangeOptions{}) })
	wantTypes(t, got, "customer.subscription.updated", "invoice.created", "invoice.finalized", "charge.succeeded", "invoice.paid", "invoice.payment_succeeded")
	sub = w.subscription(t, res.Subscription)
	if sub.CurrentPeriodStart != now || time.Unix(sub.CurrentPeriodEnd, 0).Sub(time.Unix(now, 0)) < 365*dayD {
		t.Fatalf("got period %d-%d, want a year from now", sub.CurrentPeriodStart, sub.CurrentPeriodEnd)
	}
}

func TestPauseResumeRefundDispute(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	wantTypes(t, w.emitted(t, func() error { return w.sim.Pause(res.Subscription) }), "customer.subscription.updated", "customer.subscription.paused")
	w.sim.Advance(60 * dayD)
	if got := w.subscription(t, res.Subscription); got.Status != stripesim.StatusPaused || len(w.sim.Invoices(res.Subscription)) != 1 {
		t.Fatalf("a paused subscription is not invoiced: got %s with %d invoices", got.Status, len(w.sim.Invoices(res.Subscription)))
	}
	wantTypes(t, w.emitted(t, func() error { return w.sim.Resume(res.Subscription) }),
		"customer.subscription.resumed", "customer.subscription.updated", "invoice.created", "invoice.finalized",
		"charge.succeeded", "invoice.paid", "invoice.payment_succeeded")

	charge := w.sim.Charges(res.Invoice)[0].ID
	wantTypes(t, w.emitted(t, func() error { _, err := w.sim.Refund(charge, 0); return err }), "charge.refunded")
	var dispute string
	wantTypes(t, w.emitted(t, func() (err error) { dispute, err = w.sim.Dispute(charge, "fraudulent"); return err }), "charge.dispute.created")
	wantTypes(t, w.emitted(t, func() error { return w.sim.CloseDispute(dispute, false) }), "charge.dispute.closed")
}

func TestIncompleteCheckoutExpires(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	var res stripesim.CheckoutResult
	got := w.emitted(t, func() (err error) {
		res, err = w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}, CardDeclines: true})
		return err
	})
	wantTypes(t, got, "customer.created", "customer.subscription.created", "invoice.created", "invoice.finalized", "charge.failed", "invoice.payment_failed")
	if res.Completed || w.subscription(t, res.Subscription).Status != stripesim.StatusIncomplete {
		t.Fatalf("got %+v", res)
	}
	wantTypes(t, w.emitted(t, func() error { w.sim.Advance(24 * hour); return nil }), "invoice.voided", "customer.subscription.deleted")
	if got := w.subscription(t, res.Subscription).Status; got != stripesim.StatusIncompleteExpired {
		t.Fatalf("got %s", got)
	}
}

// PaidThrough follows the subscription lines of paid invoices only: not an open
// renewal, not an invoice item's period.
func TestPaidThrough(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "pt@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := w.sim.Subscription(res.Subscription)
	first := time.Unix(s.CurrentPeriodEnd, 0).UTC()
	if got := w.sim.PaidThrough(res.Subscription); !got.Equal(first) {
		t.Fatalf("after checkout: %s, want the first period's end %s", got, first)
	}
	if err := w.sim.FailNextPayment(s.Customer); err != nil {
		t.Fatal(err)
	}
	w.sim.Advance(first.Sub(w.sim.Now()) + 2*time.Hour) // the renewal is declined: its invoice stays open
	if got := w.sim.PaidThrough(res.Subscription); !got.Equal(first) {
		t.Fatalf("with the renewal open: %s, want still %s", got, first)
	}
	invs := w.sim.Invoices(res.Subscription)
	if err := w.sim.PayInvoice(invs[len(invs)-1].ID); err != nil {
		t.Fatal(err)
	}
	if got := w.sim.PaidThrough(res.Subscription); !got.After(first) {
		t.Fatalf("after paying the renewal: %s, want past %s", got, first)
	}
	if got := w.sim.PaidThrough("sub_unknown"); !got.IsZero() {
		t.Fatalf("unknown subscription: %s, want zero", got)
	}
}
