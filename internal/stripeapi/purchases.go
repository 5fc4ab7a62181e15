package stripeapi

import (
	"context"
	"iter"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/license"
)

// The reads of one-time purchases (DESIGN §2.1): Checkout Sessions in payment mode and
// invoices that belong to no subscription.

// purchaseLinesExpand expands each price's product (for skm_product_id metadata) on a
// list of a purchase's lines: a session's line items, an invoice's lines.
var purchaseLinesExpand = []*string{stripe.String("data.price.product")}

// purchaseInvoiceExpand is what a purchase's Sync needs of its invoice in one read: its
// lines' products and its charge (refunds, disputes).
var purchaseInvoiceExpand = []*string{stripe.String("lines.data.price.product"), stripe.String("charge")}

// SessionLineItems returns every line item of a Checkout Session, each price's product
// expanded. Stripe does not embed them in the session: they are read with their own
// list call, 100 a page.
func (c *Client) SessionLineItems(ctx context.Context, session string) ([]*stripe.LineItem, error) {
	p := &stripe.CheckoutSessionListLineItemsParams{Session: stripe.String(session)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	p.Expand = purchaseLinesExpand
	out, err := collect[*stripe.LineItem](c.api.CheckoutSessions.ListLineItems(p))
	if err != nil {
		return nil, c.wrap("list session line items", err)
	}
	return out, nil
}

// PurchaseInvoice returns an invoice with all its lines, each price's product expanded,
// and its charge expanded.
func (c *Client) PurchaseInvoice(ctx context.Context, id string) (*stripe.Invoice, error) {
	p := &stripe.InvoiceParams{}
	p.Context = ctx
	p.Expand = purchaseInvoiceExpand
	inv, err := c.api.Invoices.Get(id, p)
	if err != nil {
		return nil, c.wrap("get invoice", err)
	}
	if err := c.completeLines(ctx, inv, purchaseLinesExpand); err != nil {
		return nil, err
	}
	return inv, nil
}

// PaymentCharges returns the charges of a PaymentIntent (a Checkout payment's), newest
// first: a failed attempt, then the one that succeeded.
func (c *Client) PaymentCharges(ctx context.Context, paymentIntent string) ([]*stripe.Charge, error) {
	p := &stripe.ChargeListParams{PaymentIntent: stripe.String(paymentIntent)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	out, err := collect[*stripe.Charge](c.api.Charges.List(p))
	return out, c.wrap("list charges", err)
}

// PaymentSession returns the Checkout Session of a PaymentIntent, and nil when none made
// it (a payment made elsewhere).
func (c *Client) PaymentSession(ctx context.Context, paymentIntent string) (*stripe.CheckoutSession, error) {
	p := &stripe.CheckoutSessionListParams{PaymentIntent: stripe.String(paymentIntent)}
	p.Context = ctx
	p.Limit = stripe.Int64(1)
	p.Single = true
	it := c.api.CheckoutSessions.List(p)
	if it.Next() {
		return it.CheckoutSession(), nil
	}
	return nil, c.wrap("list checkout sessions", it.Err())
}

// InvoiceSession returns the Checkout Session that made an invoice (Checkout's
// post-payment invoices, session.invoice), and "" when none did. The invoice names no
// session, so the customer's sessions are listed: a customer has few.
func (c *Client) InvoiceSession(ctx context.Context, customer, invoice string) (string, error) {
	p := &stripe.CheckoutSessionListParams{Customer: stripe.String(customer)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	it := c.api.CheckoutSessions.List(p)
	for it.Next() {
		if s := it.CheckoutSession(); s.Invoice != nil && s.Invoice.ID == invoice {
			return s.ID, nil
		}
	}
	return "", c.wrap("list checkout sessions", it.Err())
}

// CompleteSessions yields the complete Checkout Sessions created at or after since,
// newest first, 100 a page (every mode: the caller picks payment mode). It stops at the
// first error, which it yields.
func (c *Client) CompleteSessions(ctx context.Context, since time.Time) iter.Seq2[*stripe.CheckoutSession, error] {
	return func(yield func(*stripe.CheckoutSession, error) bool) {
		p := &stripe.CheckoutSessionListParams{Status: stripe.String(string(stripe.CheckoutSessionStatusComplete)),
			CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: since.Unix()}}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		it := c.api.CheckoutSessions.List(p)
		for it.Next() {
			if !yield(it.CheckoutSession(), nil) {
				return
			}
		}
		if err := it.Err(); err != nil {
			yield(nil, c.wrap("list checkout sessions", err))
		}
	}
}

// PaidInvoicesSince yields the paid invoices created at or after since, of every
// subscription and of none, newest first, 100 a page. It stops at the first error,
// which it yields.
func (c *Client) PaidInvoicesSince(ctx context.Context, since time.Time) iter.Seq2[*stripe.Invoice, error] {
	return func(yield func(*stripe.Invoice, error) bool) {
		p := &stripe.InvoiceListParams{Status: stripe.String(string(stripe.InvoiceStatusPaid)),
			CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: since.Unix()}}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		it := c.api.Invoices.List(p)
		for it.Next() {
			if !yield(it.Invoice(), nil) {
				return
			}
		}
		if err := it.Err(); err != nil {
			yield(nil, c.wrap("list paid invoices", err))
		}
	}
}

// SessionPurchase is the policy's view of a Checkout Session in payment mode and its
// line items: paid when Checkout says paid or no_payment_required (a purchase made free
// by a discount). The caller adds refunds and disputes.
func SessionPurchase(s *stripe.CheckoutSession, items []*stripe.LineItem) license.Purchase {
	p := license.Purchase{ID: s.ID, Paid: s.Status == stripe.CheckoutSessionStatusComplete &&
		(s.PaymentStatus == stripe.CheckoutSessionPaymentStatusPaid || s.PaymentStatus == stripe.CheckoutSessionPaymentStatusNoPaymentRequired)}
	if s.Customer != nil {
		p.CustomerID = s.Customer.ID
	}
	for _, li := range items {
		p.Items = append(p.Items, PriceItem(li.Price, li.Quantity))
	}
	return p
}

// InvoicePurchase is the policy's view of an invoice that belongs to no subscription:
// paid when its status is paid (out of band too). The caller adds refunds and disputes.
func InvoicePurchase(inv *stripe.Invoice) license.Purchase {
	p := license.Purchase{ID: inv.ID, Paid: inv.Status == stripe.InvoiceStatusPaid}
	if inv.Customer != nil {
		p.CustomerID = inv.Customer.ID
	}
	if inv.Lines != nil {
		for _, l := range inv.Lines.Data {
			p.Items = append(p.Items, PriceItem(l.Price, l.Quantity))
		}
	}
	return p
}

// PriceItem is the mapping's view of quantity of a price bought once: a Checkout line
// item's or an invoice line's.
func PriceItem(price *stripe.Price, quantity int64) license.Item {
	out := license.Item{Quantity: quantity}
	if price != nil {
		out.PriceID, out.PriceMetadata, out.OneTime = price.ID, price.Metadata, price.Type == stripe.PriceTypeOneTime
		if price.Product != nil {
			out.ProductID, out.ProductMetadata = price.Product.ID, price.Product.Metadata
		}
	}
	return out
}
