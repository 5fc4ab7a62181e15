package stripesim_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// collector keeps every delivery's body.
type collector struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var raw json.RawMessage
	_ = json.NewDecoder(r.Body).Decode(&raw)
	c.mu.Lock()
	c.bodies = append(c.bodies, raw)
	c.mu.Unlock()
}

func (c *collector) events(t *testing.T) []map[string]any {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]map[string]any, len(c.bodies))
	for i, b := range c.bodies {
		if err := json.Unmarshal(b, &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// stripeClient is stripe-go v76 pointed at the simulator: it sends Stripe-Version
// 2023-10-16 on every request.
func stripeClient(srv *httptest.Server, retries int64) *client.API {
	b := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL: stripe.String(srv.URL), MaxNetworkRetries: stripe.Int64(retries),
		LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull}, EnableTelemetry: stripe.Bool(false)})
	return client.New("sk_test_sim", &stripe.Backends{API: b, Connect: b, Uploads: b})
}

// path reads a nested field of decoded JSON ("data.object.parent.type"); ok is false
// when a step is missing.
func path(v any, p string) (any, bool) {
	for _, k := range strings.Split(p, ".") {
		m, isMap := v.(map[string]any)
		if !isMap {
			return nil, false
		}
		if v, isMap = m[k]; !isMap {
			return nil, false
		}
	}
	return v, true
}

// checkBasil checks an object rendered in 2025-03-31.basil against what moved there
// (fidelity-research §6, stripe-go v82.0.0's structs).
func checkBasil(t *testing.T, where string, o map[string]any) {
	t.Helper()
	absent := func(fields ...string) {
		for _, f := range fields {
			if _, has := o[f]; has {
				t.Errorf("%s: %s %s has %q, which basil removed", where, o["object"], o["id"], f)
			}
		}
	}
	present := func(fields ...string) {
		for _, f := range fields {
			if _, has := path(o, f); !has {
				t.Errorf("%s: %s %s lacks %q", where, o["object"], o["id"], f)
			}
		}
	}
	switch o["object"] {
	case "invoice":
		absent("subscription", "subscription_details", "paid", "paid_out_of_band", "charge", "payment_intent", "discount", "tax", "total_tax_amounts")
		present("parent", "total_taxes", "status")
		if sub, _ := path(o, "parent.subscription_details.subscription"); sub == nil {
			t.Errorf("%s: invoice %s has no parent.subscription_details.subscription", where, o["id"])
		}
		for _, l := range o["lines"].(map[string]any)["data"].([]any) {
			checkBasil(t, where, l.(map[string]any))
		}
	case "line_item":
		absent("price", "type", "subscription_item", "proration", "invoice_item", "tax_amounts", "amount_excluding_tax")
		present("period.end", "pricing.price_details.price", "pricing.price_details.product", "parent.type")
		if item, _ := path(o, "parent.subscription_item_details.subscription_item"); item == nil {
			t.Errorf("%s: line %s has no parent.subscription_item_details.subscription_item", where, o["id"])
		}
	case "charge":
		absent("invoice")
	case "subscription":
		absent("current_period_start", "current_period_end", "discount", "billing_thresholds")
		present("items", "latest_invoice", "status", "trial_end", "pause_collection", "cancel_at_period_end")
		for _, it := range o["items"].(map[string]any)["data"].([]any) {
			for _, f := range []string{"current_period_start", "current_period_end"} {
				if v, _ := it.(map[string]any)[f]; v == nil {
					t.Errorf("%s: subscription %s item lacks %s", where, o["id"], f)
				}
			}
		}
	case "checkout.session":
		absent("shipping_details")
		present("subscription", "invoice")
	}
}

// An account on basil gets basil events from the Events API and at endpoints that pin
// no version; an endpoint pinned to 2023-10-16 and stripe-go's reads stay 2023-10-16.
func TestEventVersions(t *testing.T) {
	t.Parallel()
	pinned, follows := &collector{}, &collector{}
	pinnedSrv, followsSrv := httptest.NewServer(pinned), httptest.NewServer(follows)
	defer pinnedSrv.Close()
	defer followsSrv.Close()
	w := newWorld(t, stripesim.Options{AccountAPIVersion: stripesim.VersionBasil})
	epPinned := w.sim.AddEndpoint(pinnedSrv.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}, APIVersion: stripesim.APIVersion})
	epFollows := w.sim.AddEndpoint(followsSrv.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}})
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	mustNil(t, err)
	mustNil(t, w.sim.ChangeQuantity(res.Subscription, 2, stripesim.ChangeOptions{}))
	advanceTo(w, w.subscription(t, res.Subscription).CurrentPeriodEnd, 2*hour)
	_, err = w.sim.Refund(w.sim.Charges(res.Invoice)[0].ID, 100)
	mustNil(t, err)
	flush(t, epPinned)
	flush(t, epFollows)

	// The Events API and the endpoint that follows the account: basil.
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	_, listed := call(t, srv, "GET", "/v1/events?limit=100", "sk_test_sim", nil)
	sources := map[string][]map[string]any{"events API": nil, "endpoint following the account": follows.events(t)}
	for _, e := range listed["data"].([]any) {
		sources["events API"] = append(sources["events API"], e.(map[string]any))
	}
	sawPeriodMove := false
	for name, evs := range sources {
		if len(evs) == 0 {
			t.Fatalf("%s: got no events", name)
		}
		for _, e := range evs {
			if e["api_version"] != stripesim.VersionBasil {
				t.Fatalf("%s: event api_version %v, want %s", name, e["api_version"], stripesim.VersionBasil)
			}
			checkBasil(t, name+" "+e["type"].(string), e["data"].(map[string]any)["object"].(map[string]any))
			prev, _ := path(e, "data.previous_attributes")
			if p, ok := prev.(map[string]any); ok && e["type"] == "customer.subscription.updated" {
				if _, old := p["current_period_end"]; old {
					t.Errorf("%s: previous_attributes has current_period_end", name)
				}
				if item, _ := path(p, "items.data"); item != nil {
					if end, _ := path(item.([]any)[0], "current_period_end"); end != nil {
						sawPeriodMove = true
					}
				}
			}
		}
	}
	if !sawPeriodMove {
		t.Error("no customer.subscription.updated showed the old period on its items")
	}
	// stripe-go v76 refuses such events, as it says it will.
	raw, _ := json.Marshal(sources["endpoint following the account"][0])
	signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: raw, Secret: "whsec_x"})
	if _, err := webhook.ConstructEvent(raw, signed.Header, "whsec_x"); err == nil || !strings.Contains(err.Error(), "API version") {
		t.Fatalf("ConstructEvent of a basil event: got %v, want a version mismatch", err)
	}
	// Decoded into v76's types anyway, the invoice has lost its subscription.
	for _, e := range sources["events API"] {
		if e["type"] == "invoice.paid" {
			b, _ := json.Marshal(e["data"].(map[string]any)["object"])
			var inv stripe.Invoice
			if err := json.Unmarshal(b, &inv); err != nil || inv.Subscription != nil || inv.Paid {
				t.Fatalf("basil invoice as v76: subscription %v paid %v (%v), want none, false", inv.Subscription, inv.Paid, err)
			}
			break
		}
	}

	// The pinned endpoint: 2023-10-16, valid against its spec, accepted by stripe-go.
	for _, e := range pinned.events(t) {
		raw, _ := json.Marshal(e)
		validate(t, "event", raw)
		signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: raw, Secret: "whsec_x"})
		if _, err := webhook.ConstructEvent(raw, signed.Header, "whsec_x"); err != nil {
			t.Fatalf("pinned endpoint: %v", err)
		}
	}

	// stripe-go v76 reads 2023-10-16; a request without Stripe-Version gets basil.
	sc := stripeClient(srv, 0)
	sub, err := sc.Subscriptions.Get(res.Subscription, &stripe.SubscriptionParams{Expand: []*string{stripe.String("latest_invoice")}})
	if err != nil || sub.CurrentPeriodEnd == 0 || sub.LatestInvoice.Subscription == nil || sub.LatestInvoice.Subscription.ID != res.Subscription {
		t.Fatalf("stripe-go read: %+v, %v", sub, err)
	}
	validate(t, "subscription", get(t, srv, "/v1/subscriptions/"+res.Subscription+"?expand[]=latest_invoice"))
	_, plain := call(t, srv, "GET", "/v1/subscriptions/"+res.Subscription+"?expand[]=latest_invoice", "sk_test_sim", nil)
	checkBasil(t, "GET without Stripe-Version", plain)
	checkBasil(t, "GET without Stripe-Version", plain["latest_invoice"].(map[string]any))
	_, items := call(t, srv, "GET", "/v1/subscription_items?subscription="+res.Subscription, "sk_test_sim", nil)
	if end, _ := path(items["data"].([]any)[0], "current_period_end"); end == nil {
		t.Fatal("a basil subscription item read alone lacks current_period_end")
	}
	if status, _ := call(t, srv, "GET", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", nil, "Stripe-Version", "2019-01-01"); status != 400 {
		t.Fatalf("an unknown Stripe-Version: got %d, want 400", status)
	}

	// Changing the account's version changes new events only.
	n := len(w.sim.Events())
	mustNil(t, w.sim.SetAccountAPIVersion(stripesim.APIVersion))
	mustNil(t, w.sim.CancelNow(res.Subscription))
	evs := w.sim.Events()
	if evs[n-1].APIVersion != stripesim.VersionBasil || evs[n].APIVersion != stripesim.APIVersion {
		t.Fatalf("versions around the change: %s then %s", evs[n-1].APIVersion, evs[n].APIVersion)
	}
	validate(t, "event", evs[n].Payload)
}

// Events can come from live mode or a connected account; they are delivered and listed
// like any other.
func TestInjectEvent(t *testing.T) {
	t.Parallel()
	rcv := &collector{}
	rsrv := httptest.NewServer(rcv)
	defer rsrv.Close()
	w := newWorld(t, stripesim.Options{})
	ep := w.sim.AddEndpoint(rsrv.URL, stripesim.EndpointOptions{Secrets: []string{"whsec_x"}, Types: []string{"customer.subscription.updated"}})
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "c@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	mustNil(t, err)
	tests := map[string]struct {
		o        stripesim.InjectOptions
		livemode bool
		account  any
	}{
		"live mode":         {stripesim.InjectOptions{Livemode: true}, true, nil},
		"connected account": {stripesim.InjectOptions{Account: "acct_1Connected"}, false, "acct_1Connected"},
	}
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	for name, tc := range tests {
		id, err := w.sim.InjectEvent("customer.subscription.updated", res.Subscription, tc.o)
		mustNil(t, err)
		_, e := call(t, srv, "GET", "/v1/events/"+id, "sk_test_sim", nil)
		live, _ := path(e, "data.object.livemode")
		if e["livemode"] != tc.livemode || e["account"] != tc.account || live != tc.livemode {
			t.Errorf("%s: got livemode %v (object %v), account %v; want %v, %v", name, e["livemode"], live, e["account"], tc.livemode, tc.account)
		}
		raw, _ := json.Marshal(e)
		validate(t, "event", raw)
	}
	flush(t, ep)
	t.Logf("stats %+v", ep.Stats())
	live, account := 0, 0
	for _, e := range rcv.events(t) {
		if e["livemode"] == true {
			live++
		}
		if e["account"] == "acct_1Connected" {
			account++
		}
	}
	if live != 1 || account != 1 {
		t.Fatalf("delivered %d live and %d connected-account events, want 1 and 1", live, account)
	}
	// The test-mode snapshot of the subscription is untouched by the live event.
	_, s := call(t, srv, "GET", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", nil)
	if s["livemode"] != false {
		t.Fatal("the subscription turned live")
	}
	for name, args := range map[string][2]string{"unknown object": {"sub_nope", ""}, "bad account": {res.Subscription, "1234"}} {
		if _, err := w.sim.InjectEvent("customer.subscription.updated", args[0], stripesim.InjectOptions{Account: args[1]}); err == nil {
			t.Errorf("%s: got no error", name)
		}
	}
}
