package stripesim

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"
)

// EndpointOptions configure a webhook endpoint and how delivery misbehaves.
type EndpointOptions struct {
	// Secret signs deliveries (whsec_...). Several secrets sign each delivery with each,
	// as Stripe does while a secret is being rolled.
	Secrets []string
	// Types the endpoint receives; empty: all.
	Types []string
	// APIVersion pins the version events are generated in for this endpoint, as a
	// webhook endpoint's api_version does; empty follows the account's default.
	APIVersion string
	// Workers is how many deliveries are in flight at once (default 4). More than one
	// already reorders deliveries, as Stripe's do.
	Workers int
	// Reorder picks the next delivery at random from those due, not the oldest.
	Reorder bool
	// DuplicateRate delivers that share of events twice.
	DuplicateRate float64
	// DropRate loses that share of events for good: never delivered, never retried.
	DropRate float64
	// MaxAttempts bounds the deliveries of one event (default 8; Stripe's test mode
	// tries 3 times over a few hours, live mode for 3 days).
	MaxAttempts int
	// RetryBackoff is the wait before the first retry, doubled each time (default 1s).
	RetryBackoff time.Duration
	// Timeout bounds one delivery (default 10s).
	Timeout time.Duration
	// Seed makes the misbehaviour repeatable (default 1).
	Seed uint64
}

// DeliveryStats count what an endpoint's deliveries did.
type DeliveryStats struct {
	// Events is how many events were handed to the endpoint.
	Events int
	// Attempts is how many HTTP requests were made.
	Attempts int
	// Acknowledged is how many requests got a 2xx.
	Acknowledged int
	// Failed is how many requests got a non-2xx or no answer.
	Failed int
	// Dropped is how many events were lost on purpose (DropRate).
	Dropped int
	// GaveUp is how many events were abandoned after MaxAttempts.
	GaveUp int
	// Duplicated is how many events were delivered an extra time (DuplicateRate).
	Duplicated int
}

// Endpoint delivers events to one URL.
type Endpoint struct {
	url    string
	opts   EndpointOptions
	client *http.Client

	mu       sync.Mutex
	cond     *sync.Cond
	rng      *rand.Rand
	queue    []*delivery
	inFlight int
	closed   bool
	// held keeps due deliveries queued (HoldWebhooks).
	held  bool
	stats DeliveryStats
	acked map[string]int
	wg    sync.WaitGroup
}

type delivery struct {
	ev      *Event
	attempt int
	due     time.Time
}

// AddEndpoint registers a webhook endpoint and starts delivering to it every event
// emitted from now on. Close stops it. It panics on an APIVersion CheckVersion refuses.
func (s *Sim) AddEndpoint(url string, opts EndpointOptions) *Endpoint {
	if opts.APIVersion != "" {
		if err := CheckVersion(opts.APIVersion); err != nil {
			panic("stripesim: endpoint: " + err.Error())
		}
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	ep := &Endpoint{url: url, opts: opts, client: &http.Client{Timeout: opts.Timeout},
		rng: rand.New(rand.NewPCG(opts.Seed, 7)), acked: map[string]int{}}
	ep.cond = sync.NewCond(&ep.mu)
	s.mu.Lock()
	ep.held = s.webhooksHeld
	s.endpoints = append(s.endpoints, ep)
	s.mu.Unlock()
	for range opts.Workers {
		ep.wg.Add(1)
		go ep.work()
	}
	return ep
}

// HoldWebhooks holds (on) or releases every endpoint's deliveries, those of endpoints
// added later too. Held events queue and are delivered, in order, once released, as
// when Stripe's deliveries lag behind the customer's redirect to the success_url.
// Deliveries already in flight finish.
func (s *Sim) HoldWebhooks(on bool) {
	s.mu.Lock()
	s.webhooksHeld = on
	eps := slices.Clone(s.endpoints)
	s.mu.Unlock()
	for _, ep := range eps {
		ep.mu.Lock()
		ep.held = on
		ep.cond.Broadcast()
		ep.mu.Unlock()
	}
}

func (ep *Endpoint) wants(typ string) bool {
	return len(ep.opts.Types) == 0 || slices.Contains(ep.opts.Types, typ)
}

func (ep *Endpoint) enqueue(ev *Event) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	ep.stats.Events++
	if ep.opts.DropRate > 0 && ep.rng.Float64() < ep.opts.DropRate {
		ep.stats.Dropped++
		return
	}
	now := time.Now()
	ep.queue = append(ep.queue, &delivery{ev: ev, due: now})
	if ep.opts.DuplicateRate > 0 && ep.rng.Float64() < ep.opts.DuplicateRate {
		ep.stats.Duplicated++
		ep.queue = append(ep.queue, &delivery{ev: ev, due: now})
	}
	ep.cond.Broadcast()
}

// next blocks until a delivery is due and takes it; false when closed.
func (ep *Endpoint) next() (*delivery, bool) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for {
		if ep.closed {
			return nil, false
		}
		if ep.held {
			ep.cond.Wait()
			continue
		}
		now := time.Now()
		var due []int
		var soonest time.Time
		for i, d := range ep.queue {
			if !d.due.After(now) {
				due = append(due, i)
			} else if soonest.IsZero() || d.due.Before(soonest) {
				soonest = d.due
			}
		}
		if len(due) > 0 {
			i := due[0]
			if ep.opts.Reorder {
				i = due[ep.rng.IntN(len(due))]
			}
			d := ep.queue[i]
			ep.queue = slices.Delete(ep.queue, i, i+1)
			ep.inFlight++
			return d, true
		}
		if !soonest.IsZero() {
			// Wake when the next retry is due (or earlier, on new work).
			t := time.AfterFunc(time.Until(soonest), ep.cond.Broadcast)
			ep.cond.Wait()
			t.Stop()
			continue
		}
		ep.cond.Wait()
	}
}

func (ep *Endpoint) work() {
	defer ep.wg.Done()
	for {
		d, ok := ep.next()
		if !ok {
			return
		}
		acked := ep.send(d.ev)
		ep.mu.Lock()
		ep.inFlight--
		ep.stats.Attempts++
		d.attempt++
		switch {
		case acked:
			ep.stats.Acknowledged++
			ep.acked[d.ev.ID]++
		case d.attempt >= ep.opts.MaxAttempts:
			ep.stats.Failed++
			ep.stats.GaveUp++
		default:
			ep.stats.Failed++
			d.due = time.Now().Add(ep.opts.RetryBackoff << (d.attempt - 1))
			ep.queue = append(ep.queue, d)
		}
		ep.cond.Broadcast()
		ep.mu.Unlock()
	}
}

// send makes one signed delivery; each one is signed afresh with the current time.
func (ep *Endpoint) send(ev *Event) bool {
	now := time.Now()
	header := fmt.Sprintf("t=%d", now.Unix())
	payload := ev.payload(ep.opts.APIVersion)
	for _, secret := range ep.opts.Secrets {
		header += ",v1=" + hex.EncodeToString(webhook.ComputeSignature(now, payload, secret))
	}
	req, err := http.NewRequest(http.MethodPost, ep.url, bytes.NewReader(payload))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
	req.Header.Set("Stripe-Signature", header)
	resp, err := ep.client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

// ErrWebhooksHeld is Flush's answer while deliveries are held (HoldWebhooks): what is
// queued would never leave.
var ErrWebhooksHeld = errors.New("webhooks are held: release them first")

// Flush waits until nothing is queued or in flight: every event was acknowledged,
// dropped or given up on. Retries that are not yet due are waited for. It returns
// ErrWebhooksHeld at once when deliveries are held and some are queued.
func (ep *Endpoint) Flush(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		ep.mu.Lock()
		ep.cond.Broadcast()
		ep.mu.Unlock()
	})
	defer stop()
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for len(ep.queue) > 0 || ep.inFlight > 0 {
		if ep.held && ep.inFlight == 0 {
			return fmt.Errorf("flush webhooks: %d queued: %w", len(ep.queue), ErrWebhooksHeld)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("flush webhooks: %d queued, %d in flight: %w", len(ep.queue), ep.inFlight, err)
		}
		ep.cond.Wait()
	}
	return nil
}

// Stats returns the endpoint's delivery counts.
func (ep *Endpoint) Stats() DeliveryStats {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.stats
}

// Acknowledged returns how often the event was acknowledged (2xx).
func (ep *Endpoint) Acknowledged(eventID string) int {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.acked[eventID]
}

// Close stops delivery; queued deliveries are abandoned. It waits for the workers.
func (ep *Endpoint) Close() {
	ep.mu.Lock()
	ep.closed = true
	ep.cond.Broadcast()
	ep.mu.Unlock()
	ep.wg.Wait()
}

// FlushWebhooks flushes every endpoint.
func (s *Sim) FlushWebhooks(ctx context.Context) error {
	s.mu.Lock()
	eps := slices.Clone(s.endpoints)
	s.mu.Unlock()
	for _, ep := range eps {
		if err := ep.Flush(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Close stops every endpoint's delivery.
func (s *Sim) Close() {
	s.mu.Lock()
	eps := slices.Clone(s.endpoints)
	s.mu.Unlock()
	for _, ep := range eps {
		ep.Close()
	}
}
