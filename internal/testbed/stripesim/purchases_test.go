package stripesim_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// oneTime adds a one-time price to w.
func (w *world) oneTime(t *testing.T, amount int64) string {
	t.Helper()
	prod := w.sim.CreateProduct("Lifetime", nil)
	price, err := w.sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: amount, OneTime: true})
	if err != nil {
		t.Fatal(err)
	}
	return price
}

// A card payment completes at once: the charge succeeds, then checkout.session.completed
// with payment_status paid; with invoice creation the paid invoice's events come between.
func TestPaymentCheckout(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	price := w.oneTime(t, 9900)
	var res stripesim.PaymentResult
	wantTypes(t, w.emitted(t, func() (err error) {
		res, err = w.sim.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price, Quantity: 3}}})
		return err
	}), "customer.created", "charge.succeeded", "checkout.session.completed")
	cs, _ := w.sim.Session(res.Session)
	if !res.Completed || cs.Mode != stripesim.ModePayment || cs.Status != stripesim.SessionComplete || cs.PaymentStatus != "paid" ||
		cs.Total() != 3*9900 || cs.Subscription != "" || cs.Invoice != "" || !strings.HasPrefix(cs.PaymentIntent, "pi_") {
		t.Fatalf("got %+v, %+v", res, cs)
	}

	wantTypes(t, w.emitted(t, func() (err error) {
		res, err = w.sim.CheckoutPayment(stripesim.PaymentParams{Customer: res.Customer, Items: []stripesim.ItemParams{{Price: price}}, InvoiceCreation: true})
		return err
	}), "charge.succeeded", "invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_succeeded", "checkout.session.completed")
	inv, _ := w.sim.Invoice(res.Invoice)
	if cs, _ := w.sim.Session(res.Session); cs.Invoice != inv.ID || inv.Status != "paid" || inv.Subscription != "" || inv.Charge != "" ||
		inv.Lines[0].Type != "invoiceitem" {
		t.Fatalf("post-payment invoice: got %+v for session %+v", inv, cs)
	}

	// A declined card leaves the session open, and nothing completes.
	wantTypes(t, w.emitted(t, func() (err error) {
		res, err = w.sim.CheckoutPayment(stripesim.PaymentParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: price}}, CardDeclines: true})
		return err
	}), "customer.created", "charge.failed")
	if cs, _ := w.sim.Session(res.Session); res.Completed || cs.Status != stripesim.SessionOpen || cs.PaymentStatus != "unpaid" {
		t.Fatalf("declined: got %+v, %+v", res, cs)
	}

	// A guest's payment creates no customer.
	res, err := w.sim.CheckoutPayment(stripesim.PaymentParams{Guest: true, Email: "g@example.com", Name: "Guest", Items: []stripesim.ItemParams{{Price: price}}})
	if cs, _ := w.sim.Session(res.Session); err != nil || res.Customer != "" || cs.Customer != "" || cs.Email != "g@example.com" {
		t.Fatalf("guest: got %+v, %v", cs, err)
	}
}

// A delayed payment method completes the session unpaid; the payment settles later, with
// its own event.
func TestAsyncPayment(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	price := w.oneTime(t, 9900)
	for _, tc := range []struct {
		succeeded bool
		events    []string
		status    string
	}{
		{true, []string{"charge.succeeded", "checkout.session.async_payment_succeeded"}, "paid"},
		{false, []string{"charge.failed", "checkout.session.async_payment_failed"}, "unpaid"},
	} {
		var res stripesim.PaymentResult
		wantTypes(t, w.emitted(t, func() (err error) {
			res, err = w.sim.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}, Async: true})
			return err
		}), "customer.created", "charge.pending", "checkout.session.completed")
		if cs, _ := w.sim.Session(res.Session); cs.Status != stripesim.SessionComplete || cs.PaymentStatus != "unpaid" {
			t.Fatalf("processing: got %+v", cs)
		}
		wantTypes(t, w.emitted(t, func() error { return w.sim.SettleAsyncPayment(res.Session, tc.succeeded) }), tc.events...)
		if cs, _ := w.sim.Session(res.Session); cs.PaymentStatus != tc.status {
			t.Fatalf("settled %v: got payment status %s, want %s", tc.succeeded, cs.PaymentStatus, tc.status)
		}
		if err := w.sim.SettleAsyncPayment(res.Session, true); err == nil {
			t.Fatal("settled twice: got no error")
		}
	}
}

// An invoice of no subscription is charged at once, or sent and paid later; a declined
// card leaves it open with no retry. Its charge can be refunded and disputed.
func TestOneOffInvoices(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	price := w.oneTime(t, 5000)
	var res stripesim.InvoiceResult
	wantTypes(t, w.emitted(t, func() (err error) {
		res, err = w.sim.CreateInvoice(stripesim.InvoiceParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price, Quantity: 2}}})
		return err
	}), "customer.created", "invoice.created", "invoice.finalized", "charge.succeeded", "invoice.paid", "invoice.payment_succeeded")
	inv, _ := w.sim.Invoice(res.Invoice)
	if inv.Status != "paid" || inv.Subscription != "" || inv.BillingReason != "manual" || inv.Total() != 10000 {
		t.Fatalf("got %+v", inv)
	}
	charge := w.sim.Charges(inv.ID)[0].ID
	wantTypes(t, w.emitted(t, func() error { _, err := w.sim.Refund(charge, 0); return err }), "charge.refunded")
	wantTypes(t, w.emitted(t, func() error { _, err := w.sim.Dispute(charge, ""); return err }), "charge.dispute.created")

	res, err := w.sim.CreateInvoice(stripesim.InvoiceParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: price}},
		CollectionMethod: stripesim.SendInvoice, DaysUntilDue: 30})
	mustNil(t, err)
	if inv, _ := w.sim.Invoice(res.Invoice); inv.Status != "open" || inv.DueDate != inv.FinalizedAt+30*86400 {
		t.Fatalf("sent: got %+v", inv)
	}
	wantTypes(t, w.emitted(t, func() error { return w.sim.PayOutOfBand(res.Invoice) }), "invoice.paid")

	res, err = w.sim.CreateInvoice(stripesim.InvoiceParams{Email: "c@example.com", Items: []stripesim.ItemParams{{Price: price}}, CardDeclines: true})
	mustNil(t, err)
	if inv, _ := w.sim.Invoice(res.Invoice); inv.Status != "open" || inv.NextPaymentAttempt != 0 {
		t.Fatalf("declined: got %+v", inv)
	}
	mustNil(t, w.sim.SetCardDeclines(res.Customer, false))
	wantTypes(t, w.emitted(t, func() error { return w.sim.PayInvoice(res.Invoice) }), "charge.succeeded", "invoice.paid", "invoice.payment_succeeded")
}

// One-time prices sell in payment mode and on invoices only; recurring prices never in
// payment mode.
func TestPriceTypesRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	price := w.oneTime(t, 100)
	if _, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}}); err == nil ||
		!strings.Contains(err.Error(), "type=one_time") {
		t.Fatalf("a one-time price on a subscription: got %v", err)
	}
	if _, err := w.sim.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}}); err == nil ||
		!strings.Contains(err.Error(), "recurring price") {
		t.Fatalf("a recurring price in payment mode: got %v", err)
	}
	if _, err := w.sim.CreateInvoice(stripesim.InvoiceParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}}); err == nil {
		t.Fatal("a recurring price on an invoice: got no error")
	}
	prod := w.sim.CreateProduct("X", nil)
	if _, err := w.sim.CreatePrice(stripesim.PriceParams{Product: prod, OneTime: true, Interval: "month"}); err == nil {
		t.Fatal("a one-time price with an interval: got no error")
	}
}

// The API lists a session's line items (paged: they are not embedded), sessions by
// status, customer, payment intent and creation time, and charges by payment intent.
func TestAPIPurchaseLists(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	t.Cleanup(srv.Close)
	var items []stripesim.ItemParams
	for range 3 {
		items = append(items, stripesim.ItemParams{Price: w.oneTime(t, 100)})
	}
	res, err := w.sim.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: items})
	mustNil(t, err)
	open, err := w.sim.CheckoutPayment(stripesim.PaymentParams{Email: "b@example.com", Items: items[:1], CardDeclines: true})
	mustNil(t, err)

	status, body := call(t, srv, "GET", "/v1/checkout/sessions/"+res.Session+"/line_items?limit=2", "sk_test_sim", nil)
	if status != 200 || len(body["data"].([]any)) != 2 || body["has_more"] != true {
		t.Fatalf("first page: %d %v", status, body)
	}
	last := ids(body)[1]
	_, body = call(t, srv, "GET", "/v1/checkout/sessions/"+res.Session+"/line_items?limit=2&starting_after="+last, "sk_test_sim", nil)
	if len(body["data"].([]any)) != 1 || body["has_more"] != false {
		t.Fatalf("second page: %v", body)
	}

	for query, want := range map[string][]string{
		"status=complete":                              {res.Session},
		"status=open":                                  {open.Session},
		"customer=" + res.Customer:                     {res.Session},
		"payment_intent=" + open.PaymentIntent:         {open.Session},
		"created[gt]=" + url.QueryEscape("9999999999"): nil,
	} {
		_, body := call(t, srv, "GET", "/v1/checkout/sessions?"+query, "sk_test_sim", nil)
		if got := ids(body); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("sessions?%s: got %v, want %v", query, got, want)
		}
	}
	_, body = call(t, srv, "GET", "/v1/charges?payment_intent="+res.PaymentIntent, "sk_test_sim", nil)
	if got := ids(body); len(got) != 1 || got[0] != res.Charge {
		t.Fatalf("charges of the payment: got %v, want %s", got, res.Charge)
	}
	if status, _ := call(t, srv, "GET", "/v1/checkout/sessions?status=paid", "sk_test_sim", nil); status != 400 {
		t.Fatalf("an unknown status: got %d, want 400", status)
	}
}

// The control API plays one-time purchases: a one-time price, a payment-mode checkout
// settled later, and an invoice of no subscription.
func TestControlPurchases(t *testing.T) {
	t.Parallel()
	sim := stripesim.New(stripesim.Options{})
	t.Cleanup(sim.Close)
	srv := httptest.NewServer(sim.ControlHandler())
	t.Cleanup(srv.Close)
	post := func(path, body string) map[string]any {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %d %v", path, resp.StatusCode, out)
		}
		return out
	}
	prod := post("/products", `{"name":"Lifetime"}`)["id"].(string)
	price := post("/prices", `{"product":"`+prod+`","unit_amount":900,"type":"one_time"}`)["id"].(string)
	res := post("/checkout", `{"mode":"payment","email":"a@example.com","items":[{"price":"`+price+`"}],"async":true}`)
	session := res["session"].(string)
	post("/checkout/"+session+"/settle", `{"succeeded":true}`)
	if cs, _ := sim.Session(session); cs.PaymentStatus != "paid" || cs.Mode != stripesim.ModePayment {
		t.Fatalf("got %+v, want a paid payment-mode session", cs)
	}
	inv := post("/invoices", `{"email":"b@example.com","items":[{"price":"`+price+`","quantity":2}]}`)["invoice"].(string)
	if got, _ := sim.Invoice(inv); got.Status != "paid" || got.Total() != 1800 {
		t.Fatalf("got %+v, want a paid invoice of 1800", got)
	}
	resp, err := http.Post(srv.URL+"/checkout", "application/json", strings.NewReader(`{"mode":"setup","items":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 422 {
		t.Fatalf("mode setup: got %d, want 422", resp.StatusCode)
	}
}

// A subscription's Checkout Session stays open while its first payment fails, and
// completes when the invoice is paid.
func TestSubscriptionSessionOpenUntilPaid(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}, CardDeclines: true})
	mustNil(t, err)
	if cs, _ := w.sim.Session(res.Session); cs.Status != stripesim.SessionOpen || cs.Mode != stripesim.ModeSubscription {
		t.Fatalf("declined: got %+v, want an open subscription-mode session", cs)
	}
	mustNil(t, w.sim.SetCardDeclines(res.Customer, false))
	mustNil(t, w.sim.PayInvoice(res.Invoice))
	if cs, _ := w.sim.Session(res.Session); cs.Status != stripesim.SessionComplete || cs.PaymentStatus != "paid" {
		t.Fatalf("paid: got %+v, want complete", cs)
	}
}
