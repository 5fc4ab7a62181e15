// Package stripeapi is the narrow set of Stripe reads and writes keysync makes, over
// stripe-go v76 (API 2023-10-16) with a per-instance client, its own token bucket, and
// retries of rate limits and server errors.
package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"golang.org/x/time/rate"

	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/license"
)

// DefaultBaseURL is Stripe's API.
const DefaultBaseURL = "https://api.stripe.com"

// Errors callers test with errors.Is. Every error a Stripe call returns also matches
// exactly one of ErrRetryable and ErrPermanent, because each kind carries its class;
// the one exception is a call stopped by its canceled context, whose error wraps
// context.Canceled instead.
var (
	// ErrRetryable matches failures that may succeed later: rate limits, server errors
	// and no answer, each still failing after the transport's retries.
	// It is keysync's one retryable class (failure.ErrRetryable).
	ErrRetryable = failure.ErrRetryable
	// ErrPermanent matches failures that will fail again the same way until someone
	// changes the configuration or the input.
	// (failure.ErrPermanent)
	ErrPermanent = failure.ErrPermanent

	// ErrNotFound: no such object (resource_missing).
	ErrNotFound = failure.NewPermanent("stripe: not found")
	// ErrAuth: the key is wrong or lacks a permission (401, 403).
	ErrAuth = failure.NewPermanent("stripe: authentication failed")
	// ErrInvalid: Stripe refused the request (400): a bug or a configuration problem,
	// not something a retry fixes.
	ErrInvalid = failure.NewPermanent("stripe: invalid request")
	// ErrRateLimited: still rate limited after the retries.
	ErrRateLimited = failure.NewRetryable("stripe: rate limited")
	// ErrUnavailable: server errors or no answer after the retries.
	ErrUnavailable = failure.NewRetryable("stripe: unavailable")
	// ErrConflict: still in conflict with another request on the same object after
	// the retries (409); Stripe asks for a retry of those (Stripe-Should-Retry).
	ErrConflict = failure.NewRetryable("stripe: conflict")
)

// IsRetryable reports whether err is a failure that may succeed later.
func IsRetryable(err error) bool { return errors.Is(err, ErrRetryable) }

// Config configures a Client.
type Config struct {
	// APIKey is the secret or restricted key. It never appears in errors or logs.
	APIKey string
	// BaseURL is Stripe's API (default DefaultBaseURL); the simulator's URL in tests.
	BaseURL string
	// RateLimit is the most requests per second (default 20: under test mode's 25;
	// live mode allows 100). Burst defaults to RateLimit.
	RateLimit float64
	Burst     int
	// Retries is how often a 429, a 5xx or an answer marked Stripe-Should-Retry: true
	// is retried (default 5; a 5xx marked false is not); Backoff the first wait (default
	// 500ms), doubled each time with jitter.
	Retries int
	Backoff time.Duration
	// Timeout bounds one request (default 30s).
	Timeout time.Duration
	Logger  zerolog.Logger
	// Observe, if set, is told each HTTP attempt's route, outcome and duration.
	Observe func(route, outcome string, took time.Duration)
}

// Client makes keysync's Stripe calls. It is safe for concurrent use.
type Client struct {
	api *client.API
	key string
	log zerolog.Logger
}

// New returns a Client. It returns an error when the key or the base URL is unusable.
func New(cfg Config) (*Client, error) {
	if !strings.HasPrefix(cfg.APIKey, "sk_") && !strings.HasPrefix(cfg.APIKey, "rk_") {
		return nil, errors.New("stripe: the API key must be a secret (sk_) or restricted (rk_) key")
	}
	base := cfg.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("stripe: base URL must be an http(s) URL")
	}
	if cfg.RateLimit <= 0 {
		cfg.RateLimit = 20
	}
	if cfg.Burst <= 0 {
		cfg.Burst = max(1, int(cfg.RateLimit))
	}
	if cfg.Retries == 0 {
		cfg.Retries = 5
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 500 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	httpClient := &http.Client{
		Timeout: cfg.Timeout,
		Transport: &transport{base: http.DefaultTransport, limiter: rate.NewLimiter(rate.Limit(cfg.RateLimit), cfg.Burst),
			retries: max(cfg.Retries, 0), backoff: cfg.Backoff, log: cfg.Logger, observe: cfg.Observe},
	}
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(strings.TrimRight(base, "/")),
		HTTPClient:        httpClient,
		MaxNetworkRetries: stripe.Int64(0), // the transport retries, including 429s
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		EnableTelemetry:   stripe.Bool(false),
	})
	api := &client.API{}
	api.Init(cfg.APIKey, &stripe.Backends{API: backend, Connect: backend, Uploads: backend})
	return &Client{api: api, key: cfg.APIKey, log: cfg.Logger}, nil
}

// Livemode reports whether the client's key is a live-mode key: the mode of every
// object and event keysync may act on.
func (c *Client) Livemode() bool { return KeyLivemode(c.key) }

// KeyLivemode reports whether a Stripe API key is a live-mode key (sk_live_, rk_live_)
// rather than a test-mode one (sk_test_, rk_test_).
func KeyLivemode(key string) bool {
	return strings.HasPrefix(key, "sk_live_") || strings.HasPrefix(key, "rk_live_")
}

// subscriptionExpand is what a Sync needs in one read: the latest invoice, and each
// item's product (for skm_product_id metadata).
var subscriptionExpand = []*string{stripe.String("latest_invoice"), stripe.String("items.data.price.product")}

// GetSubscription returns a subscription with its latest invoice and its items' products
// expanded, and all its items (Stripe embeds only the first ones).
func (c *Client) GetSubscription(ctx context.Context, id string) (*stripe.Subscription, error) {
	p := &stripe.SubscriptionParams{}
	p.Context = ctx
	p.Expand = subscriptionExpand
	sub, err := c.api.Subscriptions.Get(id, p)
	if err != nil {
		return nil, c.wrap("get subscription", err)
	}
	if err := c.CompleteItems(ctx, sub); err != nil {
		return nil, err
	}
	return sub, nil
}

// itemsExpand expands each item CompleteItems reads as GetSubscription expands the
// embedded ones.
var itemsExpand = []*string{stripe.String("data.price.product")}

// CompleteItems reads the rest of sub's items when Stripe embedded only the first ones
// (items.has_more): every item may map to features or seats, so the mapping must see
// them all. The items it reads have their price's product expanded. It does nothing
// for a subscription whose items are all there.
func (c *Client) CompleteItems(ctx context.Context, sub *stripe.Subscription) error {
	if sub == nil || sub.Items == nil || !sub.Items.HasMore {
		return nil
	}
	p := &stripe.SubscriptionItemListParams{Subscription: stripe.String(sub.ID)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	p.Expand = itemsExpand
	var all []*stripe.SubscriptionItem
	it := c.api.SubscriptionItems.List(p)
	for it.Next() {
		all = append(all, it.SubscriptionItem())
	}
	if err := it.Err(); err != nil {
		return c.wrap("list subscription items", err)
	}
	sub.Items.Data, sub.Items.HasMore = all, false
	return nil
}

// Subscriptions yields every subscription of the account, whatever its status, 100 a
// page with the latest invoice expanded, newest first, each with all its items. It stops at the first error,
// which it yields.
func (c *Client) Subscriptions(ctx context.Context) iter.Seq2[*stripe.Subscription, error] {
	return func(yield func(*stripe.Subscription, error) bool) {
		p := &stripe.SubscriptionListParams{Status: stripe.String("all")}
		p.Context = ctx
		p.Limit = stripe.Int64(100)
		p.Expand = []*string{stripe.String("data.latest_invoice")}
		it := c.api.Subscriptions.List(p)
		for it.Next() {
			sub := it.Subscription()
			if err := c.CompleteItems(ctx, sub); err != nil {
				yield(nil, err)
				return
			}
			if !yield(sub, nil) {
				return
			}
		}
		if err := it.Err(); err != nil {
			yield(nil, c.wrap("list subscriptions", err))
		}
	}
}

// PaidInvoices returns the subscription's paid invoices (including $0 trial invoices
// and invoices paid out of band), newest first, each with all its lines and its charge
// expanded: a Sync that blocks on disputes reads the charges of months of invoices, and
// expanding them costs no request per charge.
func (c *Client) PaidInvoices(ctx context.Context, subscription string) ([]*stripe.Invoice, error) {
	p := &stripe.InvoiceListParams{Subscription: stripe.String(subscription), Status: stripe.String("paid")}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	p.Expand = []*string{stripe.String("data.charge")}
	var out []*stripe.Invoice
	it := c.api.Invoices.List(p)
	for it.Next() {
		out = append(out, it.Invoice())
	}
	if err := it.Err(); err != nil {
		return nil, c.wrap("list paid invoices", err)
	}
	for _, inv := range out {
		if err := c.CompleteLines(ctx, inv); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// CompleteLines reads the rest of inv's lines when Stripe embedded only the first page
// (lines.has_more): an invoice embeds 10 lines, and a renewal invoice lists its
// prorations before the subscription line that says what was paid for. It does
// nothing for an invoice whose lines are all there.
func (c *Client) CompleteLines(ctx context.Context, inv *stripe.Invoice) error {
	return c.completeLines(ctx, inv, nil)
}

// completeLines is CompleteLines with the read lines' references expanded as expand says.
func (c *Client) completeLines(ctx context.Context, inv *stripe.Invoice, expand []*string) error {
	if inv == nil || inv.Lines == nil || !inv.Lines.HasMore {
		return nil
	}
	p := &stripe.InvoiceListLinesParams{Invoice: stripe.String(inv.ID)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	p.Expand = expand
	var all []*stripe.InvoiceLineItem
	it := c.api.Invoices.ListLines(p)
	for it.Next() {
		all = append(all, it.InvoiceLineItem())
	}
	if err := it.Err(); err != nil {
		return c.wrap("list invoice lines", err)
	}
	inv.Lines.Data, inv.Lines.HasMore = all, false
	return nil
}

// PaidThrough is license.PaidThrough over Stripe's invoices: the latest period end of
// the licensed subscription lines of the paid ones (a metered line bills a period that
// is over). Complete long invoices first (CompleteLines).
func PaidThrough(invoices ...*stripe.Invoice) time.Time {
	in := make([]license.Invoice, 0, len(invoices))
	for _, inv := range invoices {
		if inv == nil {
			continue
		}
		li := license.Invoice{Paid: inv.Status == stripe.InvoiceStatusPaid}
		if inv.Lines != nil {
			for _, l := range inv.Lines.Data {
				if l.Period != nil {
					li.Lines = append(li.Lines, license.Line{Type: string(l.Type), PeriodEnd: time.Unix(l.Period.End, 0).UTC(),
						Metered: metered(l.Price)})
				}
			}
		}
		in = append(in, li)
	}
	return license.PaidThrough(in)
}

// GetInvoice returns an invoice.
func (c *Client) GetInvoice(ctx context.Context, id string) (*stripe.Invoice, error) {
	p := &stripe.InvoiceParams{}
	p.Context = ctx
	inv, err := c.api.Invoices.Get(id, p)
	return inv, c.wrap("get invoice", err)
}

// GetCharge returns a charge (its invoice leads to the subscription).
func (c *Client) GetCharge(ctx context.Context, id string) (*stripe.Charge, error) {
	p := &stripe.ChargeParams{}
	p.Context = ctx
	ch, err := c.api.Charges.Get(id, p)
	return ch, c.wrap("get charge", err)
}

// GetDispute returns a dispute.
func (c *Client) GetDispute(ctx context.Context, id string) (*stripe.Dispute, error) {
	p := &stripe.DisputeParams{}
	p.Context = ctx
	d, err := c.api.Disputes.Get(id, p)
	return d, c.wrap("get dispute", err)
}

// GetCheckoutSession returns a Checkout Session.
func (c *Client) GetCheckoutSession(ctx context.Context, id string) (*stripe.CheckoutSession, error) {
	p := &stripe.CheckoutSessionParams{}
	p.Context = ctx
	s, err := c.api.CheckoutSessions.Get(id, p)
	return s, c.wrap("get checkout session", err)
}

// GetCustomer returns a customer (name and email for a new key).
func (c *Client) GetCustomer(ctx context.Context, id string) (*stripe.Customer, error) {
	p := &stripe.CustomerParams{}
	p.Context = ctx
	cu, err := c.api.Customers.Get(id, p)
	return cu, c.wrap("get customer", err)
}

// CustomersByEmail returns the customers whose e-mail address is exactly email
// (Stripe's filter is case-sensitive), newest first, at most 100: a lost-keys request
// finds the customer by the address they paid with.
func (c *Client) CustomersByEmail(ctx context.Context, email string) ([]*stripe.Customer, error) {
	p := &stripe.CustomerListParams{Email: stripe.String(email)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	p.Single = true // one page: an address shared by more customers than that is no customer's
	out, err := collect[*stripe.Customer](c.api.Customers.List(p))
	return out, c.wrap("list customers", err)
}

// GetProduct returns a product (its metadata may map it to a Cryptolens product).
func (c *Client) GetProduct(ctx context.Context, id string) (*stripe.Product, error) {
	p := &stripe.ProductParams{}
	p.Context = ctx
	pr, err := c.api.Products.Get(id, p)
	return pr, c.wrap("get product", err)
}

// GetPrice returns a price with its product expanded.
func (c *Client) GetPrice(ctx context.Context, id string) (*stripe.Price, error) {
	p := &stripe.PriceParams{}
	p.Context = ctx
	p.Expand = []*string{stripe.String("product")}
	pr, err := c.api.Prices.Get(id, p)
	return pr, c.wrap("get price", err)
}

// Events returns the events of the given types created after since, oldest first.
// Stripe keeps events for 30 days.
func (c *Client) Events(ctx context.Context, since time.Time, types []string) ([]*stripe.Event, error) {
	if len(types) > 20 {
		return nil, fmt.Errorf("stripe: at most 20 event types a query, got %d", len(types))
	}
	p := &stripe.EventListParams{CreatedRange: &stripe.RangeQueryParams{GreaterThan: since.Unix()}}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	for _, t := range types {
		p.Types = append(p.Types, stripe.String(t))
	}
	var out []*stripe.Event
	it := c.api.Events.List(p)
	for it.Next() {
		out = append(out, it.Event())
	}
	if err := it.Err(); err != nil {
		return nil, c.wrap("list events", err)
	}
	slices.Reverse(out) // Stripe lists newest first
	return out, nil
}

// SetSubscriptionMetadata sets one metadata key on a subscription ("" deletes it).
func (c *Client) SetSubscriptionMetadata(ctx context.Context, subscription, key, value string) error {
	p := &stripe.SubscriptionParams{}
	p.Context = ctx
	p.AddMetadata(key, value)
	_, err := c.api.Subscriptions.Update(subscription, p)
	return c.wrap("set subscription metadata", err)
}

// wrap maps stripe-go's errors to the package's, keeping Stripe's message and request
// id and never the key.
func (c *Client) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var se *stripe.Error
	if errors.As(err, &se) {
		kind := ErrInvalid
		switch {
		case se.Code == stripe.ErrorCodeResourceMissing || se.HTTPStatusCode == http.StatusNotFound:
			kind = ErrNotFound
		case se.HTTPStatusCode == http.StatusUnauthorized || se.HTTPStatusCode == http.StatusForbidden:
			kind = ErrAuth
		case se.HTTPStatusCode == http.StatusTooManyRequests:
			kind = ErrRateLimited
		case se.HTTPStatusCode == http.StatusConflict:
			kind = ErrConflict
		case se.HTTPStatusCode >= 500:
			kind = ErrUnavailable
		}
		return fmt.Errorf("%s: %w: %s (HTTP %d, request %s)", op, kind, c.scrub(se.Msg), se.HTTPStatusCode, se.RequestID)
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %s", op, ErrUnavailable, c.scrub(err.Error()))
}

func (c *Client) scrub(s string) string { return strings.ReplaceAll(s, c.key, "[key]") }

// pager is what stripe-go's list iterators have in common (their embedded *stripe.Iter).
type pager interface {
	Next() bool
	Current() interface{}
	Err() error
}

// collect reads every page of a list: the items, and the iterator's error (nil when
// the list was read to its end).
func collect[T any](it pager) ([]T, error) {
	var out []T
	for it.Next() {
		out = append(out, it.Current().(T))
	}
	return out, it.Err()
}

// Disputes returns the disputes of a charge.
func (c *Client) Disputes(ctx context.Context, charge string) ([]*stripe.Dispute, error) {
	p := &stripe.DisputeListParams{Charge: stripe.String(charge)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	out, err := collect[*stripe.Dispute](c.api.Disputes.List(p))
	return out, c.wrap("list disputes", err)
}

// GetEvent returns one event (Stripe keeps them 30 days).
func (c *Client) GetEvent(ctx context.Context, id string) (*stripe.Event, error) {
	p := &stripe.EventParams{}
	p.Context = ctx
	ev, err := c.api.Events.Get(id, p)
	return ev, c.wrap("get event", err)
}
