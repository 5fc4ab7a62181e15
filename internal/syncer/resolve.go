package syncer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/events"
)

// Resolver reads the objects that lead from an event to its subscription or purchase,
// at keysync's API version (events.StripeAPIVersion).
type Resolver interface {
	GetInvoice(ctx context.Context, id string) (*stripe.Invoice, error)
	GetCharge(ctx context.Context, id string) (*stripe.Charge, error)
	GetDispute(ctx context.Context, id string) (*stripe.Dispute, error)
	GetCheckoutSession(ctx context.Context, id string) (*stripe.CheckoutSession, error)
	PaymentSession(ctx context.Context, paymentIntent string) (*stripe.CheckoutSession, error)
}

// ref reads an expandable reference: an id, or an object with an id.
func ref(raw json.RawMessage) string {
	var id string
	if json.Unmarshal(raw, &id) == nil {
		return id
	}
	var obj struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(raw, &obj)
	return obj.ID
}

// Target is what an event is about: a subscription, or a one-time purchase (a
// Checkout Session in payment mode, or an invoice of no subscription). Both are empty
// for an event about nothing keysync licenses (a setup-mode session, a charge made
// outside Checkout and invoices).
type Target struct {
	Subscription string
	Purchase     string
}

// SubscriptionFor returns the subscription an event is about, or "" when it is about
// none (see TargetFor).
func SubscriptionFor(ctx context.Context, r Resolver, typ string, payload []byte) (string, error) {
	t, err := TargetFor(ctx, r, typ, payload)
	return t.Subscription, err
}

// TargetFor returns the subscription or purchase an event is about. Charges and
// disputes are followed to their invoice (its subscription, or the invoice itself as a
// purchase), or, without one, to the Checkout Session of their payment. The payload of
// an event in keysync's API version is read as it is; of an event in any other version
// (an endpoint or an account on 2025-03-31.basil, say, where invoice.subscription moved
// and charge.invoice is gone) only the object's kind and id are, and the object is read
// from the API, which answers in keysync's version. typ is not needed: the object's
// kind says where to look. It returns an error matching ErrPermanent for a payload that
// is not an event.
func TargetFor(ctx context.Context, r Resolver, typ string, payload []byte) (Target, error) {
	var ev struct {
		APIVersion string `json:"api_version"`
		Data       struct {
			Object map[string]json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(payload, &ev); err != nil {
		return Target{}, fmt.Errorf("%w: event payload: %v", ErrPermanent, err)
	}
	obj := ev.Data.Object
	var kind string
	_ = json.Unmarshal(obj["object"], &kind)
	id := ref(obj["id"])

	// 1. Another version: trust only what every version has, and read the object.
	if !events.Pinned(ev.APIVersion) {
		return readTargetOf(ctx, r, kind, id)
	}

	// 2. keysync's own version: the payload says it, saving the API calls.
	switch kind {
	case "subscription":
		return Target{Subscription: id}, nil
	case "invoice":
		if sub := ref(obj["subscription"]); sub != "" {
			return Target{Subscription: sub}, nil
		}
		return Target{Purchase: id}, nil
	case "checkout.session":
		var mode string
		_ = json.Unmarshal(obj["mode"], &mode)
		return sessionTarget(mode, id, ref(obj["subscription"])), nil
	case "charge":
		return paymentTarget(ctx, r, ref(obj["invoice"]), ref(obj["payment_intent"]))
	case "dispute":
		return chargeTarget(ctx, r, ref(obj["charge"]))
	}
	return Target{}, nil
}

// sessionTarget is what a Checkout Session is about: its subscription, or itself as a
// purchase in payment mode (setup mode licenses nothing).
func sessionTarget(mode, id, subscription string) Target {
	switch mode {
	case string(stripe.CheckoutSessionModeSubscription):
		return Target{Subscription: subscription}
	case string(stripe.CheckoutSessionModePayment):
		return Target{Purchase: id}
	}
	return Target{}
}

// readTargetOf reads the object of the given kind and id from the API and returns what
// it is about.
func readTargetOf(ctx context.Context, r Resolver, kind, id string) (Target, error) {
	if id == "" {
		return Target{}, nil
	}
	switch kind {
	case "subscription":
		return Target{Subscription: id}, nil // the Sync reads it
	case "invoice":
		return invoiceTarget(ctx, r, id)
	case "checkout.session":
		s, err := r.GetCheckoutSession(ctx, id)
		if err != nil {
			return Target{}, fmt.Errorf("resolve checkout session: %w", err)
		}
		sub := ""
		if s.Subscription != nil {
			sub = s.Subscription.ID
		}
		return sessionTarget(string(s.Mode), s.ID, sub), nil
	case "charge":
		return chargeTarget(ctx, r, id)
	case "dispute":
		d, err := r.GetDispute(ctx, id)
		if err != nil {
			return Target{}, fmt.Errorf("resolve dispute: %w", err)
		}
		if d.Charge == nil {
			return Target{}, nil
		}
		return chargeTarget(ctx, r, d.Charge.ID)
	}
	return Target{}, nil
}

// chargeTarget reads a charge and follows it to what it paid for.
func chargeTarget(ctx context.Context, r Resolver, charge string) (Target, error) {
	if charge == "" {
		return Target{}, nil
	}
	ch, err := r.GetCharge(ctx, charge)
	if err != nil {
		return Target{}, fmt.Errorf("resolve charge: %w", err)
	}
	invoice, pi := "", ""
	if ch.Invoice != nil {
		invoice = ch.Invoice.ID
	}
	if ch.PaymentIntent != nil {
		pi = ch.PaymentIntent.ID
	}
	return paymentTarget(ctx, r, invoice, pi)
}

// paymentTarget is what a charge paid for: its invoice's subscription or the invoice
// as a purchase, else the Checkout Session of its PaymentIntent.
func paymentTarget(ctx context.Context, r Resolver, invoice, paymentIntent string) (Target, error) {
	switch {
	case invoice != "":
		return invoiceTarget(ctx, r, invoice)
	case paymentIntent != "":
		s, err := r.PaymentSession(ctx, paymentIntent)
		if err != nil {
			return Target{}, fmt.Errorf("resolve payment: %w", err)
		}
		if s == nil {
			return Target{}, nil // paid outside Checkout and invoices: nothing keysync sold
		}
		sub := ""
		if s.Subscription != nil {
			sub = s.Subscription.ID
		}
		return sessionTarget(string(s.Mode), s.ID, sub), nil
	}
	return Target{}, nil
}

// invoiceTarget reads an invoice: its subscription, or itself as a purchase.
func invoiceTarget(ctx context.Context, r Resolver, invoice string) (Target, error) {
	inv, err := r.GetInvoice(ctx, invoice)
	if err != nil {
		return Target{}, fmt.Errorf("resolve invoice: %w", err)
	}
	if inv.Subscription != nil {
		return Target{Subscription: inv.Subscription.ID}, nil
	}
	return Target{Purchase: inv.ID}, nil
}
