package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

const (
	token     = "admin-token-0123456789abcdef"
	readToken = "read-token-0123456789abcdef"
)

type fakeJobs struct{ replayed, sweeps []string }

// jobs records what the API queued. Queuing is River's business (tested there); this
// test is about the HTTP surface.
func (j *fakeJobs) ReplayEvent(_ context.Context, id string) error {
	if !strings.HasPrefix(id, "evt_known") {
		return fmt.Errorf("get event %s: %w", id, syncer.ErrNotFound)
	}
	j.replayed = append(j.replayed, id)
	return nil
}

func (j *fakeJobs) Reconcile(context.Context) error { j.sweeps = append(j.sweeps, "sweep"); return nil }

// bundle is one admin API over a fresh database and simulators, with one active
// subscription that has no key yet.
type bundle struct {
	srv    *httptest.Server
	client *http.Client // checks every request and answer against openapi.yaml
	jobs   *fakeJobs
	sub    string
	world  *simtest.World
	store  *postgres.Store
	logs   *bytes.Buffer
	clock  *fakeClock
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) Advance(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.now = c.now.Add(d) }

func setup(t *testing.T) *bundle {
	t.Helper()
	store := postgres.NewStore(pgtest.Pool(t))
	w := simtest.New(t, simtest.Options{})
	sc, cc := w.Clients(t)
	engine := syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: store, Mapping: license.NewMapping(0), Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5}})
	price := w.Price("App", 1000, `{"F1":true}`)
	res, _ := w.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	b := &bundle{jobs: &fakeJobs{}, sub: res.Subscription, world: w, store: store, logs: &bytes.Buffer{},
		clock: &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, client: validatingClient(t)}
	guard := admin.NewGuard(admin.GuardConfig{AdminToken: token, ReadToken: readToken, Now: b.clock.Now})
	api := admin.NewAPI(guard, store, engine, b.jobs, zerolog.New(&lockedWriter{w: b.logs}))
	mux := http.NewServeMux()
	api.Mount(mux)
	b.srv = httptest.NewServer(mux)
	t.Cleanup(b.srv.Close)
	return b
}

// lockedWriter lets the test read the log while the server writes it.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// call makes one request through the validating client and returns the status, the
// decoded body and the answer's headers.
func (b *bundle) call(t *testing.T, method, path, tok string) (int, map[string]any) {
	t.Helper()
	code, body, _ := b.callH(t, method, path, tok)
	return code, body
}

func (b *bundle) callH(t *testing.T, method, path, tok string) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, b.srv.URL+path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, resp.Header
}

func TestAdminAPIAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for name, tok := range map[string]string{"no token": "", "wrong token": "admin-token-0123456789abcdeX", "prefix of the token": token[:10],
		"the token and more": token + "x"} {
		if code, _ := b.call(t, "GET", "/api/v1/subscriptions/"+b.sub, tok); code != http.StatusUnauthorized {
			t.Fatalf("%s: got %d, want 401", name, code)
		}
	}
	if code, _ := b.call(t, "GET", "/api/v1/subscriptions/"+b.sub, token); code != 200 {
		t.Fatalf("right token: got %d, want 200", code)
	}
	if admin.NewGuard(admin.GuardConfig{}) != nil || admin.NewAPI(nil, nil, nil, nil, zerolog.Nop()) != nil {
		t.Fatal("an admin API without a token must not exist")
	}
}

func TestAdminAPIRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code, body := b.call(t, "GET", "/api/v1/subscriptions/"+b.sub, token)
	if code != 200 || body["stripe"].(map[string]any)["status"] != "active" || len(body["actions"].([]any)) != 1 || len(body["keys"].([]any)) != 1 {
		t.Fatalf("status: got %d %v", code, body)
	}
	if code, body = b.call(t, "POST", "/api/v1/subscriptions/"+b.sub+"/sync", token); code != 200 || len(b.world.Crypto.Keys(simtest.Product)) != 1 {
		t.Fatalf("sync: got %d %v", code, body)
	}
	// Nothing left to do: the actions are an empty list, not null.
	if code, body = b.call(t, "POST", "/api/v1/subscriptions/"+b.sub+"/sync", token); code != 200 || body["actions"] == nil {
		t.Fatalf("second sync: got %d %v, want no actions as []", code, body)
	}
	code, body = b.call(t, "GET", "/api/v1/audit?subscription="+b.sub+"&limit=10", token)
	rows, _ := body["rows"].([]any)
	if code != 200 || len(rows) != 1 {
		t.Fatalf("audit: got %d %v", code, body)
	}
	// The operator is named by the token that asked, not by the channel.
	if row := rows[0].(map[string]any); row["action"] != "create_key" || row["cause"] != "operator" || row["cause_id"] != "api:admin" {
		t.Fatalf("audit row: got %v, want create_key by operator api:admin", row)
	}
	if code, body = b.call(t, "GET", "/api/v1/audit?cause=operator&outcome=applied&action=create_key&customer=cus_nobody&before_id=1000", token); code != 200 {
		t.Fatalf("audit with every filter: got %d %v", code, body)
	}
	if code, body = b.call(t, "GET", "/api/v1/events/failed", token); code != 200 || body["events"] == nil {
		t.Fatalf("failed events: got %d %v", code, body)
	}
	if code, _ = b.call(t, "POST", "/api/v1/events/evt_known_1/replay", token); code != 200 || len(b.jobs.replayed) != 1 {
		t.Fatalf("replay: got %d, %v", code, b.jobs.replayed)
	}
	if code, _ = b.call(t, "POST", "/api/v1/events/evt_unknown/replay", token); code != http.StatusNotFound {
		t.Fatalf("replay unknown: got %d, want 404", code)
	}
	if code, _ = b.call(t, "POST", "/api/v1/reconcile", token); code != 200 || len(b.jobs.sweeps) != 1 {
		t.Fatalf("reconcile: got %d, %v", code, b.jobs.sweeps)
	}
	if code, body = b.call(t, "GET", "/api/v1/subscriptions/sub_missing", token); code != http.StatusUnprocessableEntity {
		t.Fatalf("unknown subscription: got %d %v, want 422", code, body)
	}
	req, _ := http.NewRequest("GET", b.srv.URL+"/api/v1/openapi.yaml", nil)
	req.Header.Set("Authorization", "Bearer "+readToken)
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(raw, admin.OpenAPI) {
		t.Fatalf("openapi.yaml: got %d, %d bytes, want the document", resp.StatusCode, len(raw))
	}
}

// What the document refuses, the API refuses with 400 before it reaches Stripe, the
// database or a log: ids of the wrong shape, values outside the audit log's vocabulary,
// limits out of range.
func TestAdminAPIValidatesParameters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	long := "sub_" + strings.Repeat("a", 251)
	for name, tc := range map[string]struct{ method, path string }{
		"not a subscription id":         {"GET", "/api/v1/subscriptions/not_a_sub"},
		"a subscription id too long":    {"GET", "/api/v1/subscriptions/" + long},
		"sync of not a subscription id": {"POST", "/api/v1/subscriptions/cus_123/sync"},
		"replay of not an event id":     {"POST", "/api/v1/events/not_an_event/replay"},
		"limit 0":                       {"GET", "/api/v1/audit?limit=0"},
		"limit above 10000":             {"GET", "/api/v1/audit?limit=10001"},
		"limit not a number":            {"GET", "/api/v1/audit?limit=ten"},
		"unknown outcome":               {"GET", "/api/v1/audit?outcome=maybe"},
		"unknown cause":                 {"GET", "/api/v1/audit?cause=api"},
		"unknown action":                {"GET", "/api/v1/audit?action=delete_key"},
		"before_id 0":                   {"GET", "/api/v1/audit?before_id=0"},
		"subscription filter":           {"GET", "/api/v1/audit?subscription=not_a_sub"},
		"purchase filter":               {"GET", "/api/v1/audit?purchase=sub_1"},
		"not a purchase id":             {"GET", "/api/v1/purchases/sub_1"},
		"a purchase id without its id":  {"GET", "/api/v1/purchases/cs_"},
		"sync of not a purchase id":     {"POST", "/api/v1/purchases/pi_1/sync"},
		"customer filter":               {"GET", "/api/v1/audit?customer=sub_1"},
		"key filter too long":           {"GET", "/api/v1/audit?key=" + strings.Repeat("K", 256)},
		"since not a time":              {"GET", "/api/v1/audit?since=yesterday"},
	} {
		if code, body := b.call(t, tc.method, tc.path, token); code != http.StatusBadRequest || body["error"] == "" {
			t.Errorf("%s: got %d %v, want 400 with the reason", name, code, body)
		}
	}
	for _, route := range []string{"GET /v1/subscriptions/{id}", "GET /v1/checkout/sessions/{id}", "GET /v1/invoices/{id}"} {
		if got := b.world.Stripe.Requests()[route]; got != 0 {
			t.Fatalf("refused requests reached Stripe's %s %d times", route, got)
		}
	}
	if len(b.jobs.replayed) != 0 {
		t.Fatalf("a refused replay was queued: %v", b.jobs.replayed)
	}
}

// The read-only token reads everything and changes nothing.
func TestAdminAPIReadOnlyToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, path := range []string{"/api/v1/subscriptions/" + b.sub, "/api/v1/audit", "/api/v1/events/failed"} {
		if code, body := b.call(t, "GET", path, readToken); code != 200 {
			t.Errorf("GET %s with the read token: got %d %v, want 200", path, code, body)
		}
	}
	for _, path := range []string{"/api/v1/subscriptions/" + b.sub + "/sync", "/api/v1/events/evt_known_1/replay", "/api/v1/reconcile"} {
		if code, body := b.call(t, "POST", path, readToken); code != http.StatusForbidden {
			t.Errorf("POST %s with the read token: got %d %v, want 403", path, code, body)
		}
	}
	if len(b.world.Crypto.Keys(simtest.Product)) != 0 || len(b.jobs.replayed) != 0 || len(b.jobs.sweeps) != 0 {
		t.Fatalf("the read token changed something: keys %v, replayed %v, sweeps %v", b.world.Crypto.Keys(simtest.Product), b.jobs.replayed, b.jobs.sweeps)
	}
}

// A client that keeps failing is answered 429 with Retry-After, its token unchecked,
// until the throttle forgives a failure; other clients are not affected.
func TestAdminAPIThrottlesAuthFailures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	path := "/api/v1/subscriptions/" + b.sub
	for i := range admin.DefaultThrottle.Burst {
		if code, _ := b.call(t, "GET", path, "wrong-token-0123456789"); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: got %d, want 401", i+1, code)
		}
	}
	code, body, h := b.callH(t, "GET", path, "wrong-token-0123456789")
	if code != http.StatusTooManyRequests || h.Get("Retry-After") != "6" {
		t.Fatalf("after %d failures: got %d %v Retry-After %q, want 429 with Retry-After 6", admin.DefaultThrottle.Burst, code, body, h.Get("Retry-After"))
	}
	// Throttled means unchecked: the right token waits too.
	if code, _ := b.call(t, "GET", path, token); code != http.StatusTooManyRequests {
		t.Fatalf("the right token while throttled: got %d, want 429", code)
	}
	b.clock.Advance(3 * time.Second)
	if _, _, h := b.callH(t, "GET", path, token); h.Get("Retry-After") != "3" {
		t.Fatalf("3s later: Retry-After %q, want 3", h.Get("Retry-After"))
	}
	b.clock.Advance(3 * time.Second)
	if code, _ := b.call(t, "GET", path, token); code != 200 {
		t.Fatalf("once a failure is forgiven, the right token: got %d, want 200", code)
	}
	if code, _ := b.call(t, "GET", path, "wrong-token-0123456789"); code != http.StatusUnauthorized {
		t.Fatalf("one forgiven failure allows one guess: got %d, want 401", code)
	}
	if code, _ := b.call(t, "GET", path, "wrong-token-0123456789"); code != http.StatusTooManyRequests {
		t.Fatalf("and only one: got %d, want 429", code)
	}

	// Another client (here, another loopback address) is not throttled.
	guard := admin.NewGuard(admin.GuardConfig{AdminToken: token, Now: b.clock.Now})
	for range admin.DefaultThrottle.Burst + 1 {
		_, _ = guard.Authenticate("192.0.2.1:1234", "wrong")
	}
	if _, err := guard.Authenticate("192.0.2.1:5678", token); err == nil {
		t.Fatal("the same client on another port must be throttled too")
	}
	if who, err := guard.Authenticate("192.0.2.2:1234", token); err != nil || who.Name != "admin" {
		t.Fatalf("another client: got %v %v, want admin", who, err)
	}
}

// Every request is logged with its route pattern, outcome, client address and the
// token's name; never the token, and never the path's raw id.
func TestAdminAPILogsEveryRequest(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.call(t, "GET", "/api/v1/subscriptions/"+b.sub, token)
	b.call(t, "POST", "/api/v1/reconcile", readToken)
	b.call(t, "GET", "/api/v1/subscriptions/"+b.sub, "wrong-token-0123456789")
	b.call(t, "GET", "/api/v1/audit?outcome=maybe", token)

	type line struct{ Level, Route, Outcome, Remote, Token, Message string }
	var got []line
	for _, raw := range strings.Split(strings.TrimSpace(b.logs.String()), "\n") {
		var l line
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Fatalf("log line %q: %v", raw, err)
		}
		if l.Message == "admin request" {
			got = append(got, l)
		}
	}
	want := []line{
		{"info", "GET /api/v1/subscriptions/{id}", "ok", "", "admin", "admin request"},
		{"warn", "POST /api/v1/reconcile", "forbidden", "", "read", "admin request"},
		{"warn", "GET /api/v1/subscriptions/{id}", "unauthenticated", "", "none", "admin request"},
		{"info", "GET /api/v1/audit", "bad_request", "", "admin", "admin request"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d request lines, want %d:\n%s", len(got), len(want), b.logs)
	}
	for i := range want {
		if !strings.HasPrefix(got[i].Remote, "127.0.0.1:") {
			t.Errorf("line %d: remote %q, want the client's address", i, got[i].Remote)
		}
		got[i].Remote = ""
		if got[i] != want[i] {
			t.Errorf("line %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for name, secret := range map[string]string{"the admin token": token, "the read token": readToken, "a wrong token": "wrong-token-0123456789",
		"the subscription id": b.sub} {
		if strings.Contains(b.logs.String(), secret) {
			t.Fatalf("the log contains %s", name)
		}
	}
}

// The OpenAPI document is valid and names exactly the routes the API serves.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	doc, err := openapi3.NewLoader().LoadFromData(admin.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("invalid OpenAPI document: %v", err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	api := admin.NewAPI(admin.NewGuard(admin.GuardConfig{AdminToken: token}), nil, nil, nil, zerolog.Nop())
	served := api.Routes()
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("documented %v\nserved     %v", documented, served)
	}
}

// The enums and id patterns the document states are the ones the API enforces.
func TestOpenAPIStatesTheAPIsRules(t *testing.T) {
	t.Parallel()
	doc, _ := openAPIRouter(t)
	for name, want := range admin.AuditEnums {
		schema := doc.Components.Schemas[strings.ToUpper(name[:1])+name[1:]].Value
		var got []string
		for _, v := range schema.Enum {
			got = append(got, v.(string))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: the document lists %v, the API takes %v", name, got, want)
		}
	}
	audit := doc.Paths.Value("/api/v1/audit").Get
	for name, got := range map[string]string{
		"subscription": doc.Components.Parameters["subscription"].Value.Schema.Value.Pattern,
		"purchase":     doc.Components.Parameters["purchase"].Value.Schema.Value.Pattern,
		"customer":     audit.Parameters.GetByInAndName("query", "customer").Schema.Value.Pattern,
		"event":        doc.Paths.Value("/api/v1/events/{id}/replay").Post.Parameters.GetByInAndName("path", "id").Schema.Value.Pattern,
	} {
		if got != admin.IDPatterns[name] {
			t.Errorf("%s id: the document's pattern is %q, the API's %q", name, got, admin.IDPatterns[name])
		}
	}
	for _, name := range []string{"subscription", "purchase"} {
		if got := audit.Parameters.GetByInAndName("query", name).Schema.Value.Pattern; got != admin.IDPatterns[name] {
			t.Errorf("audit's %s filter: the document's pattern is %q, the API's %q", name, got, admin.IDPatterns[name])
		}
	}
}

// A one-time purchase's routes mirror a subscription's: its status (Stripe's view of
// the payment, keysync's row, each key as a Sync sees it), a Sync now audited as the
// token's, and the audit log filtered by it. The read-only token reads and cannot sync.
func TestAdminAPIPurchases(t *testing.T) {
	t.Parallel()
	b := setup(t)
	prod := b.world.Stripe.CreateProduct("App, lifetime", map[string]string{"skm_product_id": strconv.Itoa(simtest.Product)})
	price, err := b.world.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 9900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F2":true,"MaxNoOfMachines":3}`}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.world.Stripe.CheckoutPayment(stripesim.PaymentParams{Email: "p@example.com", Items: []stripesim.ItemParams{{Price: price}}, InvoiceCreation: true})
	if err != nil || res.Invoice == "" {
		t.Fatalf("got %+v, %v; want a paid purchase with its invoice", res, err)
	}
	path := "/api/v1/purchases/" + res.Session

	code, body := b.call(t, "GET", path, readToken)
	keys, _ := body["keys"].([]any)
	if code != 200 || body["stripe"].(map[string]any)["status"] != "paid" || body["keysync"].(map[string]any)["known"] != false || len(keys) != 1 {
		t.Fatalf("status: got %d %v, want paid, not known yet, one key", code, body)
	}
	if k := keys[0].(map[string]any); k["license_key"] != nil || k["desired"].(map[string]any)["Perpetual"] != true ||
		len(k["actions"].([]any)) != 1 || k["actions"].([]any)[0].(map[string]any)["Kind"] != "create_key" {
		t.Fatalf("the key before a Sync: got %v, want none yet, perpetual, to be created", k)
	}
	if code, _ := b.call(t, "POST", path+"/sync", readToken); code != http.StatusForbidden || len(b.world.Crypto.Keys(simtest.Product)) != 0 {
		t.Fatalf("sync with the read token: got %d, %d keys; want 403 and none", code, len(b.world.Crypto.Keys(simtest.Product)))
	}

	code, body = b.call(t, "POST", path+"/sync", token)
	made, _ := body["keys"].([]any)
	if code != 200 || body["status"] != "paid" || len(made) != 1 || len(b.world.Crypto.Keys(simtest.Product)) != 1 {
		t.Fatalf("sync: got %d %v, want the purchase's key made", code, body)
	}
	key := made[0].(map[string]any)["license_key"]
	if code, body = b.call(t, "GET", path, token); code != 200 || body["keys"].([]any)[0].(map[string]any)["license_key"] != key ||
		len(body["keys"].([]any)[0].(map[string]any)["actions"].([]any)) != 0 || body["keysync"].(map[string]any)["known"] != true {
		t.Fatalf("status after the sync: got %d %v, want the key recorded and nothing to do", code, body)
	}

	// The subscription's audit row is not the purchase's.
	if code, body := b.call(t, "POST", "/api/v1/subscriptions/"+b.sub+"/sync", token); code != 200 {
		t.Fatalf("sync the subscription: got %d %v", code, body)
	}
	code, body = b.call(t, "GET", "/api/v1/audit?purchase="+res.Session, readToken)
	rows, _ := body["rows"].([]any)
	if code != 200 || len(rows) != 1 {
		t.Fatalf("audit by purchase: got %d %v, want its one row", code, body)
	}
	if row := rows[0].(map[string]any); row["action"] != "create_key" || row["purchase_id"] != res.Session || row["cause_id"] != "api:admin" {
		t.Fatalf("audit row: got %v, want the purchase's create_key by api:admin", row)
	}

	// The post-payment invoice is part of the session's purchase.
	if code, body = b.call(t, "GET", "/api/v1/purchases/"+res.Invoice, token); code != 200 || body["checkout_session"] != res.Session {
		t.Fatalf("the post-payment invoice: got %d %v, want it to name its session", code, body)
	}
	if code, body = b.call(t, "GET", "/api/v1/purchases/cs_missing", token); code != http.StatusUnprocessableEntity {
		t.Fatalf("unknown purchase: got %d %v, want 422", code, body)
	}
}

// A bundle's status has every key, one per Cryptolens product, and its Sync names them all.
func TestAdminAPIBundleKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const addonProduct = 2002
	b.world.Crypto.AddProduct(addonProduct, cryptolenssim.ProductOptions{})
	addon := b.world.Stripe.CreateProduct("Add-on", map[string]string{"skm_product_id": strconv.Itoa(addonProduct)})
	addonPrice, _ := b.world.Stripe.CreatePrice(stripesim.PriceParams{Product: addon, UnitAmount: 500, Metadata: map[string]string{"skm": `{"F5":true}`}})
	co, err := b.world.Stripe.Checkout(stripesim.CheckoutParams{Email: "g@example.com",
		Items: []stripesim.ItemParams{{Price: b.world.Price("Pro", 1000, `{"F1":true}`)}, {Price: addonPrice}}})
	if err != nil {
		t.Fatal(err)
	}
	path := "/api/v1/subscriptions/" + co.Subscription
	code, body := b.call(t, "POST", path+"/sync", token)
	if made, _ := body["keys"].([]any); code != 200 || len(made) != 2 {
		t.Fatalf("sync: got %d %v, want two keys", code, body)
	}
	code, body = b.call(t, "GET", path, token)
	keys, _ := body["keys"].([]any)
	if code != 200 || len(keys) != 2 {
		t.Fatalf("status: got %d %v, want two keys", code, body)
	}
	for i, product := range []int{simtest.Product, addonProduct} {
		k := keys[i].(map[string]any)
		if k["product_id"] != float64(product) || k["license_key"] == nil || k["cryptolens"].(map[string]any)["Key"] != k["license_key"] {
			t.Errorf("key %d: got %v, want product %d's key, recorded and in Cryptolens", i, k, product)
		}
	}
}
