package syncer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/events"
)

// Resolver reads the objects that lead from an event to its subscription, at keysync's
// API version (events.StripeAPIVersion).
type Resolver interface {
	GetInvoice(ctx context.Context, id string) (*stripe.Invoice, error)
	GetCharge(ctx context.Context, id string) (*stripe.Charge, error)
	GetDispute(ctx context.Context, id string) (*stripe.Dispute, error)
	GetCheckoutSession(ctx context.Context, id string) (*stripe.CheckoutSession, error)
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

// SubscriptionFor returns the subscription an event is about, or "" when it is about
// none (a one-off invoice or charge, a payment-mode checkout). Charges and disputes are
// followed to their invoice's subscription through the API. The payload of an event in
// keysync's API version is read as it is; of an event in any other version (an
// endpoint or an account on 2025-03-31.basil, say, where invoice.subscription moved
// and charge.invoice is gone) only the object's kind and id are, and the object is read
// from the API, which answers in keysync's version. typ is not needed: the object's
// kind says where to look. It returns an error matching ErrPermanent for a payload that
// is not an event.
func SubscriptionFor(ctx context.Context, r Resolver, typ string, payload []byte) (string, error) {
	var ev struct {
		APIVersion string `json:"api_version"`
		Data       struct {
			Object map[string]json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(payload, &ev); err != nil {
		return "", fmt.Errorf("%w: event payload: %v", ErrPermanent, err)
	}
	obj := ev.Data.Object
	var kind string
	_ = json.Unmarshal(obj["object"], &kind)
	id := ref(obj["id"])

	// 1. Another version: trust only what every version has, and read the object.
	if !events.Pinned(ev.APIVersion) {
		return readSubscriptionOf(ctx, r, kind, id)
	}

	// 2. keysync's own version: the payload says it, saving the API calls.
	switch kind {
	case "subscription":
		return id, nil
	case "invoice", "checkout.session":
		return ref(obj["subscription"]), nil
	case "charge":
		return invoiceSubscription(ctx, r, ref(obj["invoice"]))
	case "dispute":
		return chargeSubscription(ctx, r, ref(obj["charge"]))
	}
	return "", nil
}

// readSubscriptionOf reads the object of the given kind and id from the API and
// returns the subscription it belongs to ("" for none).
func readSubscriptionOf(ctx context.Context, r Resolver, kind, id string) (string, error) {
	if id == "" {
		return "", nil
	}
	switch kind {
	case "subscription":
		return id, nil // the Sync reads it
	case "invoice":
		return invoiceSubscription(ctx, r, id)
	case "checkout.session":
		s, err := r.GetCheckoutSession(ctx, id)
		if err != nil {
			return "", fmt.Errorf("resolve checkout session: %w", err)
		}
		if s.Subscription == nil {
			return "", nil
		}
		return s.Subscription.ID, nil
	case "charge":
		return chargeSubscription(ctx, r, id)
	case "dispute":
		d, err := r.GetDispute(ctx, id)
		if err != nil {
			return "", fmt.Errorf("resolve dispute: %w", err)
		}
		if d.Charge == nil {
			return "", nil
		}
		return chargeSubscription(ctx, r, d.Charge.ID)
	}
	return "", nil
}

// chargeSubscription follows a charge to its invoice's subscription.
func chargeSubscription(ctx context.Context, r Resolver, charge string) (string, error) {
	if charge == "" {
		return "", nil
	}
	ch, err := r.GetCharge(ctx, charge)
	if err != nil {
		return "", fmt.Errorf("resolve charge: %w", err)
	}
	if ch.Invoice == nil {
		return "", nil
	}
	return invoiceSubscription(ctx, r, ch.Invoice.ID)
}

func invoiceSubscription(ctx context.Context, r Resolver, invoice string) (string, error) {
	if invoice == "" {
		return "", nil
	}
	inv, err := r.GetInvoice(ctx, invoice)
	if err != nil {
		return "", fmt.Errorf("resolve invoice: %w", err)
	}
	if inv.Subscription == nil {
		return "", nil
	}
	return inv.Subscription.ID, nil
}
