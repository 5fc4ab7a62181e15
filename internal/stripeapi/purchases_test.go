package stripeapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// A purchase's reads: the session's line items (their own list call) with each price's
// product, the payment's charges, the session of a payment and of a post-payment
// invoice, an invoice's twelve lines (past the ten embedded), and the sweep's lists.
func TestPurchaseReads(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{})
	ctx := context.Background()
	prod := b.sim.CreateProduct("Lifetime", map[string]string{"skm_product_id": "777"})
	once, _ := b.sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 9900, OneTime: true, Metadata: map[string]string{"skm": `{"F2":true}`}})
	start := b.sim.Now()
	b.checkout(t, 0) // a subscription's session: complete too
	paid, err := b.sim.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: once, Quantity: 2}},
		InvoiceCreation: true})
	if err != nil {
		t.Fatal(err)
	}

	sess, err := b.client.GetCheckoutSession(ctx, paid.Session)
	if err != nil {
		t.Fatal(err)
	}
	items, err := b.client.SessionLineItems(ctx, paid.Session)
	if err != nil {
		t.Fatal(err)
	}
	p := stripeapi.SessionPurchase(sess, items)
	if !p.Paid || p.CustomerID != paid.Customer || len(p.Items) != 1 || !p.Items[0].OneTime || p.Items[0].Quantity != 2 ||
		p.Items[0].PriceMetadata["skm"] != `{"F2":true}` || p.Items[0].ProductMetadata["skm_product_id"] != "777" {
		t.Fatalf("got %+v", p)
	}
	charges, err := b.client.PaymentCharges(ctx, paid.PaymentIntent)
	if err != nil || len(charges) != 1 || charges[0].ID != paid.Charge {
		t.Fatalf("charges: got %v, %v", charges, err)
	}
	if s, err := b.client.PaymentSession(ctx, paid.PaymentIntent); err != nil || s == nil || s.ID != paid.Session {
		t.Fatalf("session of the payment: got %v, %v", s, err)
	}
	if s, err := b.client.PaymentSession(ctx, "pi_elsewhere"); err != nil || s != nil {
		t.Fatalf("session of a payment made elsewhere: got %v, %v, want none", s, err)
	}
	if id, err := b.client.InvoiceSession(ctx, paid.Customer, paid.Invoice); err != nil || id != paid.Session {
		t.Fatalf("session of the post-payment invoice: got %q, %v", id, err)
	}

	var many []stripesim.ItemParams
	for range 12 {
		many = append(many, stripesim.ItemParams{Price: once})
	}
	oneOff, err := b.sim.CreateInvoice(stripesim.InvoiceParams{Email: "b@example.com", Items: many})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := b.client.PurchaseInvoice(ctx, oneOff.Invoice)
	if err != nil {
		t.Fatal(err)
	}
	ip := stripeapi.InvoicePurchase(inv)
	if !ip.Paid || len(ip.Items) != 12 || ip.Items[11].ProductMetadata["skm_product_id"] != "777" || inv.Charge == nil || inv.Charge.Object != "charge" {
		t.Fatalf("invoice purchase: got %+v (charge %+v)", ip, inv.Charge)
	}
	if id, err := b.client.InvoiceSession(ctx, oneOff.Customer, oneOff.Invoice); err != nil || id != "" {
		t.Fatalf("session of a one-off invoice: got %q, %v, want none", id, err)
	}

	var modes []string
	for s, err := range b.client.CompleteSessions(ctx, start) {
		if err != nil {
			t.Fatal(err)
		}
		modes = append(modes, string(s.Mode))
	}
	if len(modes) != 2 || modes[0] != "payment" || modes[1] != "subscription" {
		t.Fatalf("complete sessions: got modes %v, want the payment and the subscription, newest first", modes)
	}
	n := 0
	for range b.client.CompleteSessions(ctx, b.sim.Now().Add(time.Hour)) {
		n++
	}
	var noSub int
	for inv, err := range b.client.PaidInvoicesSince(ctx, start) {
		if err != nil {
			t.Fatal(err)
		}
		if inv.Subscription == nil {
			noSub++
		}
	}
	if n != 0 || noSub != 2 {
		t.Fatalf("got %d sessions from the future and %d paid invoices of no subscription, want 0 and 2", n, noSub)
	}
}
