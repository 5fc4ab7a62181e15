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
	"github.com/keysync/keysync/internal/testbed/sandbox"
	"github.com/keysync/keysync/internal/testbed/stripesim"
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

// The sandbox plays the real-world modes through its control API: events in basil for
// the account while the webhook endpoint stays pinned to 2023-10-16, invoiced customers,
// paused collection, metered usage, moved trials and events from elsewhere.
func TestSandboxRealWorldModes(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	versions := map[string]int{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var env struct {
			APIVersion string `json:"api_version"`
		}
		_ = json.Unmarshal(body, &env)
		mu.Lock()
		versions[env.APIVersion]++
		mu.Unlock()
	}))
	defer hook.Close()
	ctx, cancel := context.WithCancel(context.Background())
	readyCh := make(chan ready, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-stripe-addr", "127.0.0.1:0", "-cryptolens-addr", "127.0.0.1:0", "-control-addr", "127.0.0.1:0",
			"-webhook-url", hook.URL, "-event-version", stripesim.VersionBasil, "-webhook-api-version", stripesim.APIVersion,
			"-canceled-metadata"}, io.Discard, func(r ready) { readyCh <- r })
	}()
	var r ready
	select {
	case r = <-readyCh:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("sandbox did not start")
	}
	ctl := sandbox.New(r.Control)
	bg := context.Background()

	var prod, price, metered map[string]string
	post(t, r.Control+"/stripe/products", map[string]any{"name": "Pro"}, &prod)
	post(t, r.Control+"/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 2900}, &price)
	post(t, r.Control+"/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 1, "usage_type": "metered"}, &metered)
	var invoiced, paused, usage, trial map[string]any
	post(t, r.Control+"/stripe/subscriptions", map[string]any{"email": "net30@example.com", "items": []map[string]any{{"price": price["id"]}},
		"collection_method": "send_invoice", "days_until_due": 30}, &invoiced)
	post(t, r.Control+"/stripe/checkout", map[string]any{"email": "p@example.com", "items": []map[string]any{{"price": price["id"]}}}, &paused)
	post(t, r.Control+"/stripe/subscriptions/"+paused["subscription"].(string)+"/pause_collection", map[string]any{"behavior": "void"}, nil)
	post(t, r.Control+"/stripe/checkout", map[string]any{"email": "m@example.com", "items": []map[string]any{{"price": metered["id"]}}}, &usage)
	post(t, r.Control+"/stripe/checkout", map[string]any{"email": "t@example.com", "items": []map[string]any{{"price": price["id"]}}, "trial_days": 7}, &trial)
	now, err := ctl.Now(bg)
	if err != nil {
		t.Fatal(err)
	}
	post(t, r.Control+"/stripe/subscriptions/"+trial["subscription"].(string)+"/extend_trial", map[string]any{"trial_end": now.Add(30 * 24 * time.Hour)}, nil)
	u, err := ctl.Subscription(bg, usage["subscription"].(string))
	if err != nil {
		t.Fatal(err)
	}
	post(t, r.Control+"/stripe/subscription_items/"+u.Subscription.Items[0].ID+"/usage", map[string]any{"quantity": 12}, nil)
	if _, err := ctl.InjectEvent(bg, "customer.subscription.updated", paused["subscription"].(string), true, ""); err != nil {
		t.Fatal(err)
	}
	post(t, r.Control+"/stripe/subscriptions/"+trial["subscription"].(string)+"/metadata", map[string]any{"metadata": map[string]string{"skm_key_id": "7"}}, nil)

	tests := map[string]struct {
		id   string
		want func(sandbox.Subscription) bool
	}{
		"invoiced": {invoiced["subscription"].(string), func(s sandbox.Subscription) bool {
			return s.Subscription.CollectionMethod == "send_invoice" && s.Subscription.Status == "active"
		}},
		"paused": {paused["subscription"].(string), func(s sandbox.Subscription) bool {
			return s.Subscription.PauseCollection != nil && s.Subscription.PauseCollection.Behavior == "void"
		}},
		"metered":   {usage["subscription"].(string), func(s sandbox.Subscription) bool { return s.Subscription.Items[0].Usage == 12 }},
		"new trial": {trial["subscription"].(string), func(s sandbox.Subscription) bool { return s.Subscription.TrialEnd == now.Add(30*24*time.Hour).Unix() }},
	}
	for name, tc := range tests {
		s, err := ctl.Subscription(bg, tc.id)
		if err != nil || !tc.want(s) {
			t.Errorf("%s: got %+v, %v", name, s.Subscription, err)
		}
	}

	// The Events API speaks basil; the pinned endpoint got 2023-10-16 only.
	if err := ctl.Flush(bg); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, r.Env["STRIPE_API_BASE"]+"/v1/events?limit=1", nil)
	req.Header.Set("Authorization", "Bearer "+r.Env["STRIPE_API_KEY"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var evs struct {
		Data []struct {
			APIVersion string `json:"api_version"`
		}
	}
	_ = json.NewDecoder(resp.Body).Decode(&evs)
	resp.Body.Close()
	mu.Lock()
	got := versions
	mu.Unlock()
	if len(evs.Data) != 1 || evs.Data[0].APIVersion != stripesim.VersionBasil || len(got) != 1 || got[stripesim.APIVersion] == 0 {
		t.Fatalf("events API %+v, webhooks by version %v; want basil and only 2023-10-16", evs.Data, got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// -webhook-drop-rate loses webhooks for good (with -event-version, the basil
// run with 30% of webhooks lost); a share outside 0..1 is refused.
func TestSandboxDropsWebhooks(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	delivered := 0
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		delivered++
		mu.Unlock()
	}))
	defer hook.Close()
	ctx, cancel := context.WithCancel(context.Background())
	readyCh, done := make(chan ready, 1), make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- run(ctx, []string{"-stripe-addr", "127.0.0.1:0", "-cryptolens-addr", "127.0.0.1:0", "-control-addr", "127.0.0.1:0",
			"-webhook-url", hook.URL, "-event-version", stripesim.VersionBasil, "-webhook-drop-rate", "1"}, &out, func(r ready) { readyCh <- r })
	}()
	var r ready
	select {
	case r = <-readyCh:
	case err := <-done:
		t.Fatal(err)
	}
	var prod, price map[string]string
	post(t, r.Control+"/stripe/products", map[string]any{"name": "Pro"}, &prod)
	post(t, r.Control+"/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 2900}, &price)
	post(t, r.Control+"/stripe/checkout", map[string]any{"email": "d@example.com", "items": []map[string]any{{"price": price["id"]}}}, nil)
	if err := sandbox.New(r.Control).Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if delivered != 0 || !strings.Contains(out.String(), "webhooks lost   100%") {
		t.Fatalf("got %d deliveries and output %q, want none delivered and the loss announced", delivered, out.String())
	}
	err := run(context.Background(), []string{"-webhook-drop-rate", "1.5"}, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "-webhook-drop-rate") {
		t.Fatalf("drop rate 1.5: got %v, want it refused", err)
	}
}

func TestSandboxRefusesUnknownVersion(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"-stripe-addr", "127.0.0.1:0", "-cryptolens-addr", "127.0.0.1:0", "-control-addr", "127.0.0.1:0",
		"-event-version", "2024-06-20"}, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "2024-06-20") {
		t.Fatalf("got %v, want the version refused", err)
	}
}
