package syncer

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/stripe/stripe-go/v76"
)

// Resolver reads what resolving charges and disputes to subscriptions needs.
type Resolver interface {
	GetInvoice(ctx context.Context, id string) (*stripe.Invoice, error)
	GetCharge(ctx context.Context, id string) (*stripe.Charge, error)
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
// followed to their invoice's subscription through the API.
func SubscriptionFor(ctx context.Context, r Resolver, typ string, payload []byte) (string, error) {
	var ev struct {
		Data struct {
			Object map[string]json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(payload, &ev); err != nil {
		return "", fmt.Errorf("%w: event payload: %v", ErrPermanent, err)
	}
	obj := ev.Data.Object
	switch {
	case strings.HasPrefix(typ, "customer.subscription."):
		return ref(obj["id"]), nil
	case strings.HasPrefix(typ, "invoice."):
		return ref(obj["subscription"]), nil
	case typ == "checkout.session.completed":
		return ref(obj["subscription"]), nil
	case typ == "charge.refunded":
		return invoiceSubscription(ctx, r, ref(obj["invoice"]))
	case strings.HasPrefix(typ, "charge.dispute."):
		charge := ref(obj["charge"])
		if charge == "" {
			return "", nil
		}
		ch, err := r.GetCharge(ctx, charge)
		if err != nil {
			return "", fmt.Errorf("resolve dispute's charge: %w", err)
		}
		if ch.Invoice == nil {
			return "", nil
		}
		return invoiceSubscription(ctx, r, ch.Invoice.ID)
	}
	return "", nil
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
