// Package sandbox drives a running keysync-sandbox through its control API, and checks
// a key against what the license policy wants, from Stripe's side of the story. The
// demo and the chaos suite use it.
package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Control is a client of the sandbox's control API.
type Control struct {
	// URL is the control API's base URL (http://127.0.0.1:12113).
	URL  string
	HTTP *http.Client
}

// New returns a Control for the control API at url.
func New(url string) *Control {
	return &Control{URL: strings.TrimRight(url, "/"), HTTP: &http.Client{Timeout: 5 * time.Minute}}
}

// Post sends body as JSON to path and decodes the answer into into (if not nil).
func (c *Control) Post(ctx context.Context, path string, body, into any) error {
	var buf bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&buf).Encode(body); err != nil {
			return err
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+path, &buf)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.do(req, path, into)
}

// Get decodes path's answer into into.
func (c *Control) Get(ctx context.Context, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+path, nil)
	if err != nil {
		return err
	}
	return c.do(req, path, into)
}

func (c *Control) do(req *http.Request, path string, into any) error {
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if into != nil {
		return json.Unmarshal(b, into)
	}
	return nil
}

// Key is a Cryptolens key as the simulator shows it.
type Key struct {
	Key             string
	Expires         time.Time
	Block           bool
	Features        [8]bool
	MaxNoOfMachines int
	Notes           string
}

// Keys returns every key of a Cryptolens product.
func (c *Control) Keys(ctx context.Context, product int) ([]Key, error) {
	var keys []Key
	err := c.Get(ctx, fmt.Sprintf("/cryptolens/keys?product=%d", product), &keys)
	return keys, err
}

// Subscription is a Stripe subscription as the simulator shows it, with what Stripe's
// side says it is paid through.
type Subscription struct {
	Subscription struct {
		ID               string
		Customer         string
		Status           string
		CurrentPeriodEnd int64
		TrialEnd         int64
		LatestInvoice    string
		CollectionMethod string
		PauseCollection  *struct {
			Behavior  string
			ResumesAt int64
		}
		Items []struct {
			ID       string
			Price    string
			Quantity int64
			Usage    int64
		}
	}
	PaidThrough time.Time `json:"paid_through"`
}

// EntitledThrough is what keysync's policy entitles the subscription to (DESIGN §2,
// with KEYSYNC_ON_PAUSED_COLLECTION=keep): what it is paid through, or the current
// period's end while it is active and Stripe grants the period unpaid (an invoiced
// customer, paused collection). The simulator's paid-through already counts trials and
// metered prices through their period. It does not know what keysync stored earlier,
// so a key judged after an invoiced subscription fell past_due may look beyond target.
func (s Subscription) EntitledThrough() time.Time {
	sub := s.Subscription
	if sub.Status == "active" && (sub.CollectionMethod == "send_invoice" || sub.PauseCollection != nil) {
		if end := time.Unix(sub.CurrentPeriodEnd, 0).UTC(); end.After(s.PaidThrough) {
			return end
		}
	}
	return s.PaidThrough
}

// Subscription returns a subscription's state.
func (c *Control) Subscription(ctx context.Context, id string) (Subscription, error) {
	var s Subscription
	err := c.Get(ctx, "/stripe/subscriptions/"+id, &s)
	return s, err
}

// InjectEvent emits an event of type typ about the Stripe object with id object, from
// live mode or from a connected account ("acct_..."), and returns the event's id.
func (c *Control) InjectEvent(ctx context.Context, typ, object string, livemode bool, account string) (string, error) {
	var out struct{ ID string }
	err := c.Post(ctx, "/stripe/events", map[string]any{"type": typ, "object": object, "livemode": livemode, "account": account}, &out)
	return out.ID, err
}

// Now returns the sandbox's test clock.
func (c *Control) Now(ctx context.Context) (time.Time, error) {
	var now struct{ Now time.Time }
	err := c.Get(ctx, "/stripe/now", &now)
	return now.Now, err
}

// Advance moves the test clock (Stripe's and Cryptolens') forward by d.
func (c *Control) Advance(ctx context.Context, d time.Duration) error {
	return c.Post(ctx, "/stripe/advance", map[string]string{"duration": d.String()}, nil)
}

// Flush waits until every webhook was delivered, dropped or given up on.
func (c *Control) Flush(ctx context.Context) error { return c.Post(ctx, "/stripe/flush", nil, nil) }

// Want is the license a subscription's plan grants.
type Want struct {
	Features [8]bool
	Machines int
}

// ErrBeyondTarget marks a key that runs more than a day past entitled-through + buffer:
// an extension too many.
var ErrBeyondTarget = errors.New("expires beyond target")

// Check returns nil when k is what the policy wants for s: valid until entitled-through +
// bufferDays (never short, less than a day over) with want's features and machines while
// the subscription is active, trialing or past due; blocked once it is canceled, unpaid,
// paused or incomplete_expired. A key more than a day over target matches ErrBeyondTarget.
func Check(k Key, s Subscription, bufferDays int, want Want) error {
	switch s.Subscription.Status {
	case "active", "trialing", "past_due":
	case "canceled", "unpaid", "paused", "incomplete_expired":
		if !k.Block {
			return fmt.Errorf("subscription %s but the key is not blocked", s.Subscription.Status)
		}
		return nil
	default:
		return fmt.Errorf("subscription %s: no policy to check", s.Subscription.Status)
	}
	target := s.EntitledThrough().AddDate(0, 0, bufferDays)
	switch {
	case k.Key == "":
		return errors.New("no key")
	case k.Block:
		return errors.New("blocked")
	case k.Expires.Before(target):
		return fmt.Errorf("expires %s, short of entitled-through + %d days = %s", k.Expires.Format(time.DateTime), bufferDays, target.Format(time.DateTime))
	case k.Expires.Sub(target) >= 24*time.Hour:
		return fmt.Errorf("%w: expires %s, entitled-through + %d days = %s", ErrBeyondTarget, k.Expires.Format(time.DateTime), bufferDays, target.Format(time.DateTime))
	case k.Features != want.Features || k.MaxNoOfMachines != want.Machines:
		return fmt.Errorf("features %s machines %d, want %s and %d", FeatureList(k.Features), k.MaxNoOfMachines, FeatureList(want.Features), want.Machines)
	}
	return nil
}

// FeatureList renders features as "F1+F3".
func FeatureList(f [8]bool) string {
	var on []string
	for i, v := range f {
		if v {
			on = append(on, fmt.Sprintf("F%d", i+1))
		}
	}
	return strings.Join(on, "+")
}
