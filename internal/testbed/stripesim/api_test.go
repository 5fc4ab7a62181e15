package stripesim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

func call(t *testing.T, srv *httptest.Server, method, path, key string, form url.Values, header ...string) (int, map[string]any) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, srv.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func ids(l map[string]any) []string {
	var out []string
	for _, d := range l["data"].([]any) {
		out = append(out, d.(map[string]any)["id"].(string))
	}
	return out
}

func TestAPIAuthAndErrors(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	status, body := call(t, srv, "GET", "/v1/subscriptions", "sk_test_wrong_key_123", nil)
	if status != 401 || !strings.Contains(body["error"].(map[string]any)["message"].(string), "Invalid API Key") ||
		strings.Contains(body["error"].(map[string]any)["message"].(string), "wrong_key") {
		t.Fatalf("got %d %v, want 401 with the key masked", status, body)
	}
	status, body = call(t, srv, "GET", "/v1/subscriptions/sub_nope", "sk_test_sim", nil)
	e := body["error"].(map[string]any)
	if status != 404 || e["code"] != "resource_missing" || e["type"] != "invalid_request_error" {
		t.Fatalf("got %d %v", status, body)
	}
	if status, _ = call(t, srv, "GET", "/v1/subscriptions?status=bogus", "sk_test_sim", nil); status != 400 {
		t.Fatalf("bad status filter: got %d, want 400", status)
	}
}

func TestAPISubscriptionListing(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	var created []string
	for i := range 25 {
		res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
		created = append(created, res.Subscription)
		if i%5 == 0 {
			_ = w.sim.CancelNow(res.Subscription)
		}
	}
	// Default listing leaves canceled ones out; status=all pages through everything, newest first.
	_, def := call(t, srv, "GET", "/v1/subscriptions?limit=100", "sk_test_sim", nil)
	if n := len(def["data"].([]any)); n != 20 {
		t.Fatalf("default listing: got %d, want 20 (no canceled)", n)
	}
	var all []string
	after := ""
	for pages := 0; ; pages++ {
		q := "/v1/subscriptions?status=all&limit=10&expand[]=data.latest_invoice"
		if after != "" {
			q += "&starting_after=" + after
		}
		_, l := call(t, srv, "GET", q, "sk_test_sim", nil)
		page := ids(l)
		all = append(all, page...)
		first := l["data"].([]any)[0].(map[string]any)
		if _, expanded := first["latest_invoice"].(map[string]any); !expanded {
			t.Fatal("latest_invoice not expanded")
		}
		if !l["has_more"].(bool) {
			if pages != 2 {
				t.Fatalf("got %d pages, want 3", pages+1)
			}
			break
		}
		after = page[len(page)-1]
	}
	if len(all) != 25 || all[0] != created[24] || all[24] != created[0] {
		t.Fatalf("got %d subscriptions, first %s last %s; want 25 newest first", len(all), all[0], all[24])
	}
	_, ended := call(t, srv, "GET", "/v1/subscriptions?status=canceled&limit=100", "sk_test_sim", nil)
	if len(ended["data"].([]any)) != 5 {
		t.Fatalf("status=canceled: got %d, want 5", len(ended["data"].([]any)))
	}
}

func TestAPIEvents(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	mark := w.sim.Now().Unix()
	w.sim.Advance(2 * time.Hour)
	w.sim.Advance(31 * 24 * time.Hour)
	_ = res
	_, l := call(t, srv, "GET", "/v1/events?limit=100&types[]=invoice.paid&types[]=customer.subscription.updated", "sk_test_sim", nil)
	for _, e := range l["data"].([]any) {
		typ := e.(map[string]any)["type"]
		if typ != "invoice.paid" && typ != "customer.subscription.updated" {
			t.Fatalf("types filter let %s through", typ)
		}
	}
	_, after := call(t, srv, "GET", "/v1/events?limit=100&created[gt]="+strconv.FormatInt(mark, 10), "sk_test_sim", nil)
	for _, e := range after["data"].([]any) {
		if int64(e.(map[string]any)["created"].(float64)) <= mark {
			t.Fatal("created[gt] let an older event through")
		}
	}
	// Pagination both ways: ending_before gives the events just newer than the cursor.
	_, page1 := call(t, srv, "GET", "/v1/events?limit=5", "sk_test_sim", nil)
	_, page2 := call(t, srv, "GET", "/v1/events?limit=5&starting_after="+ids(page1)[4], "sk_test_sim", nil)
	_, back := call(t, srv, "GET", "/v1/events?limit=5&ending_before="+ids(page2)[0], "sk_test_sim", nil)
	if strings.Join(ids(back), ",") != strings.Join(ids(page1), ",") {
		t.Fatalf("ending_before: got %v, want %v", ids(back), ids(page1))
	}
	// Events older than 30 days are gone from the list.
	w.sim.Advance(40 * 24 * time.Hour)
	cutoff := w.sim.Now().Add(-30 * 24 * time.Hour).Unix()
	_, recent := call(t, srv, "GET", "/v1/events?limit=100", "sk_test_sim", nil)
	for _, e := range recent["data"].([]any) {
		if int64(e.(map[string]any)["created"].(float64)) < cutoff {
			t.Fatal("listed an event older than 30 days")
		}
	}
	if status, _ := call(t, srv, "GET", "/v1/events?limit=5&starting_after="+ids(page1)[0], "sk_test_sim", nil); status != 404 {
		t.Fatalf("paging from an expired event: got %d, want 404", status)
	}
}

func TestAPIMetadataUpdateAndIdempotency(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	res, _ := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	n := w.sim.EventCount()
	form := url.Values{"metadata[cryptolens_key]": {"AAAAA-BBBBB-CCCCC-DDDDD"}}
	for range 2 { // a retried request with the same Idempotency-Key is replayed, not applied again
		status, body := call(t, srv, "POST", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", form, "Idempotency-Key", "idem-1")
		if status != 200 || body["metadata"].(map[string]any)["cryptolens_key"] != "AAAAA-BBBBB-CCCCC-DDDDD" {
			t.Fatalf("got %d %v", status, body["metadata"])
		}
	}
	if got := w.sim.EventTypes(n); len(got) != 1 || got[0] != "customer.subscription.updated" {
		t.Fatalf("got events %v, want one update", got)
	}
	if status, _ := call(t, srv, "POST", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", url.Values{"status": {"canceled"}}); status != 400 {
		t.Fatalf("unknown parameter: got %d, want 400", status)
	}
}

func TestAPIFaults(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	w.sim.SetFaults(stripesim.Faults{RateLimitRate: 1})
	status, body := call(t, srv, "GET", "/v1/subscriptions", "sk_test_sim", nil)
	if status != 429 || body["error"].(map[string]any)["code"] != "rate_limit" {
		t.Fatalf("got %d %v", status, body)
	}
	w.sim.SetFaults(stripesim.Faults{ErrorRate: 1})
	if status, body = call(t, srv, "GET", "/v1/subscriptions", "sk_test_sim", nil); status != 500 || body["error"].(map[string]any)["type"] != "api_error" {
		t.Fatalf("got %d %v", status, body)
	}
	if got := w.sim.Requests()["GET /v1/subscriptions"]; got != 2 {
		t.Fatalf("got %d requests counted, want 2", got)
	}
}

// An invoice embeds its first 10 lines (has_more beyond), as Stripe's do; the rest
// come from GET /v1/invoices/{id}/lines, page by page, in the invoice's order.
func TestInvoiceLinesArePaged(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "p@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	if err != nil {
		t.Fatal(err)
	}
	for q := range 6 {
		if err := w.sim.ChangeQuantity(res.Subscription, int64(2+q%2), stripesim.ChangeOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := w.sim.Subscription(res.Subscription)
	w.sim.Advance(time.Unix(s.CurrentPeriodEnd, 0).Sub(w.sim.Now()) + 2*time.Hour)
	invs := w.sim.Invoices(res.Subscription)
	inv := invs[len(invs)-1]
	if len(inv.Lines) != 13 {
		t.Fatalf("renewal invoice has %d lines, want 12 prorations and the subscription line", len(inv.Lines))
	}
	_, got := call(t, srv, "GET", "/v1/invoices/"+inv.ID, "sk_test_sim", nil)
	lines := got["lines"].(map[string]any)
	if n := len(lines["data"].([]any)); n != stripesim.EmbeddedLines || lines["has_more"] != true {
		t.Fatalf("embedded: %d lines, has_more %v; want 10 and true", n, lines["has_more"])
	}
	var all []string
	for after := ""; ; {
		q := "/v1/invoices/" + inv.ID + "/lines?limit=5"
		if after != "" {
			q += "&starting_after=" + after
		}
		_, page := call(t, srv, "GET", q, "sk_test_sim", nil)
		all = append(all, ids(page)...)
		if page["has_more"] != true {
			break
		}
		after = all[len(all)-1]
	}
	if len(all) != 13 || all[12] != inv.Lines[12].ID || all[0] != inv.Lines[0].ID {
		t.Fatalf("paged lines %v, want the invoice's 13 in order", all)
	}
}

// A canceled subscription refuses new metadata (Stripe's answers in 2023–24), or takes
// it (2026) when the option says so; cancellation_details can always change.
func TestAPICanceledSubscriptionUpdates(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		canceledMetadata bool
		wantStatus       int
		wantMessage      string
	}{
		"2023-24: refused":     {false, 400, "A canceled subscription can only update its cancellation_details."},
		"2026: metadata taken": {true, 200, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, stripesim.Options{CanceledMetadata: tc.canceledMetadata})
			srv := httptest.NewServer(w.sim)
			defer srv.Close()
			res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
			mustNil(t, err)
			mustNil(t, w.sim.CancelNow(res.Subscription))
			status, body := call(t, srv, "POST", "/v1/subscriptions/"+res.Subscription, "sk_test_sim",
				url.Values{"metadata[cryptolens_key]": {"AAAAA"}})
			msg, _ := path(body, "error.message")
			if status != tc.wantStatus || (tc.wantMessage != "" && msg != tc.wantMessage) {
				t.Fatalf("metadata on a canceled subscription: got %d %v, want %d %q", status, msg, tc.wantStatus, tc.wantMessage)
			}
			if err := w.sim.SetSubscriptionMetadata(res.Subscription, map[string]string{"k": "v"}); (err == nil) != tc.canceledMetadata {
				t.Fatalf("SetSubscriptionMetadata: got %v", err)
			}
			status, body = call(t, srv, "POST", "/v1/subscriptions/"+res.Subscription, "sk_test_sim",
				url.Values{"cancellation_details[comment]": {"too slow"}, "cancellation_details[feedback]": {"low_quality"}})
			if comment, _ := path(body, "cancellation_details.comment"); status != 200 || comment != "too slow" {
				t.Fatalf("cancellation_details on a canceled subscription: got %d %v", status, body)
			}
		})
	}
}

// Errors carry Stripe-Should-Retry as stripe-go reads it: true for an object lock,
// false for a final answer, none for a rate limit or a server error.
func TestAPIShouldRetry(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	tests := map[string]struct {
		faults     stripesim.Faults
		path       string
		wantStatus int
		wantCode   any
		wantHeader string
	}{
		"lock timeout":   {stripesim.Faults{LockTimeoutNext: 1}, "/v1/subscriptions", 429, "lock_timeout", "true"},
		"rate limit":     {stripesim.Faults{RateLimitNext: 1}, "/v1/subscriptions", 429, "rate_limit", ""},
		"server error":   {stripesim.Faults{ErrorNext: 1}, "/v1/subscriptions", 500, nil, ""},
		"conflict":       {stripesim.Faults{ConflictNext: 1}, "/v1/subscriptions", 409, "idempotency_key_in_use", "true"},
		"final error":    {stripesim.Faults{FinalErrorNext: 1}, "/v1/subscriptions", 500, nil, "false"},
		"missing object": {stripesim.Faults{}, "/v1/subscriptions/sub_nope", 404, "resource_missing", "false"},
		"bad parameter":  {stripesim.Faults{}, "/v1/subscriptions?status=bogus", 400, nil, "false"},
	}
	for name, tc := range tests {
		w.sim.SetFaults(tc.faults)
		req, _ := http.NewRequest("GET", srv.URL+tc.path, nil)
		req.Header.Set("Authorization", "Bearer sk_test_sim")
		resp, err := http.DefaultClient.Do(req)
		mustNil(t, err)
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		code, _ := path(body, "error.code")
		if resp.StatusCode != tc.wantStatus || code != tc.wantCode || resp.Header.Get("Stripe-Should-Retry") != tc.wantHeader {
			t.Errorf("%s: got %d %v Stripe-Should-Retry=%q, want %d %v %q", name, resp.StatusCode, code,
				resp.Header.Get("Stripe-Should-Retry"), tc.wantStatus, tc.wantCode, tc.wantHeader)
		}
	}

	// stripe-go itself retries the lock and gives up on the rate limit.
	w.sim.SetFaults(stripesim.Faults{LockTimeoutNext: 1})
	sc := stripeClient(srv, 1)
	before := w.sim.Requests()["GET /v1/prices/{id}"]
	if _, err := sc.Prices.Get(w.monthly, nil); err != nil || w.sim.Requests()["GET /v1/prices/{id}"] != before+2 {
		t.Fatalf("lock timeout: got %v after %d requests, want success on the retry", err, w.sim.Requests()["GET /v1/prices/{id}"]-before)
	}
	w.sim.SetFaults(stripesim.Faults{RateLimitNext: 1})
	if _, err := sc.Prices.Get(w.monthly, nil); err == nil {
		t.Fatal("rate limit: stripe-go retried it")
	}
}

// A retried POST must repeat its parameters: a key reused for another request is an
// idempotency_error.
func TestAPIIdempotencyKeyReuse(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: w.monthly}}})
	mustNil(t, err)
	p := "/v1/subscriptions/" + res.Subscription
	if status, _ := call(t, srv, "POST", p, "sk_test_sim", url.Values{"metadata[a]": {"1"}}, "Idempotency-Key", "k1"); status != 200 {
		t.Fatalf("first use: got %d", status)
	}
	status, body := call(t, srv, "POST", p, "sk_test_sim", url.Values{"metadata[a]": {"2"}}, "Idempotency-Key", "k1")
	if typ, _ := path(body, "error.type"); status != 400 || typ != "idempotency_error" {
		t.Fatalf("reuse with other parameters: got %d %v, want 400 idempotency_error", status, body)
	}
}

// A subscription embeds its first 20 items (has_more beyond); the rest come from
// GET /v1/subscription_items. The hosted Stripe module's metadata is carried as given.
func TestSubscriptionItemsArePaged(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	prod := w.sim.CreateProduct("Add-on", nil)
	var items []stripesim.ItemParams
	for range 23 {
		p, err := w.sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 100})
		mustNil(t, err)
		items = append(items, stripesim.ItemParams{Price: p})
	}
	module := map[string]string{"skm_key_id": "42", "skm_key_globalid": "123456"}
	res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: "many@example.com", Items: items, SubscriptionMetadata: module})
	mustNil(t, err)
	_, s := call(t, srv, "GET", "/v1/subscriptions/"+res.Subscription, "sk_test_sim", nil)
	embedded := s["items"].(map[string]any)
	if n := len(embedded["data"].([]any)); n != stripesim.EmbeddedItems || embedded["has_more"] != true {
		t.Fatalf("embedded: %d items, has_more %v; want %d and true", n, embedded["has_more"], stripesim.EmbeddedItems)
	}
	if md := s["metadata"].(map[string]any); md["skm_key_id"] != "42" || md["skm_key_globalid"] != "123456" {
		t.Fatalf("metadata %v, want the module's keys", md)
	}
	var all []string
	for after := ""; ; {
		q := "/v1/subscription_items?limit=10&subscription=" + res.Subscription
		if after != "" {
			q += "&starting_after=" + after
		}
		_, page := call(t, srv, "GET", q, "sk_test_sim", nil)
		all = append(all, ids(page)...)
		if page["has_more"] != true {
			break
		}
		after = all[len(all)-1]
	}
	sub := w.subscription(t, res.Subscription)
	if len(all) != 23 || all[22] != sub.Items[22].ID {
		t.Fatalf("paged %d items, want all 23 in order", len(all))
	}
	if status, _ := call(t, srv, "GET", "/v1/subscription_items", "sk_test_sim", nil); status != 400 {
		t.Fatalf("items without a subscription: got %d, want 400", status)
	}
}
