package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/stripeapi"
)

func post(t *testing.T, url string, body any, into any) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %d %s", url, resp.StatusCode, raw)
	}
	if into != nil {
		if err := json.Unmarshal(raw, into); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSandbox(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var received []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ev, err := webhook.ConstructEvent(body, r.Header.Get("Stripe-Signature"), webhookSecret)
		if err != nil {
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		received = append(received, string(ev.Type))
		mu.Unlock()
	}))
	defer hook.Close()

	ctx, cancel := context.WithCancel(context.Background())
	readyCh := make(chan ready, 1)
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- run(ctx, []string{"-stripe-addr", "127.0.0.1:0", "-cryptolens-addr", "127.0.0.1:0", "-control-addr", "127.0.0.1:0",
			"-webhook-url", hook.URL}, &out, func(r ready) { readyCh <- r })
	}()
	var r ready
	select {
	case r = <-readyCh:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("sandbox did not start")
	}
	for _, want := range []string{"STRIPE_API_BASE=" + r.Stripe, "CRYPTOLENS_TOKEN=", "STRIPE_WEBHOOK_SECRETS=whsec_"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}

	var prod, price map[string]string
	post(t, r.Control+"/stripe/products", map[string]any{"name": "Pro", "metadata": map[string]string{"skm_product_id": "1001"}}, &prod)
	post(t, r.Control+"/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 2900}, &price)
	var co map[string]any
	post(t, r.Control+"/stripe/checkout", map[string]any{"email": "ada@example.com", "items": []map[string]any{{"price": price["id"], "quantity": 2}}, "trial_days": 7}, &co)
	post(t, r.Control+"/stripe/advance", map[string]string{"duration": "200h"}, nil)
	post(t, r.Control+"/stripe/flush", nil, nil)
	mu.Lock()
	got := strings.Join(received, " ")
	mu.Unlock()
	for _, want := range []string{"customer.subscription.created", "checkout.session.completed", "invoice.paid", "customer.subscription.updated"} {
		if !strings.Contains(got, want) {
			t.Fatalf("webhooks received %q, want %s among them", got, want)
		}
	}

	// keysync's own clients work against the printed environment.
	sc, err := stripeapi.New(stripeapi.Config{APIKey: r.Env["STRIPE_API_KEY"], BaseURL: r.Env["STRIPE_API_BASE"]})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := sc.GetSubscription(context.Background(), co["subscription"].(string))
	if err != nil || sub.Status != "active" || sub.Items.Data[0].Quantity != 2 {
		t.Fatalf("got %+v, %v", sub, err)
	}
	cc, err := cryptolens.New(cryptolens.Config{BaseURL: r.Env["CRYPTOLENS_API_BASE"], Token: r.Env["CRYPTOLENS_TOKEN"]})
	if err != nil {
		t.Fatal(err)
	}
	key, err := cc.CreateKey(context.Background(), cryptolens.CreateKeyParams{ProductID: 1001, Period: 35})
	if err != nil {
		t.Fatal(err)
	}
	k, err := cc.GetKey(context.Background(), 1001, key.Key)
	// The two simulators share the test clock, 200 hours ahead of the wall clock.
	if err != nil || k.Created.Before(time.Now().Add(199*time.Hour)) {
		t.Fatalf("got %+v, %v: Cryptolens must follow Stripe's test clock", k, err)
	}
	var keys []map[string]any
	resp, err := http.Get(r.Control + "/cryptolens/keys?product=1001")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&keys)
	resp.Body.Close()
	if len(keys) != 1 {
		t.Fatalf("control API lists %d keys, want 1", len(keys))
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestSandboxRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"-stripe-addr", "0.0.0.0:0"}, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "loopback only") {
		t.Fatalf("got %v, want a loopback-only refusal", err)
	}
}
