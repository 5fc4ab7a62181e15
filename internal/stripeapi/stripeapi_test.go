package stripeapi_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

type bundle struct {
	sim    *stripesim.Sim
	client *stripeapi.Client
	srv    *httptest.Server
	price  string
}

func setup(t *testing.T, cfg stripeapi.Config) *bundle {
	t.Helper()
	sim := stripesim.New(stripesim.Options{APIKey: "sk_test_keysync_secret"})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	if cfg.APIKey == "" {
		cfg.APIKey = "sk_test_keysync_secret"
	}
	cfg.BaseURL = srv.URL
	if cfg.RateLimit == 0 {
		cfg.RateLimit = 1000
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = time.Millisecond
	}
	c, err := stripeapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	prod := sim.CreateProduct("Pro", map[string]string{"skm_product_id": "777"})
	price, _ := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 3000, Metadata: map[string]string{"skm": `{"F1":true}`}})
	return &bundle{sim: sim, client: c, srv: srv, price: price}
}

func (b *bundle) checkout(t *testing.T, trial int) stripesim.CheckoutResult {
	t.Helper()
	res, err := b.sim.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Name: "Ada", Items: []stripesim.ItemParams{{Price: b.price, Quantity: 2}}, TrialDays: trial})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestReads(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{})
	ctx := context.Background()
	res := b.checkout(t, 14)
	b.sim.Advance(15 * 24 * time.Hour)

	sub, err := b.client.GetSubscription(ctx, res.Subscription)
	if err != nil {
		t.Fatal(err)
	}
	item := sub.Items.Data[0]
	if sub.Status != "active" || sub.LatestInvoice == nil || len(sub.LatestInvoice.Lines.Data) != 1 ||
		item.Quantity != 2 || item.Price.Metadata["skm"] != `{"F1":true}` || item.Price.Product.Metadata["skm_product_id"] != "777" {
		t.Fatalf("got %+v", sub)
	}
	paid, err := b.client.PaidInvoices(ctx, res.Subscription)
	if err != nil || len(paid) != 2 || paid[0].BillingReason != "subscription_cycle" || paid[1].BillingReason != "subscription_create" {
		t.Fatalf("got %d paid invoices (%v), want the renewal then the trial invoice", len(paid), err)
	}
	if cs, err := b.client.GetCheckoutSession(ctx, res.Session); err != nil || cs.Subscription.ID != res.Subscription {
		t.Fatalf("checkout session: %+v, %v", cs, err)
	}
	if cu, err := b.client.GetCustomer(ctx, res.Customer); err != nil || cu.Email != "ada@example.com" || cu.Name != "Ada" {
		t.Fatalf("customer: %+v, %v", cu, err)
	}
	if pr, err := b.client.GetPrice(ctx, b.price); err != nil || pr.Product.Metadata["skm_product_id"] != "777" {
		t.Fatalf("price: %+v, %v", pr, err)
	}
	charge := b.sim.Charges(paid[0].ID)[0].ID
	disputeID, _ := b.sim.Dispute(charge, "fraudulent")
	if ch, err := b.client.GetCharge(ctx, charge); err != nil || ch.Invoice.ID != paid[0].ID || !ch.Disputed {
		t.Fatalf("charge: %+v, %v", ch, err)
	}
	if d, err := b.client.GetDispute(ctx, disputeID); err != nil || d.Charge.ID != charge {
		t.Fatalf("dispute: %+v, %v", d, err)
	}
	if inv, err := b.client.GetInvoice(ctx, paid[0].ID); err != nil || inv.Subscription.ID != res.Subscription {
		t.Fatalf("invoice: %+v, %v", inv, err)
	}
}

func TestSubscriptionsPages(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{})
	for i := range 250 {
		res := b.checkout(t, 0)
		if i%10 == 0 {
			_ = b.sim.CancelNow(res.Subscription)
		}
	}
	n := 0
	for sub, err := range b.client.Subscriptions(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		if sub.LatestInvoice == nil || sub.LatestInvoice.ID == "" || len(sub.LatestInvoice.Lines.Data) == 0 {
			t.Fatalf("latest invoice not expanded: %+v", sub.LatestInvoice)
		}
		n++
	}
	if got := b.sim.Requests()["GET /v1/subscriptions"]; n != 250 || got != 3 {
		t.Fatalf("got %d subscriptions in %d requests, want 250 (canceled included) in 3", n, got)
	}
}

func TestEventsSince(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{})
	b.checkout(t, 0)
	since := b.sim.Now()
	b.sim.Advance(time.Second)
	res := b.checkout(t, 0)
	_ = b.sim.CancelNow(res.Subscription)
	evs, err := b.client.Events(context.Background(), since, []string{"customer.subscription.created", "customer.subscription.deleted"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Type != "customer.subscription.created" || evs[1].Type != "customer.subscription.deleted" {
		t.Fatalf("got %d events, want created then deleted, oldest first", len(evs))
	}
}

func TestSetSubscriptionMetadata(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{})
	res := b.checkout(t, 0)
	if err := b.client.SetSubscriptionMetadata(context.Background(), res.Subscription, "cryptolens_key", "AAAAA-BBBBB-CCCCC-DDDDD"); err != nil {
		t.Fatal(err)
	}
	if sub, _ := b.sim.Subscription(res.Subscription); sub.Metadata["cryptolens_key"] != "AAAAA-BBBBB-CCCCC-DDDDD" {
		t.Fatalf("got metadata %v", sub.Metadata)
	}
}

func TestRetriesRateLimitsAndServerErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{Retries: 4})
	res := b.checkout(t, 0)
	ctx := context.Background()
	b.sim.SetFaults(stripesim.Faults{RateLimitNext: 2, ErrorNext: 2})
	if _, err := b.client.GetSubscription(ctx, res.Subscription); err != nil {
		t.Fatalf("got %v, want success after 4 retries", err)
	}
	if got := b.sim.Requests()["GET /v1/subscriptions/{id}"]; got != 5 {
		t.Fatalf("got %d requests, want 5 (2 × 429, 2 × 500, then success)", got)
	}
	// A write is retried safely: stripe-go's Idempotency-Key makes the replay a no-op.
	n := b.sim.EventCount()
	b.sim.SetFaults(stripesim.Faults{RateLimitNext: 1})
	if err := b.client.SetSubscriptionMetadata(ctx, res.Subscription, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if got := b.sim.EventTypes(n); len(got) != 1 {
		t.Fatalf("got events %v, want one update", got)
	}
	b.sim.SetFaults(stripesim.Faults{RateLimitNext: 10})
	_, err := b.client.GetSubscription(ctx, res.Subscription)
	if !errors.Is(err, stripeapi.ErrRateLimited) || !stripeapi.IsRetryable(err) {
		t.Fatalf("got %v, want ErrRateLimited after the retries, retryable", err)
	}
}

func TestErrorKinds(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{})
	ctx := context.Background()
	_, err := b.client.GetSubscription(ctx, "sub_missing")
	if !errors.Is(err, stripeapi.ErrNotFound) || !errors.Is(err, stripeapi.ErrPermanent) || stripeapi.IsRetryable(err) {
		t.Fatalf("got %v, want ErrNotFound, permanent", err)
	}
	wrong, _ := stripeapi.New(stripeapi.Config{APIKey: "sk_test_wrong_secret_value", BaseURL: b.srv.URL})
	_, err = wrong.GetSubscription(ctx, "sub_x")
	if !errors.Is(err, stripeapi.ErrAuth) || !errors.Is(err, stripeapi.ErrPermanent) || strings.Contains(err.Error(), "wrong_secret_value") {
		t.Fatalf("got %v, want ErrAuth, permanent, without the key", err)
	}
	down, _ := stripeapi.New(stripeapi.Config{APIKey: "sk_test_x", BaseURL: "http://127.0.0.1:1", Retries: -1})
	_, err = down.GetCustomer(ctx, "cus_x")
	if !errors.Is(err, stripeapi.ErrUnavailable) || !stripeapi.IsRetryable(err) || errors.Is(err, stripeapi.ErrPermanent) {
		t.Fatalf("got %v, want ErrUnavailable, retryable", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = b.client.GetCustomer(canceled, "cus_x")
	if !errors.Is(err, context.Canceled) || stripeapi.IsRetryable(err) || errors.Is(err, stripeapi.ErrPermanent) {
		t.Fatalf("got %v, want context.Canceled, of neither class", err)
	}
	if _, err := stripeapi.New(stripeapi.Config{APIKey: "pk_test_public"}); err == nil {
		t.Fatal("got nil error for a publishable key")
	}
}

// Stripe-Should-Retry decides before the status: false stops a retry a 5xx would get,
// true asks for one a 4xx would not get. A rate limit keeps keysync's own backoff.
func TestStripeShouldRetry(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		faults   stripesim.Faults
		requests int   // GET /v1/prices/{id} requests made
		wantErr  error // nil: the call succeeds
	}{
		"500 marked final is not retried": {stripesim.Faults{FinalErrorNext: 1}, 1, stripeapi.ErrUnavailable},
		"409 marked retry is retried":     {stripesim.Faults{ConflictNext: 1}, 2, nil},
		"409 still in conflict":           {stripesim.Faults{ConflictNext: 5}, 4, stripeapi.ErrConflict},
		"500 without the header":          {stripesim.Faults{ErrorNext: 1}, 2, nil},
		"lock timeout (429, true)":        {stripesim.Faults{LockTimeoutNext: 1}, 2, nil},
		"rate limit (429, no header)":     {stripesim.Faults{RateLimitNext: 1}, 2, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, stripeapi.Config{Retries: 3})
			b.sim.SetFaults(tc.faults)
			_, err := b.client.GetPrice(context.Background(), b.price)
			if got := b.sim.Requests()["GET /v1/prices/{id}"]; got != tc.requests {
				t.Errorf("got %d requests, want %d", got, tc.requests)
			}
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Errorf("got error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// A subscription embeds its first 20 items; the rest are read, so that the mapping sees
// every item, on both the Sync's read and the sweep's listing.
func TestAllItemsAreRead(t *testing.T) {
	t.Parallel()
	b := setup(t, stripeapi.Config{})
	ctx := context.Background()
	prod := b.sim.CreateProduct("Add-on", map[string]string{"skm_product_id": "778"})
	var items []stripesim.ItemParams
	for range 23 {
		p, err := b.sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 100})
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, stripesim.ItemParams{Price: p})
	}
	res, err := b.sim.Checkout(stripesim.CheckoutParams{Email: "many@example.com", Items: items})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := b.sim.Subscription(res.Subscription)

	sub, err := b.client.GetSubscription(ctx, res.Subscription)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(sub.Items.Data); got != 23 || sub.Items.HasMore {
		t.Fatalf("GetSubscription: got %d items (has_more %v), want all 23", got, sub.Items.HasMore)
	}
	for i, it := range sub.Items.Data {
		if it.ID != want.Items[i].ID || it.Price == nil || it.Price.Product == nil || it.Price.Product.Metadata["skm_product_id"] != "778" {
			t.Fatalf("item %d: got %+v, want %s with its price's product expanded", i, it, want.Items[i].ID)
		}
	}
	for s, err := range b.client.Subscriptions(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if got := len(s.Items.Data); got != 23 || s.Items.Data[22].ID != want.Items[22].ID {
			t.Fatalf("Subscriptions: got %d items, want all 23", got)
		}
	}
}
