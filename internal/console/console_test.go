package console_test

import (
	"bytes"
	"context"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/console"
	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

const (
	fullToken = "full-admin-token-0123456789"
	readToken = "read-only-token-0123456789"
)

// env is a console on real Postgres and the simulators, with one subscription that
// keysync synced from its events.
type env struct {
	srv      *httptest.Server
	pool     *pgxpool.Pool
	store    *postgres.Store
	world    *simtest.World
	engine   *syncer.Syncer
	sub      string
	cust     string
	key      string
	checkout stripesim.CheckoutResult // the subscription's
	events   []string                 // the subscription's stored events, oldest first
	clock    *atomic.Int64
	// jobsUI records the requests that reached the stand-in for River UI.
	jobsUI *recorder
}

type recorder struct {
	mu      sync.Mutex
	methods []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.methods = append(r.methods, req.Method)
	r.mu.Unlock()
	_, _ = io.WriteString(w, "river ui")
}

func (r *recorder) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.methods...)
}

// replayJobs queues stored events again as keysync's serve does: pending again and a
// job, in one transaction.
type replayJobs struct {
	store  *postgres.Store
	client *river.Client[pgx.Tx]
}

func (j replayJobs) ReplayEvent(ctx context.Context, id string) error {
	ev, err := j.store.GetEvent(ctx, id)
	if err != nil {
		return err
	}
	return j.requeue(ctx, []events.Event{{ID: ev.ID, Type: ev.Type}})
}

func (j replayJobs) ReplayFailed(ctx context.Context) (int, error) {
	failed, err := j.store.FailedEvents(ctx, 1000)
	if err != nil {
		return 0, err
	}
	var evs []events.Event
	for _, ev := range failed {
		evs = append(evs, events.Event{ID: ev.ID, Type: ev.Type})
	}
	return len(evs), j.requeue(ctx, evs)
}

func (j replayJobs) requeue(ctx context.Context, evs []events.Event) error {
	ids := make([]string, len(evs))
	for i, e := range evs {
		ids[i] = e.ID
	}
	return j.store.InTx(ctx, func(tx pgx.Tx) error {
		if err := j.store.ResetEventsTx(ctx, tx, ids); err != nil {
			return err
		}
		return jobs.NewEnqueuer(j.client).EnqueueEventsTx(ctx, tx, evs)
	})
}

func setup(t *testing.T, tls bool) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{pool: pgtest.Pool(t), world: simtest.New(t, simtest.Options{Start: time.Now().UTC().Truncate(time.Second)}), clock: &atomic.Int64{}, jobsUI: &recorder{}}
	e.store = postgres.NewStore(e.pool)
	e.clock.Store(time.Now().Unix())
	sc, cc := e.world.Clients(t)
	e.engine = syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: e.store, Mapping: license.NewMapping(0), Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5, TimeLimitedFeature: 1, BlockOnRefund: true, BlockOnDispute: true}, Now: e.world.Stripe.Now})

	// A customer checks out; keysync stores the events and syncs the subscription.
	price := e.world.Price("Pro", 1000, `{"F1":true,"MaxNoOfMachines":2}`)
	co, err := e.world.Stripe.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil {
		t.Fatal(err)
	}
	e.sub, e.cust, e.checkout = co.Subscription, co.Customer, co
	e.storeEvents(t)
	if _, err := e.engine.Sync(ctx, e.sub, syncer.Cause{Kind: syncer.CauseWebhook, ID: e.events[len(e.events)-1]}); err != nil {
		t.Fatal(err)
	}
	row, err := e.store.GetSubscription(ctx, e.sub)
	if err != nil || row.LicenseKey == nil {
		t.Fatalf("got row %+v, %v; want the subscription synced with a key", row, err)
	}
	e.key = *row.LicenseKey

	client, err := jobs.NewClient(e.pool, jobs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	auth := admin.NewGuard(admin.GuardConfig{AdminToken: fullToken, ReadToken: readToken})
	c, err := console.New(console.Options{Auth: auth, SessionKey: auth.SessionKey(), Store: e.store, Engine: e.engine,
		Jobs: replayJobs{store: e.store, client: client}, Queue: jobs.NewTables(e.pool), Customers: sc, JobsUI: e.jobsUI,
		Now: func() time.Time { return time.Unix(e.clock.Load(), 0) }, Log: zerolog.Nop(),
		Calls: func() []console.CallCount { return []console.CallCount{{System: "Stripe", Calls: 10, Errors: 1}} }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Mount(mux)
	if tls {
		e.srv = httptest.NewTLSServer(mux)
	} else {
		e.srv = httptest.NewServer(mux)
	}
	t.Cleanup(e.srv.Close)
	return e
}

// storeEvents stores the simulator's events about the subscription not yet stored, as
// ingest does (the event and its job in one statement).
func (e *env) storeEvents(t *testing.T) {
	t.Helper()
	e.events = append(e.events, e.storeMatching(t, e.events, e.sub)...)
}

// storeMatching stores the simulator's events whose payload names any of ids and that
// are not among stored, and returns theirs, oldest first.
func (e *env) storeMatching(t *testing.T, stored []string, ids ...string) []string {
	t.Helper()
	var evs []events.Event
	var out []string
	for _, ev := range e.world.Stripe.Events() {
		if !slices.ContainsFunc(ids, func(id string) bool { return id != "" && strings.Contains(string(ev.Payload), id) }) || slices.Contains(stored, ev.ID) {
			continue
		}
		evs = append(evs, events.Event{ID: ev.ID, Type: ev.Type, Created: time.Unix(ev.Created, 0), APIVersion: ev.APIVersion,
			Payload: ev.Payload, Source: events.SourceWebhook})
		out = append(out, ev.ID)
	}
	if _, err := jobs.NewTables(e.pool).IngestEvents(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	return out
}

// purchase is a one-time purchase the env's customer made through Checkout in payment
// mode, synced by keysync from its checkout.session.completed.
type purchase struct {
	stripesim.PaymentResult
	key    string
	events []string // its stored events, oldest first
}

// buy sells the env's customer a perpetual license: a one-time price mapped by skm
// metadata (F2, three machines), paid at once, with a post-payment invoice.
func (e *env) buy(t *testing.T) *purchase {
	t.Helper()
	prod := e.world.Stripe.CreateProduct("Pro, lifetime", map[string]string{"skm_product_id": strconv.Itoa(simtest.Product)})
	price, err := e.world.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 24900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F2":true,"MaxNoOfMachines":3}`}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.world.Stripe.CheckoutPayment(stripesim.PaymentParams{Customer: e.cust, Items: []stripesim.ItemParams{{Price: price}}, InvoiceCreation: true})
	if err != nil || !res.Completed || res.Invoice == "" {
		t.Fatalf("got %+v, %v; want a completed payment with its invoice", res, err)
	}
	p := &purchase{PaymentResult: res}
	p.storeEvents(t, e)
	if _, err := e.engine.SyncPurchase(context.Background(), res.Session, syncer.Cause{Kind: syncer.CauseWebhook, ID: p.events[len(p.events)-1]}); err != nil {
		t.Fatal(err)
	}
	keys, err := e.store.PurchaseKeys(context.Background(), res.Session)
	if err != nil || len(keys) != 1 {
		t.Fatalf("got keys %+v, %v; want the purchase's key", keys, err)
	}
	p.key = *keys[0].LicenseKey
	return p
}

// storeEvents stores the purchase's events not yet stored.
func (p *purchase) storeEvents(t *testing.T, e *env) {
	t.Helper()
	p.events = append(p.events, e.storeMatching(t, p.events, p.Session, p.PaymentIntent, p.Charge, p.Invoice)...)
}

// browser is a client with a cookie jar that does not follow redirects.
type browser struct {
	t    *testing.T
	c    *http.Client
	base string
}

func (e *env) browser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	c := *e.srv.Client() // a copy: each browser has its own jar
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: t, c: &c, base: e.srv.URL}
}

type page struct {
	status int
	body   string
	header http.Header
}

func (b *browser) get(path string) page {
	b.t.Helper()
	resp, err := b.c.Get(b.base + path)
	if err != nil {
		b.t.Fatal(err)
	}
	return read(b.t, resp)
}

func (b *browser) post(path string, form url.Values) page {
	b.t.Helper()
	resp, err := b.c.PostForm(b.base+path, form)
	if err != nil {
		b.t.Fatal(err)
	}
	return read(b.t, resp)
}

func read(t *testing.T, resp *http.Response) page {
	t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return page{status: resp.StatusCode, body: string(body), header: resp.Header}
}

// text is the page's HTML with its entities decoded, for tests that look for text.
func (p page) text() string { return html.UnescapeString(p.body) }

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of a page's forms.
func (p page) csrf(t *testing.T) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no CSRF token in the page (status %d):\n%s", p.status, p.body)
	}
	return html.UnescapeString(m[1])
}

// login logs in with token and returns the overview it lands on.
func (b *browser) login(token string) page {
	b.t.Helper()
	form := b.get("/console/login")
	p := b.post("/console/login", url.Values{"csrf": {form.csrf(b.t)}, "token": {token}, "next": {"/console/"}})
	if p.status != http.StatusSeeOther {
		b.t.Fatalf("login: got %d, want 303:\n%s", p.status, p.body)
	}
	return b.get("/console/")
}

func (e *env) auditCount(t *testing.T) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// renew moves Stripe a month on, so that the subscription renews and its key is a
// month short until keysync syncs it.
func (e *env) renew(t *testing.T) {
	t.Helper()
	e.world.Stripe.Advance(32 * 24 * time.Hour)
	e.storeEvents(t)
}

func TestLoginSetsAHardenedSessionCookie(t *testing.T) {
	t.Parallel()
	for name, tls := range map[string]bool{"http": false, "https": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, tls)
			b := e.browser(t)

			// Without a session every page leads to the login form, and back.
			if p := b.get("/console/audit?outcome=failed"); p.status != http.StatusSeeOther ||
				p.header.Get("Location") != "/console/login?next="+url.QueryEscape("/console/audit?outcome=failed") {
				t.Fatalf("no session: got %d to %q, want 303 to the login form", p.status, p.header.Get("Location"))
			}

			form := b.get("/console/login")
			resp := b.post("/console/login", url.Values{"csrf": {form.csrf(t)}, "token": {fullToken}, "next": {"/console/audit?outcome=failed"}})
			if resp.status != http.StatusSeeOther || resp.header.Get("Location") != "/console/audit?outcome=failed" {
				t.Fatalf("login: got %d to %q, want 303 back to the page asked for", resp.status, resp.header.Get("Location"))
			}
			var session *http.Cookie
			for _, ck := range (&http.Response{Header: resp.header}).Cookies() {
				if ck.Name == "keysync_console" {
					session = ck
				}
			}
			if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Secure != tls || session.Path != "/console/" {
				t.Fatalf("got session cookie %+v, want HttpOnly, SameSite=Strict, Secure=%v, Path=/console/", session, tls)
			}
			if strings.Contains(session.Value, fullToken) || strings.Contains(session.Value, "0123456789") {
				t.Fatal("the session cookie carries the token")
			}
			if p := b.get("/console/"); p.status != 200 || !strings.Contains(p.body, "Is keysync healthy?") ||
				!strings.Contains(p.header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
				t.Fatalf("overview after login: got %d, CSP %q", p.status, p.header.Get("Content-Security-Policy"))
			}
		})
	}
}

func TestLoginRefusesWrongTokenAndForgedForm(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	b := e.browser(t)
	form := b.get("/console/login")
	p := b.post("/console/login", url.Values{"csrf": {form.csrf(t)}, "token": {"not-the-token-0123456789"}})
	if p.status != http.StatusUnauthorized || !strings.Contains(p.body, "not an admin token") || strings.Contains(p.body, "not-the-token") {
		t.Fatalf("wrong token: got %d, want 401 with the form again and without the token:\n%s", p.status, p.body)
	}
	if p := b.get("/console/"); p.status != http.StatusSeeOther {
		t.Fatalf("after a wrong token: got %d, want no session (303 to login)", p.status)
	}

	// A login form posted from elsewhere has no CSRF token of ours.
	other := e.browser(t)
	for name, form := range map[string]url.Values{
		"no csrf":    {"token": {fullToken}},
		"wrong csrf": {"token": {fullToken}, "csrf": {"forged"}},
	} {
		if p := other.post("/console/login", form); p.status != http.StatusForbidden {
			t.Fatalf("%s: got %d, want 403", name, p.status)
		}
	}
	if p := other.get("/console/"); p.status != http.StatusSeeOther {
		t.Fatalf("after a forged login: got %d, want no session", p.status)
	}
}

// Logins share the admin API's throttle: a client that keeps sending wrong tokens is
// answered 429 with Retry-After, and then not even the right token gets it in.
func TestLoginIsThrottledAfterRepeatedFailures(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	b := e.browser(t)
	for i := range admin.DefaultThrottle.Burst {
		p := b.post("/console/login", url.Values{"csrf": {b.get("/console/login").csrf(t)}, "token": {"wrong-token-0123456789"}})
		if p.status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: got %d, want 401", i+1, p.status)
		}
	}
	p := b.post("/console/login", url.Values{"csrf": {b.get("/console/login").csrf(t)}, "token": {fullToken}})
	if p.status != http.StatusTooManyRequests || p.header.Get("Retry-After") == "" || !strings.Contains(p.body, "Too many wrong tokens") {
		t.Fatalf("after %d wrong tokens: got %d (Retry-After %q), want 429 with Retry-After even for the right token",
			admin.DefaultThrottle.Burst, p.status, p.header.Get("Retry-After"))
	}
	if p := b.get("/console/"); p.status != http.StatusSeeOther {
		t.Fatalf("a throttled login: got %d on the overview, want no session", p.status)
	}
}

func TestPostsNeedTheSessionsCSRFToken(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	e.renew(t)
	b, other := e.browser(t), e.browser(t)
	b.login(fullToken)
	otherToken := other.login(fullToken).csrf(t)
	before := e.auditCount(t)
	for name, form := range map[string]url.Values{
		"missing":               {},
		"wrong":                 {"csrf": {"AAAA"}},
		"another session's one": {"csrf": {otherToken}},
	} {
		if p := b.post("/console/subscriptions/"+e.sub+"/sync", form); p.status != http.StatusForbidden || !strings.Contains(p.body, "CSRF") {
			t.Fatalf("%s CSRF token: got %d, want 403", name, p.status)
		}
	}
	if n := e.auditCount(t); n != before {
		t.Fatalf("a refused POST wrote %d audit rows", n-before)
	}

	// With the session's own token, the Sync runs, audited with the operator's name.
	tok := b.get("/console/subscriptions/" + e.sub).csrf(t)
	p := b.post("/console/subscriptions/"+e.sub+"/sync", url.Values{"csrf": {tok}})
	if p.status != http.StatusSeeOther || !strings.HasPrefix(p.header.Get("Location"), "/console/subscriptions/"+e.sub+"?notice=synced") {
		t.Fatalf("sync: got %d to %q, want 303 back to the subscription", p.status, p.header.Get("Location"))
	}
	rows, err := e.store.QueryAudit(context.Background(), postgres.AuditFilter{Subscription: e.sub, Limit: 1})
	if err != nil || len(rows) != 1 || rows[0].Action != "extend" || rows[0].Cause != "operator" || *rows[0].CauseID != "console:admin" {
		t.Fatalf("got audit %+v, %v; want an extend by operator console:admin", rows, err)
	}
	if p := b.get(p.header.Get("Location")); !strings.Contains(p.body, "Synced now: 1 action(s)") {
		t.Fatalf("the page after the sync does not say it synced:\n%s", p.body)
	}
}

func TestReadOnlyTokenSeesButChangesNothing(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	e.renew(t)
	if _, err := e.pool.Exec(context.Background(), `UPDATE stripe_events SET status = 'failed', last_error = 'boom' WHERE id = $1`, e.events[0]); err != nil {
		t.Fatal(err)
	}
	b := e.browser(t)
	if p := b.login(readToken); !strings.Contains(p.body, "read-only") {
		t.Fatal("the read-only session is not marked read-only")
	}
	pages := map[string]string{
		"/console/subscriptions/" + e.sub: e.key,
		"/console/events/failed":          e.events[0],
		"/console/events/" + e.events[0]:  `"type"`,
		"/console/audit":                  e.sub,
		"/console/queue":                  "event",
	}
	var tok string
	for path, want := range pages {
		p := b.get(path)
		if p.status != 200 || !strings.Contains(p.text(), want) {
			t.Fatalf("GET %s: got %d, want 200 showing %q", path, p.status, want)
		}
		for _, button := range []string{"Sync now", "Replay event", ">Replay<", "Replay all failed"} {
			if strings.Contains(p.body, button) {
				t.Fatalf("GET %s shows %q to the read-only token", path, button)
			}
		}
		tok = p.csrf(t) // the logout form's
	}

	before := e.auditCount(t)
	for _, path := range []string{"/console/subscriptions/" + e.sub + "/sync", "/console/events/" + e.events[0] + "/replay", "/console/events/failed/replay"} {
		if p := b.post(path, url.Values{"csrf": {tok}}); p.status != http.StatusForbidden {
			t.Fatalf("POST %s: got %d, want 403", path, p.status)
		}
	}
	var status string
	_ = e.pool.QueryRow(context.Background(), `SELECT status FROM stripe_events WHERE id = $1`, e.events[0]).Scan(&status)
	if n := e.auditCount(t); n != before || status != "failed" {
		t.Fatalf("read-only POSTs changed things: %d audit rows, event %s", n-before, status)
	}

	// River UI: reading is allowed, changing is not.
	if p := b.get("/console/jobs/"); p.status != 200 {
		t.Fatalf("River UI GET: got %d", p.status)
	}
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/console/jobs/api/jobs/retry", strings.NewReader(`{}`))
	req.Header.Set("Origin", e.srv.URL)
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || len(e.jobsUI.calls()) != 1 {
		t.Fatalf("River UI POST as read-only: got %d, calls %v; want 403 and only the GET through", resp.StatusCode, e.jobsUI.calls())
	}
}

func TestRiverUIRefusesCrossOriginChanges(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	b := e.browser(t)
	if p := b.get("/console/jobs/"); p.status != http.StatusSeeOther {
		t.Fatalf("River UI without a session: got %d, want 303 to login", p.status)
	}
	b.login(fullToken)
	for name, tc := range map[string]struct {
		origin, site string
		want         int
	}{
		"same origin":   {e.srv.URL, "same-origin", 200},
		"other origin":  {"https://evil.example", "cross-site", http.StatusForbidden},
		"no origin":     {"", "", http.StatusForbidden},
		"same-site tab": {e.srv.URL, "same-site", http.StatusForbidden},
	} {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/console/jobs/api/jobs/retry", strings.NewReader(`{}`))
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		if tc.site != "" {
			req.Header.Set("Sec-Fetch-Site", tc.site)
		}
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("%s: got %d, want %d", name, resp.StatusCode, tc.want)
		}
	}
}

func TestLogoutAndExpiryEndTheSession(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	b := e.browser(t)
	tok := b.login(fullToken).csrf(t)
	u, _ := url.Parse(e.srv.URL + "/console/")
	stolen := b.c.Jar.Cookies(u)

	p := b.post("/console/logout", url.Values{"csrf": {tok}})
	if p.status != http.StatusSeeOther || !strings.HasPrefix(p.header.Get("Location"), "/console/login") {
		t.Fatalf("logout: got %d to %q", p.status, p.header.Get("Location"))
	}
	if p := b.get("/console/"); p.status != http.StatusSeeOther {
		t.Fatalf("after logout: got %d, want 303 to login", p.status)
	}
	// The cookie as it was before logout is refused too.
	replay := e.browser(t)
	replay.c.Jar.SetCookies(u, stolen)
	if p := replay.get("/console/"); p.status != http.StatusSeeOther {
		t.Fatalf("the logged-out session's cookie: got %d, want 303 to login", p.status)
	}

	// A session ends by itself after 12 hours.
	later := e.browser(t)
	later.login(fullToken)
	e.clock.Add(int64((12*time.Hour + time.Second).Seconds()))
	if p := later.get("/console/"); p.status != http.StatusSeeOther {
		t.Fatalf("after 12 hours: got %d, want 303 to login", p.status)
	}
}

func TestSearchFindsTheSubscription(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	b := e.browser(t)
	b.login(fullToken)
	subPage := "/console/subscriptions/" + e.sub
	for name, tc := range map[string]struct{ q, want string }{
		"subscription": {e.sub, subPage},
		"customer":     {e.cust, subPage},
		"e-mail":       {"ada@example.com", subPage},
		"license key":  {e.key, subPage},
		"event id":     {e.events[0], subPage + "?event=" + e.events[0]},
	} {
		p := b.get("/console/subscriptions?q=" + url.QueryEscape(tc.q))
		if p.status != http.StatusFound || p.header.Get("Location") != tc.want {
			t.Fatalf("%s: got %d to %q, want 302 to %s", name, p.status, p.header.Get("Location"), tc.want)
		}
	}
	for name, q := range map[string]string{"unknown key": "NOPE-NOPE", "e-mail in other case": "Ada@example.com", "unknown event": "evt_nope"} {
		if p := b.get("/console/subscriptions?q=" + url.QueryEscape(q)); p.status != 200 || !strings.Contains(p.body, "ot") ||
			strings.Contains(p.body, e.sub) {
			t.Fatalf("%s: got %d, want 200 without a hit:\n%s", name, p.status, p.body)
		}
	}
}

func TestSubscriptionPageShowsKeyPreviewAuditAndEvents(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	e.renew(t)
	b := e.browser(t)
	b.login(fullToken)
	p := b.get("/console/subscriptions/" + e.sub)
	if p.status != 200 {
		t.Fatalf("got %d", p.status)
	}
	k, _ := e.world.Crypto.Key(simtest.Product, e.key)
	target := e.world.Stripe.Now() // renewed: the new period is paid, the key still ends a month earlier
	for _, want := range []string{
		e.key, "active", "create_key", // the key, Stripe's status, the audit trail
		"- expires   " + k.Expires.UTC().Format("2006-01-02 15:04:05"), "+ expires", // the diff: the key now, then after a Sync
		"extend by", "invoice.paid", e.events[0], // the action in words, the events that touched it
	} {
		if !strings.Contains(html.UnescapeString(p.body), want) {
			t.Fatalf("the page lacks %q (now %s):\n%s", want, target, p.body)
		}
	}
	if before := e.auditCount(t); before != e.auditCount(t) {
		t.Fatal("viewing the page wrote audit rows")
	}
	if k2, _ := e.world.Crypto.Key(simtest.Product, e.key); !k2.Expires.Equal(k.Expires) {
		t.Fatal("the preview changed the key")
	}
}

func TestFailedEventsReplay(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	ctx := context.Background()
	failed := e.events[:2]
	if _, err := e.pool.Exec(ctx, `UPDATE stripe_events SET status = 'failed', attempts = 20, last_error = 'stripe: card_declined token' WHERE id = ANY($1)`, failed); err != nil {
		t.Fatal(err)
	}
	b := e.browser(t)
	b.login(fullToken)
	p := b.get("/console/events/failed")
	if p.status != 200 || !strings.Contains(p.body, failed[0]) || !strings.Contains(p.body, "card_declined") || !strings.Contains(p.body, "20") {
		t.Fatalf("failed events page: got %d:\n%s", p.status, p.body)
	}
	jobsOf := func(id string) int {
		var n int
		_ = e.pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE args->>'event_id' = $1`, id).Scan(&n)
		return n
	}
	statusOf := func(id string) string {
		var s string
		_ = e.pool.QueryRow(ctx, `SELECT status FROM stripe_events WHERE id = $1`, id).Scan(&s)
		return s
	}
	jobsBefore := jobsOf(failed[0])

	// One: pending again with a new job, back on the page it came from.
	r := b.post("/console/events/"+failed[0]+"/replay", url.Values{"csrf": {p.csrf(t)}, "back": {"/console/events/failed"}})
	if r.status != http.StatusSeeOther || r.header.Get("Location") != "/console/events/failed?notice=replayed" {
		t.Fatalf("replay: got %d to %q", r.status, r.header.Get("Location"))
	}
	if statusOf(failed[0]) != "pending" || jobsOf(failed[0]) != jobsBefore+1 || statusOf(failed[1]) != "failed" {
		t.Fatalf("after replaying one: %s with %d jobs, the other %s", statusOf(failed[0]), jobsOf(failed[0]), statusOf(failed[1]))
	}

	// A back link elsewhere than the console is not followed.
	r = b.post("/console/events/"+failed[0]+"/replay", url.Values{"csrf": {p.csrf(t)}, "back": {"//evil.example/x"}})
	if r.header.Get("Location") != "/console/?notice=replayed" {
		t.Fatalf("replay with a foreign back link: went to %q", r.header.Get("Location"))
	}

	// All: the one still failed is queued.
	r = b.post("/console/events/failed/replay", url.Values{"csrf": {p.csrf(t)}})
	if r.status != http.StatusSeeOther || r.header.Get("Location") != "/console/events/failed?notice=replayed_all&n=1" || statusOf(failed[1]) != "pending" {
		t.Fatalf("replay all: got %d to %q, event %s", r.status, r.header.Get("Location"), statusOf(failed[1]))
	}
	if p := b.get(r.header.Get("Location")); !strings.Contains(p.body, "1 failed event(s) queued again") || !strings.Contains(p.body, "No failed events") {
		t.Fatalf("the page after replaying all:\n%s", p.body)
	}

	// An event keysync does not have is a 404.
	if r := b.post("/console/events/evt_nope/replay", url.Values{"csrf": {p.csrf(t)}}); r.status != http.StatusNotFound {
		t.Fatalf("replay of an unknown event: got %d, want 404", r.status)
	}
}

func TestAuditSearchAndCSVExport(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	e.renew(t)
	if _, err := e.engine.Sync(context.Background(), e.sub, syncer.Cause{Kind: syncer.CauseSweep, ID: "7"}); err != nil {
		t.Fatal(err)
	}
	b := e.browser(t)
	b.login(fullToken)

	p := b.get("/console/audit?cause=sweep&subscription=" + e.sub)
	if p.status != 200 || !strings.Contains(p.body, `data-label="Action">extend<`) || strings.Contains(p.body, `data-label="Action">create_key<`) {
		t.Fatalf("audit filtered by cause: got %d:\n%s", p.status, p.body)
	}

	// The export is `keysync audit --format csv` for the same filters.
	csv := b.get("/console/audit.csv?subscription=" + e.sub)
	rows, err := e.store.QueryAudit(context.Background(), postgres.AuditFilter{Subscription: e.sub, Limit: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := postgres.WriteAuditCSV(&want, rows); err != nil {
		t.Fatal(err)
	}
	if csv.status != 200 || csv.body != want.String() || len(rows) != 2 || !strings.HasPrefix(csv.header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("csv: got %d (%s):\n%s\nwant (%d rows):\n%s", csv.status, csv.header.Get("Content-Disposition"), csv.body, len(rows), want.String())
	}

	for name, q := range map[string]string{"unknown outcome": "outcome=maybe", "bad since": "since=yesterday", "limit too large": "limit=5000"} {
		if p := b.get("/console/audit?" + q); p.status != http.StatusBadRequest {
			t.Fatalf("%s: got %d, want 400", name, p.status)
		}
	}
	if p := b.get("/console/audit.csv?outcome=maybe"); p.status != http.StatusBadRequest {
		t.Fatalf("csv with an unknown outcome: got %d, want 400", p.status)
	}
}

func TestOverviewCountsAndCursorAlarms(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		cursorAge time.Duration
		want      string
	}{
		"fresh":     {time.Hour, "0.0 d"},
		"25 days":   {26 * 24 * time.Hour, "past 25 days"},
		"30 days":   {31 * 24 * time.Hour, "past Stripe's 30 days"},
		"no cursor": {0, "no catch-up has succeeded yet"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, false)
			ctx := context.Background()
			if _, err := e.pool.Exec(ctx, `UPDATE stripe_events SET status = 'failed' WHERE id = $1`, e.events[0]); err != nil {
				t.Fatal(err)
			}
			if tc.cursorAge > 0 {
				if _, err := e.pool.Exec(ctx, `INSERT INTO sync_runs (kind, status, finished_at, scanned, drifted, cursor)
					VALUES ('catch_up', 'succeeded', now(), 12, 3, extract(epoch FROM now() - make_interval(secs => $1))::bigint::text)`, tc.cursorAge.Seconds()); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := e.pool.Exec(ctx, `INSERT INTO sync_runs (kind, status, finished_at, scanned, drifted, fixed) VALUES ('sweep', 'succeeded', now(), 41, 2, 2)`); err != nil {
				t.Fatal(err)
			}
			b := e.browser(t)
			p := b.login(fullToken)
			var stored, pending int
			if err := e.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM stripe_events`).Scan(&stored, &pending); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				tc.want,
				`<p class="big">` + strconv.Itoa(stored) + `</p><p>events received</p>`, // last hour and last day
				strconv.Itoa(pending) + " pending",
				`<p class="big bad">1</p><p><a href="/console/events/failed">failed events</a></p>`,
				`<td data-label="Scanned">41</td>`, `<td data-label="Drifted / new" class="warn">2</td>`,
				"10.0%", // the Stripe calls given: 1 error in 10
			} {
				if !strings.Contains(p.text(), want) {
					t.Fatalf("the overview lacks %q:\n%s", want, p.body)
				}
			}
		})
	}
}

func TestDryRunIsShownOnEveryPage(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	client, err := jobs.NewClient(e.pool, jobs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	auth := admin.NewGuard(admin.GuardConfig{AdminToken: fullToken})
	c, err := console.New(console.Options{Auth: auth, SessionKey: auth.SessionKey(), Store: e.store, Engine: e.engine,
		Jobs: replayJobs{store: e.store, client: client}, Queue: jobs.NewTables(e.pool), DryRun: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Mount(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	b := e.browser(t)
	b.base = srv.URL
	b.login(fullToken)
	for _, path := range []string{"/console/", "/console/subscriptions/" + e.sub, "/console/events/failed", "/console/audit", "/console/queue"} {
		if p := b.get(path); p.status != 200 || !strings.Contains(p.body, `<div class="dryrun" role="alert"><strong>DRY RUN</strong>`) {
			t.Fatalf("GET %s: got %d without the dry-run banner", path, p.status)
		}
	}
	if p := b.get("/console/subscriptions?q=someone@example.com"); !strings.Contains(p.body, "needs Stripe") {
		t.Fatalf("e-mail search without Stripe:\n%s", p.body)
	}
}

func TestNewRefusesMissingParts(t *testing.T) {
	t.Parallel()
	auth := admin.NewGuard(admin.GuardConfig{AdminToken: fullToken})
	if _, err := console.New(console.Options{Auth: auth, SessionKey: auth.SessionKey()}); err == nil {
		t.Fatal("New without a store, engine, jobs and queue: got no error")
	}
}
