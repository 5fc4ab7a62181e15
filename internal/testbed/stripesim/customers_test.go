package stripesim_test

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"

	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// GET /v1/customers?email= lists the customers with exactly that address, newest
// first; the filter is case-sensitive, as Stripe documents it. Each customer validates
// against the spec and the list decodes into stripe-go's type.
func TestAPICustomersByEmail(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	var ada []string
	for _, email := range []string{"ada@example.com", "bob@example.com", "ada@example.com", "Ada@Example.com"} {
		res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: email, Items: []stripesim.ItemParams{{Price: w.monthly}}})
		if err != nil {
			t.Fatal(err)
		}
		if email == "ada@example.com" {
			ada = append(ada, res.Customer)
		}
	}
	slices.Reverse(ada)

	raw := get(t, srv, "/v1/customers?limit=100&email="+url.QueryEscape("ada@example.com"))
	var list stripe.CustomerList
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range list.Data {
		got = append(got, c.ID)
		if c.Email != "ada@example.com" {
			t.Fatalf("customer %s has email %q, want ada@example.com only", c.ID, c.Email)
		}
	}
	if !slices.Equal(got, ada) {
		t.Fatalf("got customers %v, want %v (newest first, exact address)", got, ada)
	}
	var objs struct {
		Data []json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(raw, &objs)
	for _, o := range objs.Data {
		validate(t, "customer", o)
	}
	if err := json.Unmarshal(get(t, srv, "/v1/customers?email=nobody%40example.com"), &list); err != nil || len(list.Data) != 0 {
		t.Fatalf("an unknown address: got %d customers (%v), want none", len(list.Data), err)
	}
	if raw := get(t, srv, "/v1/customers?limit=100"); json.Unmarshal(raw, &list) != nil || len(list.Data) != 4 {
		t.Fatalf("without a filter: got %d customers, want 4", len(list.Data))
	}
}

// A Checkout whose card is declined leaves its session open and unpaid (the customer
// is still on Checkout's page); paying the invoice completes it.
func TestDeclinedCheckoutSessionStaysOpen(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", CardDeclines: true, Items: []stripesim.ItemParams{{Price: w.monthly}}})
	if err != nil || res.Completed {
		t.Fatalf("got %+v, %v, want an incomplete checkout", res, err)
	}
	read := func() stripe.CheckoutSession {
		raw := get(t, srv, "/v1/checkout/sessions/"+res.Session)
		validate(t, "checkout.session", raw)
		var s stripe.CheckoutSession
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if s := read(); s.Status != stripe.CheckoutSessionStatusOpen || s.PaymentStatus != stripe.CheckoutSessionPaymentStatusUnpaid {
		t.Fatalf("declined: got status %s, payment_status %s, want open and unpaid", s.Status, s.PaymentStatus)
	}
	if err := w.sim.SetCardDeclines(res.Customer, false); err != nil {
		t.Fatal(err)
	}
	if err := w.sim.PayInvoice(res.Invoice); err != nil {
		t.Fatal(err)
	}
	if s := read(); s.Status != stripe.CheckoutSessionStatusComplete || s.PaymentStatus != stripe.CheckoutSessionPaymentStatusPaid {
		t.Fatalf("paid: got status %s, payment_status %s, want complete and paid", s.Status, s.PaymentStatus)
	}
}
