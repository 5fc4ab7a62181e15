package stripesim_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// receiver records verified deliveries; failFirst makes the first n requests fail.
type receiver struct {
	mu        sync.Mutex
	secret    string
	failFirst int
	requests  int
	verified  []string
	rejected  int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if r.requests <= r.failFirst {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	ev, err := webhook.ConstructEvent(body, req.Header.Get("Stripe-Signature"), r.secret)
	if err != nil {
		r.rejected++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.verified = append(r.verified, ev.ID)
	w.WriteHeader(http.StatusOK)
}

func (r *receiver) snapshot() (int, []string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests, append([]string(nil), r.verified...), r.rejected
}

func flush(t *testing.T, ep *stripesim.Endpoint) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ep.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestWebhooksVerifyWithStripeGo(t *testing.T) {
	t.Parallel()
	rcv := &receiver{secret: "whsec_new"}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w := newWorld(t, stripesim.Options{})
	// While a secret rolls, Stripe signs with both; the receiver knows only the new one.
	ep := w.sim.AddEndpoint(srv.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_old", "whsec_new"}})
	if _, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}}); err != nil {
		t.Fatal(err)
	}
	flush(t, ep)
	_, verified, rejected := rcv.snapshot()
	st := ep.Stats()
	if rejected != 0 || len(verified) != st.Events || st.Events < 8 || st.Acknowledged != st.Events {
		t.Fatalf("got %d verified, %d rejected, stats %+v", len(verified), rejected, st)
	}
}

func TestWebhooksRetryUntilAcknowledged(t *testing.T) {
	t.Parallel()
	rcv := &receiver{secret: "whsec_x", failFirst: 5}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w := newWorld(t, stripesim.Options{})
	ep := w.sim.AddEndpoint(srv.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}, Workers: 1, RetryBackoff: time.Millisecond})
	w.sim.CreateProduct("Other", nil)
	flush(t, ep)
	requests, verified, _ := rcv.snapshot()
	if requests != 6 || len(verified) != 1 || ep.Stats().Failed != 5 {
		t.Fatalf("got %d requests, %d verified, stats %+v: want 5 failures then success", requests, len(verified), ep.Stats())
	}
}

func TestWebhooksGiveUp(t *testing.T) {
	t.Parallel()
	rcv := &receiver{secret: "whsec_x", failFirst: 1000}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w := newWorld(t, stripesim.Options{})
	ep := w.sim.AddEndpoint(srv.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}, MaxAttempts: 3, RetryBackoff: time.Millisecond})
	w.sim.CreateProduct("Other", nil)
	flush(t, ep)
	if st := ep.Stats(); st.Attempts != 3 || st.GaveUp != 1 {
		t.Fatalf("got %+v, want 3 attempts then give up", st)
	}
}

func TestWebhooksDuplicateAndDrop(t *testing.T) {
	t.Parallel()
	rcv := &receiver{secret: "whsec_x"}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w := newWorld(t, stripesim.Options{Seed: 7})
	ep := w.sim.AddEndpoint(srv.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}, DuplicateRate: 0.5, DropRate: 0.3, Reorder: true, Seed: 3})
	for range 10 {
		if _, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}}); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, ep)
	st := ep.Stats()
	_, verified, _ := rcv.snapshot()
	if st.Dropped == 0 || st.Duplicated == 0 || len(verified) != st.Events-st.Dropped+st.Duplicated {
		t.Fatalf("got stats %+v and %d deliveries, want drops, duplicates and every other event delivered", st, len(verified))
	}
	seen := map[string]int{}
	for _, id := range verified {
		seen[id]++
	}
	if len(seen) != st.Events-st.Dropped {
		t.Fatalf("got %d distinct events, want %d", len(seen), st.Events-st.Dropped)
	}
}

// Held webhooks (POST /endpoints/hold) queue, on every endpoint and on one added while
// held, without a single attempt; a flush says so at once rather than waiting; once
// released, every event is delivered.
func TestWebhooksHeldUntilReleased(t *testing.T) {
	t.Parallel()
	first, second := &receiver{secret: "whsec_x"}, &receiver{secret: "whsec_x"}
	srv1, srv2 := httptest.NewServer(first), httptest.NewServer(second)
	defer srv1.Close()
	defer srv2.Close()
	w := newWorld(t, stripesim.Options{})
	control := httptest.NewServer(w.sim.ControlHandler())
	defer control.Close()
	hold := func(on bool) {
		t.Helper()
		resp, err := http.Post(control.URL+"/endpoints/hold", "application/json", strings.NewReader(fmt.Sprintf(`{"on":%v}`, on)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("hold %v: got %d", on, resp.StatusCode)
		}
	}
	ep1 := w.sim.AddEndpoint(srv1.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}})
	hold(true)
	ep2 := w.sim.AddEndpoint(srv2.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}})
	if _, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.sim.FlushWebhooks(ctx); !errors.Is(err, stripesim.ErrWebhooksHeld) {
		t.Fatalf("flush while held: got %v, want ErrWebhooksHeld", err)
	}
	// An endpoint that is not held delivers within milliseconds: give it a moment to
	// show that these do not.
	quiet := time.NewTimer(300 * time.Millisecond)
	defer quiet.Stop()
	<-quiet.C
	for i, c := range []struct {
		ep  *stripesim.Endpoint
		rcv *receiver
	}{{ep1, first}, {ep2, second}} {
		if requests, _, _ := c.rcv.snapshot(); requests != 0 || c.ep.Stats().Events == 0 || c.ep.Stats().Attempts != 0 {
			t.Fatalf("endpoint %d while held: got %d requests and %+v, want events queued and no attempt", i+1, requests, c.ep.Stats())
		}
	}

	hold(false)
	if err := w.sim.FlushWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		ep  *stripesim.Endpoint
		rcv *receiver
	}{{ep1, first}, {ep2, second}} {
		_, verified, _ := c.rcv.snapshot()
		if st := c.ep.Stats(); st.Events == 0 || len(verified) != st.Events || st.Acknowledged != st.Events {
			t.Fatalf("endpoint %d once released: got %d deliveries and %+v, want every event", i+1, len(verified), st)
		}
	}
}
