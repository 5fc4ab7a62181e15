package stripeapi

import (
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/license"
)

// Subscription is the license policy's view of a Stripe subscription and its invoices:
// status, items, collection method, paused collection, current period end, and what the
// paid ones among invoices are paid through. The Sync and the sweep both read a
// subscription through it, so that they judge a key by the same inputs and never
// disagree about what it is entitled to. The caller adds what keysync stored
// (StoredThrough) and what it reads elsewhere (disputes, refunds, product metadata the
// read did not expand).
func Subscription(sub *stripe.Subscription, invoices ...*stripe.Invoice) license.Subscription {
	ls := license.Subscription{ID: sub.ID, Status: string(sub.Status), PaidThrough: PaidThrough(invoices...),
		CollectionMethod: string(sub.CollectionMethod), PausedCollection: sub.PauseCollection != nil}
	if sub.CurrentPeriodEnd != 0 {
		ls.CurrentPeriodEnd = time.Unix(sub.CurrentPeriodEnd, 0).UTC()
	}
	if sub.Customer != nil {
		ls.CustomerID = sub.Customer.ID
	}
	if sub.Items != nil {
		for _, it := range sub.Items.Data {
			ls.Items = append(ls.Items, Item(it))
		}
	}
	return ls
}

// Item is the mapping's view of a subscription item: its price and product with their
// metadata (the product's only when the read expanded it), quantity, and whether the
// price is metered.
func Item(it *stripe.SubscriptionItem) license.Item {
	out := license.Item{Quantity: it.Quantity, Metered: metered(it.Price)}
	if it.Price != nil {
		out.PriceID, out.PriceMetadata = it.Price.ID, it.Price.Metadata
		if it.Price.Product != nil {
			out.ProductID, out.ProductMetadata = it.Price.Product.ID, it.Price.Product.Metadata
		}
	}
	return out
}

// metered reports whether a price bills usage in arrears (recurring.usage_type=metered).
func metered(p *stripe.Price) bool {
	return p != nil && p.Recurring != nil && p.Recurring.UsageType == stripe.PriceRecurringUsageTypeMetered
}
