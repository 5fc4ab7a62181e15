package delivery_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

const sessionRoute = "GET /v1/checkout/sessions/{id}"

// wantPrivate checks the headers every license page answer carries, and returns the
// answer's CSP nonce.
func wantPrivate(t *testing.T, resp *http.Response) string {
	t.Helper()
	h := resp.Header
	if h.Get("Cache-Control") != "no-store" || h.Get("Referrer-Policy") != "no-referrer" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("%d: got Cache-Control %q, Referrer-Policy %q, X-Content-Type-Options %q; want no-store, no-referrer, nosniff",
			resp.StatusCode, h.Get("Cache-Control"), h.Get("Referrer-Policy"), h.Get("X-Content-Type-Options"))
	}
	m := regexp.MustCompile(`^default-src 'none'; style-src 'nonce-([A-Za-z0-9_-]{16,})'; script-src 'nonce-([A-Za-z0-9_-]+)'; ` +
		`img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'$`).FindStringSubmatch(h.Get("Content-Security-Policy"))
	if m == nil || m[1] != m[2] {
		t.Fatalf("%d: got Content-Security-Policy %q, want a strict one with one nonce", resp.StatusCode, h.Get("Content-Security-Policy"))
	}
	return m[1]
}

// The customer lands on the license page straight from Checkout, before any webhook
// arrived: the page's own Sync makes the key (under the usual lock, audited as the
// customer's), and the page shows it with its product, expiry, machines and the portal
// link; the same as JSON. Showing it again makes no second key.
func TestLicensePageMakesTheKeyBeforeAnyWebhook(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.checkout(t, stripesim.CheckoutParams{})
	if n := len(e.crypto.Keys(product)); n != 0 {
		t.Fatalf("got %d keys before the page, want none", n)
	}
	base := e.page(t, delivery.PageOptions{PortalURL: "https://billing.example.com/p/login/test_123"})

	// HTML, as a browser asks.
	resp, body := fetch(t, "GET", base+"/license?session_id="+res.Session, "text/html,application/xhtml+xml,*/*;q=0.8", nil, "")
	nonce := wantPrivate(t, resp)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("got %d %s, want 200 HTML\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	k := e.keyOf(t, res.Subscription)
	if k.Notes != syncer.Marker(res.Subscription) || k.MaxNoOfMachines != 3 || !k.Features[0] {
		t.Fatalf("the page's Sync made key %+v, want the plan's (F1, 3 machines, the marker)", k)
	}
	for _, want := range []string{`value="` + k.Key + `"`, "<h2 id=\"product-0\">Product 1001</h2>", k.Expires.UTC().Format("2 January 2006"),
		"<dd>3</dd>", `href="https://billing.example.com/p/login/test_123"`, `<html lang="en">`, `<label for="key-0">`,
		`<style nonce="` + nonce + `">`, `<script nonce="` + nonce + `">`, `hidden>Copy`} {
		if !strings.Contains(body, want) {
			t.Fatalf("the page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "http-equiv=\"refresh\"") {
		t.Fatal("a page with the key refreshes itself")
	}

	// The key is the page's: audited with the customer as its cause.
	rows, err := e.store.AuditFor(context.Background(), res.Subscription)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 || rows[0].Action != "create_key" || rows[0].Outcome != "applied" || rows[0].Cause != "customer" ||
		rows[0].CauseID == nil || *rows[0].CauseID != res.Session {
		t.Fatalf("got audit rows %+v, want create_key applied with cause customer and the session's id", rows)
	}

	// JSON, as a vendor's own page asks.
	resp, body = fetch(t, "GET", base+"/license?session_id="+res.Session, "application/json", nil, "")
	wantPrivate(t, resp)
	var got struct {
		Status   string             `json:"status"`
		Licenses []delivery.License `json:"licenses"`
		Portal   string             `json:"portal_url"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %s %s (%v), want 200 JSON", resp.StatusCode, resp.Header.Get("Content-Type"), body, err)
	}
	if got.Status != "ready" || len(got.Licenses) != 1 || got.Portal != "https://billing.example.com/p/login/test_123" {
		t.Fatalf("got %+v, want ready with one license and the portal", got)
	}
	l := got.Licenses[0]
	if l.Key != k.Key || l.ProductID != product || l.Product != "Product 1001" || l.Expires == nil || !l.Expires.Equal(k.Expires) ||
		l.Perpetual || l.Machines != 3 || l.Blocked {
		t.Fatalf("got license %+v, want key %s expiring %s with 3 machines", l, k.Key, k.Expires)
	}
	if n := e.crypto.CallCount("CreateKey"); n != 1 {
		t.Fatalf("got %d CreateKey calls after two views, want 1", n)
	}
}

// 404 for what this account does not have (no Stripe call for an id that cannot be a
// session of this mode), 202 while the payment is outstanding (the page refreshes
// itself), 410 past the maximum age, 429 past the client's limit; every answer private.
func TestLicensePageStatuses(t *testing.T) {
	t.Parallel()
	e := setup(t)
	base := e.page(t, delivery.PageOptions{MaxAge: time.Hour, PerMinute: 600, Burst: 100})
	get := func(id, accept string) (*http.Response, string) {
		t.Helper()
		resp, body := fetch(t, "GET", base+"/license?session_id="+id, accept, nil, "")
		wantPrivate(t, resp)
		return resp, body
	}

	// Not this account's, or no session at all: 404, and only a well-formed id of
	// this mode reaches Stripe.
	for _, id := range []string{"", "abc", "cs_test_", "cs_live_a1B2c3", "cs_test_" + strings.Repeat("a", 201), "cs_test_a%27b",
		"sub_123", "cs_test_a1B2c3Nope"} {
		before := e.stripe.Requests()[sessionRoute]
		resp, body := get(id, "application/json")
		if resp.StatusCode != 404 || strings.TrimSpace(body) != `{"status":"not_found"}` {
			t.Fatalf("%q: got %d %s, want 404 not_found", id, resp.StatusCode, body)
		}
		calls := e.stripe.Requests()[sessionRoute] - before
		if want := map[bool]int{true: 1}[id == "cs_test_a1B2c3Nope"]; calls != want {
			t.Fatalf("%q: got %d Stripe reads, want %d", id, calls, want)
		}
	}

	// The card was declined: Checkout is still open. 202, asking again by itself.
	declined := e.checkout(t, stripesim.CheckoutParams{CardDeclines: true})
	resp, body := get(declined.Session, "")
	if resp.StatusCode != 202 || resp.Header.Get("Retry-After") != "5" || !strings.Contains(body, `<meta http-equiv="refresh" content="5">`) ||
		!strings.Contains(body, "being processed") {
		t.Fatalf("open session: got %d Retry-After %q\n%s\nwant 202 refreshing in 5s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if resp, body = get(declined.Session, "application/json"); resp.StatusCode != 202 || strings.TrimSpace(body) != `{"retry_after":5,"status":"processing"}` {
		t.Fatalf("open session as JSON: got %d %s", resp.StatusCode, body)
	}
	if n := len(e.crypto.Keys(product)); n != 0 {
		t.Fatalf("an unpaid session made %d keys", n)
	}

	// Past the maximum age: 410, whatever the session.
	paid := e.checkout(t, stripesim.CheckoutParams{})
	e.stripe.Advance(61 * time.Minute)
	if resp, body = get(paid.Session, ""); resp.StatusCode != 410 || !strings.Contains(body, "expired") {
		t.Fatalf("old session: got %d\n%s\nwant 410", resp.StatusCode, body)
	}
	if n := len(e.crypto.Keys(product)); n != 0 {
		t.Fatalf("an expired page made %d keys", n)
	}
}

// Each client has its own limit: past it, 429 with Retry-After, as private as any
// answer; another client is not held up.
func TestLicensePageRateLimit(t *testing.T) {
	t.Parallel()
	e := setup(t)
	base := e.page(t, delivery.PageOptions{PerMinute: 1, Burst: 2, ClientIP: delivery.ClientIP("X-Test-Client")})
	get := func(client string) *http.Response {
		req, _ := http.NewRequest("GET", base+"/license?session_id=cs_test_unknown", nil)
		req.Header.Set("X-Test-Client", client)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		wantPrivate(t, resp)
		return resp
	}
	for i := range 2 {
		if resp := get("192.0.2.1"); resp.StatusCode != 404 {
			t.Fatalf("request %d: got %d, want 404 within the burst", i+1, resp.StatusCode)
		}
	}
	resp := get("192.0.2.1")
	wait, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode != 429 || err != nil || wait < 1 || wait > 60 {
		t.Fatalf("past the burst: got %d Retry-After %q, want 429 within a minute", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := get("192.0.2.2"); resp.StatusCode != 404 {
		t.Fatalf("another client: got %d, want 404", resp.StatusCode)
	}
}

// A replacement template renders every status; one that does not parse, or fails to
// render a status, is refused with the file and the reason.
func TestPageTemplates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := delivery.ParsePageTemplate(write("broken.html", "<p>{{.Status</p>")); err == nil || !strings.Contains(err.Error(), "broken.html") {
		t.Fatalf("a template that does not parse: got %v, want an error naming broken.html", err)
	}
	_, err := delivery.ParsePageTemplate(write("missing.html", "{{if eq .Status \"ready\"}}{{range .Licenses}}{{.Nope}}{{end}}{{end}}"))
	if err == nil || !strings.Contains(err.Error(), "missing.html") || !strings.Contains(err.Error(), "ready") {
		t.Fatalf("a template that fails on the keys: got %v, want an error naming the file and the status", err)
	}
	if _, err := delivery.ParsePageTemplate(filepath.Join(dir, "none.html")); err == nil || !strings.Contains(err.Error(), "none.html") {
		t.Fatalf("no such file: got %v", err)
	}

	// A vendor's own look, served.
	tmpl, err := delivery.ParsePageTemplate(write("mine.html",
		`<main id="vendor" data-status="{{.Status}}">{{range .Licenses}}<b>{{.Key}}</b>{{end}}</main>`))
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t)
	res := e.checkout(t, stripesim.CheckoutParams{})
	resp, body := fetch(t, "GET", e.page(t, delivery.PageOptions{Template: tmpl})+"/license?session_id="+res.Session, "", nil, "")
	if k := e.keyOf(t, res.Subscription); resp.StatusCode != 200 || body != `<main id="vendor" data-status="ready"><b>`+k.Key+`</b></main>` {
		t.Fatalf("got %d %s, want the vendor's template with the key", resp.StatusCode, body)
	}
}

// pageAnswer is the license page's JSON.
type pageAnswer struct {
	Status     string             `json:"status"`
	Licenses   []delivery.License `json:"licenses"`
	Portal     string             `json:"portal_url"`
	RetryAfter int                `json:"retry_after"`
}

// getJSON asks the page for session's keys as JSON and returns the answer's status
// code, the decoded answer and its body.
func getJSON(t *testing.T, base, session string) (int, pageAnswer, string) {
	t.Helper()
	resp, body := fetch(t, "GET", base+"/license?session_id="+session, "application/json", nil, "")
	wantPrivate(t, resp)
	var got pageAnswer
	if err := json.Unmarshal([]byte(body), &got); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %s %s (%v), want JSON", resp.StatusCode, resp.Header.Get("Content-Type"), body, err)
	}
	return resp.StatusCode, got, body
}

// A one-time purchase, straight from Checkout in payment mode and before any webhook:
// the page's Sync makes its perpetual key (the time-limited feature off, the session's
// marker), audited as the customer's with the purchase named, and shows it as
// perpetual in HTML and JSON. Showing it again makes no second key, and the webhook's
// Sync that comes later finds nothing to do.
func TestLicensePageOfAPurchaseBeforeAnyWebhook(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	res := e.purchase(t, stripesim.PaymentParams{})
	if n := len(e.crypto.Keys(product)); n != 0 || !res.Completed {
		t.Fatalf("got %d keys before the page (completed %v), want none and a completed session", n, res.Completed)
	}
	base := e.page(t, delivery.PageOptions{})

	// HTML, as a browser asks.
	resp, body := fetch(t, "GET", base+"/license?session_id="+res.Session, "text/html", nil, "")
	wantPrivate(t, resp)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("got %d %s, want 200 HTML\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	keys := e.crypto.Keys(product)
	if len(keys) != 1 {
		t.Fatalf("got %d keys after the page, want the one its Sync made", len(keys))
	}
	k := keys[0]
	if k.Notes != syncer.Marker(res.Session) || k.Features != [8]bool{1: true} || k.MaxNoOfMachines != 2 || k.Block {
		t.Fatalf("the page's Sync made key %+v, want F2 alone (F1, the time-limited feature, off), 2 machines and the session's marker", k)
	}
	for _, want := range []string{`value="` + k.Key + `"`, "<h2 id=\"product-0\">Product 1001</h2>", "Perpetual: it does not expire", "<dd>2</dd>"} {
		if !strings.Contains(body, want) {
			t.Fatalf("the page lacks %q:\n%s", want, body)
		}
	}

	// The key is the page's, and the purchase's: one create_key with the customer as
	// its cause.
	rows, err := e.store.QueryAudit(ctx, postgres.AuditFilter{Purchase: res.Session})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Action != "create_key" || rows[0].Outcome != "applied" || rows[0].Cause != "customer" ||
		rows[0].CauseID == nil || *rows[0].CauseID != res.Session || rows[0].SubscriptionID != nil ||
		rows[0].CustomerID == nil || *rows[0].CustomerID != res.Customer || rows[0].LicenseKey == nil || *rows[0].LicenseKey != k.Key {
		t.Fatalf("got audit rows %+v, want one applied create_key of the purchase and its customer, caused by the customer's page", rows)
	}

	// JSON, as a vendor's own page asks: perpetual, no expiry.
	code, got, body := getJSON(t, base, res.Session)
	if code != 200 || got.Status != "ready" || len(got.Licenses) != 1 || !strings.Contains(body, `"expires":null`) {
		t.Fatalf("got %d %s, want ready with one license and a null expiry", code, body)
	}
	if l := got.Licenses[0]; l.Key != k.Key || l.ProductID != product || l.Product != "Product 1001" || l.Expires != nil || !l.Perpetual ||
		l.Machines != 2 || l.Blocked {
		t.Fatalf("got license %+v, want key %s, perpetual, 2 machines", l, k.Key)
	}
	if n := e.crypto.CallCount("CreateKey"); n != 1 {
		t.Fatalf("got %d CreateKey calls after two views, want 1", n)
	}

	// The webhook arrives later: its Sync finds the key and does nothing.
	later, err := e.engine.SyncPurchase(ctx, res.Session, syncer.Cause{Kind: syncer.CauseWebhook, ID: "evt_later"})
	if err != nil || len(later.Actions) != 0 || later.Key != k.Key {
		t.Fatalf("the webhook's Sync: got %+v, %v; want no action on key %s", later, err, k.Key)
	}
	if rows, _ := e.store.QueryAudit(ctx, postgres.AuditFilter{Purchase: res.Session}); len(rows) != 1 || e.crypto.CallCount("CreateKey") != 1 {
		t.Fatalf("after the webhook's Sync: got %d audit rows and %d CreateKey calls, want 1 and 1", len(rows), e.crypto.CallCount("CreateKey"))
	}
}

// A purchase paid by a delayed payment method (a bank debit) completes Checkout unpaid:
// the page answers 202 and refreshes itself, making no key, until the payment settles;
// then 200 with the perpetual key its Sync made.
func TestLicensePageOfADelayedPayment(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.purchase(t, stripesim.PaymentParams{Async: true})
	base := e.page(t, delivery.PageOptions{})

	for range 2 {
		if code, _, body := getJSON(t, base, res.Session); code != 202 || strings.TrimSpace(body) != `{"retry_after":5,"status":"processing"}` {
			t.Fatalf("before the payment settled: got %d %s, want 202 processing", code, body)
		}
	}
	resp, body := fetch(t, "GET", base+"/license?session_id="+res.Session, "", nil, "")
	if resp.StatusCode != 202 || !strings.Contains(body, `<meta http-equiv="refresh" content="5">`) {
		t.Fatalf("before the payment settled, HTML: got %d\n%s\nwant 202 refreshing itself", resp.StatusCode, body)
	}
	if n := len(e.crypto.Keys(product)); n != 0 {
		t.Fatalf("an unsettled payment made %d keys", n)
	}

	if err := e.stripe.SettleAsyncPayment(res.Session, true); err != nil {
		t.Fatal(err)
	}
	code, got, body := getJSON(t, base, res.Session)
	keys := e.crypto.Keys(product)
	if code != 200 || got.Status != "ready" || len(got.Licenses) != 1 || len(keys) != 1 {
		t.Fatalf("once settled: got %d %s and %d keys, want 200 with the one key", code, body, len(keys))
	}
	if l := got.Licenses[0]; l.Key != keys[0].Key || !l.Perpetual || l.Expires != nil || keys[0].Notes != syncer.Marker(res.Session) {
		t.Fatalf("once settled: got license %+v and key %+v, want the purchase's perpetual key", l, keys[0])
	}
}

// A bundle (a subscription whose items map to two Cryptolens products) shows both of
// its keys, each with its own product, expiry and machines.
func TestLicensePageOfABundle(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const addonProduct = 2002
	e.crypto.AddProduct(addonProduct, cryptolenssim.ProductOptions{})
	addon, err := e.stripe.CreatePrice(stripesim.PriceParams{Product: e.stripe.CreateProduct("Add-on", map[string]string{"skm_product_id": "2002"}),
		UnitAmount: 500, Metadata: map[string]string{"skm": `{"F5":true,"MaxNoOfMachines":1}`}})
	if err != nil {
		t.Fatal(err)
	}
	res := e.checkout(t, stripesim.CheckoutParams{Items: []stripesim.ItemParams{{Price: e.price}, {Price: addon}}})
	base := e.page(t, delivery.PageOptions{})

	code, got, body := getJSON(t, base, res.Session)
	app, extra := e.crypto.Keys(product), e.crypto.Keys(addonProduct)
	if code != 200 || got.Status != "ready" || len(got.Licenses) != 2 || len(app) != 1 || len(extra) != 1 {
		t.Fatalf("got %d %s, %d and %d keys; want 200 with two licenses, one key in each product", code, body, len(app), len(extra))
	}
	want := map[int]struct {
		key      string
		machines int
		expires  time.Time
	}{product: {app[0].Key, 3, app[0].Expires}, addonProduct: {extra[0].Key, 1, extra[0].Expires}}
	for _, l := range got.Licenses {
		w, ok := want[l.ProductID]
		if !ok || l.Key != w.key || l.Machines != w.machines || l.Perpetual || l.Expires == nil || !l.Expires.Equal(w.expires) ||
			l.Product != "Product "+strconv.Itoa(l.ProductID) {
			t.Fatalf("got license %+v, want %+v", l, w)
		}
		delete(want, l.ProductID)
	}
	resp, html := fetch(t, "GET", base+"/license?session_id="+res.Session, "", nil, "")
	if resp.StatusCode != 200 || !strings.Contains(html, `value="`+app[0].Key+`"`) || !strings.Contains(html, `value="`+extra[0].Key+`"`) {
		t.Fatalf("HTML: got %d, want both keys:\n%s", resp.StatusCode, html)
	}
	if n := e.crypto.CallCount("CreateKey"); n != 2 {
		t.Fatalf("got %d CreateKey calls after two views, want 2 (one a product)", n)
	}
}
