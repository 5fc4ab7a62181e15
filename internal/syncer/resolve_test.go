package syncer_test

import (
	"context"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// Every handled event leads to its subscription whatever the API version it was
// rendered in. In 2025-03-31.basil an invoice names its subscription under parent and a
// charge names no invoice, so the object is read from the API (at 2023-10-16); a Sync
// from a basil renewal's invoice.paid then extends the key.
func TestSubscriptionForAnyAPIVersion(t *testing.T) {
	t.Parallel()
	for name, version := range map[string]string{"2023-10-16": stripesim.APIVersion, "basil": stripesim.VersionBasil} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			if err := e.stripe.SetAccountAPIVersion(version); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "v@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
			if err != nil {
				t.Fatal(err)
			}
			sub := res.Subscription
			e.sync(t, sub)
			e.pastRenewal(t, sub)

			// The renewal's event alone brings the key to paid-through + 5 days.
			var renewal stripesim.Event
			for _, ev := range e.stripe.Events() {
				if ev.Type == "invoice.paid" {
					renewal = ev
				}
			}
			before := e.key(t, sub).Expires
			if got, err := e.syncer.SubscriptionFor(ctx, renewal.Type, renewal.Payload); err != nil || got != sub {
				t.Fatalf("renewal's invoice.paid (%s): got %q, %v; want %s", renewal.APIVersion, got, err, sub)
			}
			e.sync(t, sub)
			if after := e.key(t, sub).Expires; !after.After(before.Add(24 * time.Hour)) {
				t.Fatalf("key expires %s after the renewal's Sync, was %s: not extended", after, before)
			}
			e.wantExpiry(t, sub, "renewal")

			// Then every kind of event, the dispute and refund of the renewal's charge too.
			s, _ := e.stripe.Subscription(sub)
			charge := e.stripe.Charges(s.LatestInvoice)[0].ID
			if _, err := e.stripe.Dispute(charge, "fraudulent"); err != nil {
				t.Fatal(err)
			}
			if _, err := e.stripe.Refund(charge, 100); err != nil {
				t.Fatal(err)
			}

			seen := map[string]bool{}
			for _, ev := range e.stripe.Events() {
				if ev.APIVersion != version {
					continue // made before the version changed: the products and prices
				}
				switch ev.Type {
				case "customer.subscription.created", "invoice.paid", "checkout.session.completed", "charge.refunded", "charge.dispute.created":
				default:
					continue
				}
				got, err := e.syncer.SubscriptionFor(ctx, ev.Type, ev.Payload)
				if err != nil || got != sub {
					t.Fatalf("%s (%s): got %q, %v; want %s", ev.Type, ev.APIVersion, got, err, sub)
				}
				seen[ev.Type] = true
			}
			if len(seen) != 5 {
				t.Fatalf("resolved %v, want all 5 kinds of event", seen)
			}
		})
	}
}
