package webhook_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	wh "github.com/keysync/keysync/internal/webhook"
)

const (
	secret1 = "whsec_test_first_0123456789abcdef"
	secret2 = "whsec_test_second_0123456789abcdef"
)

type bundle struct {
	pool     *pgxpool.Pool
	server   *httptest.Server
	handler  *wh.Handler
	ingester *ingest.Ingester
	logs     *syncBuffer
	mu       sync.Mutex
	refused  map[string]int // reason -> events ingest's guard refused
	outcomes map[string]int // outcome -> deliveries
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type options struct {
	poolURL  string
	livemode bool // the API key's mode
	config   func(*wh.Config)
}

func setup(t *testing.T, opts options) *bundle {
	t.Helper()
	url := opts.poolURL
	if url == "" {
		url = pgtest.URL(t)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	logs := &syncBuffer{}
	log := zerolog.New(logs)
	b := &bundle{pool: pool, logs: logs, refused: map[string]int{}, outcomes: map[string]int{}}
	b.ingester = ingest.New(jobs.NewTables(pool), ingest.Config{Guard: events.Guard{Livemode: opts.livemode},
		OnRefused: func(reason string) { b.mu.Lock(); b.refused[reason]++; b.mu.Unlock() }}, log)
	b.ingester.Start(context.Background())
	t.Cleanup(b.ingester.Stop)
	hc := wh.Config{Secrets: []string{secret1, secret2},
		Observe: func(_, outcome string, _ time.Duration) { b.mu.Lock(); b.outcomes[outcome]++; b.mu.Unlock() }}
	if opts.config != nil {
		opts.config(&hc)
	}
	h, err := wh.NewHandler(hc, b.ingester, log)
	if err != nil {
		t.Fatal(err)
	}
	b.handler = h
	b.server = httptest.NewServer(h)
	t.Cleanup(b.server.Close)
	return b
}

func event(id, typ, apiVersion string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"object":"event","api_version":%q,"created":1700000000,"livemode":false,`+
		`"pending_webhooks":1,"type":%q,"data":{"object":{"id":"in_1","object":"invoice","subscription":"sub_1"}}}`,
		id, apiVersion, typ)
}

func sign(body []byte, secret string, at time.Time, scheme string) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
		Payload: body, Secret: secret, Timestamp: at, Scheme: scheme,
	}).Header
}

func (b *bundle) post(t *testing.T, body []byte, header string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.server.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if header != "" {
		req.Header.Set("Stripe-Signature", header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

func (b *bundle) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *bundle) events(t *testing.T) int { return b.count(t, `SELECT count(*) FROM stripe_events`) }
func (b *bundle) jobs(t *testing.T) int   { return b.count(t, `SELECT count(*) FROM river_job`) }

func TestSignatures(t *testing.T) {
	t.Parallel()
	now := time.Now()
	body := event("evt_sig", "invoice.paid", "2023-10-16")
	tampered := bytes.Replace(body, []byte("sub_1"), []byte("sub_2"), 1)
	tests := map[string]struct {
		body   []byte
		header string
		want   int
		stored bool
	}{
		"valid":                  {body, sign(body, secret1, now, ""), 200, true},
		"valid under 2nd secret": {body, sign(body, secret2, now, ""), 200, true},
		"wrong secret":           {body, sign(body, "whsec_other", now, ""), 400, false},
		"tampered body":          {tampered, sign(body, secret1, now, ""), 400, false},
		"timestamp 10 min old":   {body, sign(body, secret1, now.Add(-10*time.Minute), ""), 400, false},
		"missing header":         {body, "", 400, false},
		"only a v0 signature":    {body, sign(body, secret1, now, "v0"), 400, false},
		"garbage header":         {body, "not-a-signature", 400, false},
		"v0 and a bad v1":        {body, sign(body, secret1, now, "v0") + ",v1=00ff", 400, false},
		"rotation: 2 sigs, 1 ok": {body, sign(body, "whsec_old", now, "") + ",v1=" + strings.Split(sign(body, secret2, now, ""), "v1=")[1], 200, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, options{})
			got, resp := b.post(t, tc.body, tc.header)
			if got != tc.want {
				t.Fatalf("got status %d (%s), want %d", got, resp, tc.want)
			}
			wantRows := 0
			if tc.stored {
				wantRows = 1
			}
			if n := b.events(t); n != wantRows {
				t.Fatalf("got %d stripe_events rows, want %d", n, wantRows)
			}
			if n := b.jobs(t); n != wantRows {
				t.Fatalf("got %d jobs, want %d", n, wantRows)
			}
			if !tc.stored {
				logs := b.logs.String()
				if c := strings.Count(logs, `"level":"warn"`); c != 1 {
					t.Fatalf("got %d warn lines, want 1: %s", c, logs)
				}
				for _, secret := range []string{secret1, secret2, "sub_1", "invoice.paid"} {
					if strings.Contains(logs, secret) {
						t.Fatalf("log leaks %q: %s", secret, logs)
					}
				}
			}
		})
	}
}

func TestConcurrentDuplicateDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	body := event("evt_dup", "invoice.paid", "2023-10-16")
	header := sign(body, secret1, time.Now(), "")
	const n = 50
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i], _ = b.post(t, body, header)
		}()
	}
	wg.Wait()
	for i, s := range statuses {
		if s != 200 {
			t.Fatalf("delivery %d: got %d, want 200", i, s)
		}
	}
	if got := b.events(t); got != 1 {
		t.Fatalf("got %d stripe_events rows, want 1", got)
	}
	if got := b.jobs(t); got != 1 {
		t.Fatalf("got %d jobs, want 1", got)
	}
	// A later redelivery is acknowledged as a duplicate and enqueues nothing.
	_, resp := b.post(t, body, sign(body, secret1, time.Now(), ""))
	if !strings.Contains(resp, `"duplicate":true`) || b.jobs(t) != 1 {
		t.Fatalf("got %s and %d jobs, want a duplicate answer and still 1 job", resp, b.jobs(t))
	}
}

func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	hp, err := pgtest.HostPort(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := pgtest.NewProxy(t, hp)
	b := setup(t, options{poolURL: pgtest.WithHostPort(url, proxy.Addr())})

	first := event("evt_before", "invoice.paid", "2023-10-16")
	if got, resp := b.post(t, first, sign(first, secret1, time.Now(), "")); got != 200 {
		t.Fatalf("before the outage: got %d (%s), want 200", got, resp)
	}
	proxy.Cut()
	during := event("evt_during", "invoice.paid", "2023-10-16")
	got, resp := b.post(t, during, sign(during, secret1, time.Now(), ""))
	if got != http.StatusServiceUnavailable {
		t.Fatalf("during the outage: got %d (%s), want 503", got, resp)
	}
	if strings.Contains(resp, "127.0.0.1") || strings.Contains(resp, "dial") {
		t.Fatalf("503 body leaks internals: %s", resp)
	}
	proxy.Restore()
	// Stripe redelivers the event that got the 503; it lands.
	if got, resp := b.post(t, during, sign(during, secret1, time.Now(), "")); got != 200 {
		t.Fatalf("after the outage: got %d (%s), want 200", got, resp)
	}
	if n := b.count(t, `SELECT count(*) FROM stripe_events WHERE id IN ('evt_before', 'evt_during')`); n != 2 {
		t.Fatalf("got %d of the 2 events stored, want 2", n)
	}
	if n := b.jobs(t); n != 2 {
		t.Fatalf("got %d jobs, want 2", n)
	}
}

func TestBodyTooLarge(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	pad := strings.Repeat("x", wh.DefaultMaxBody)
	body := []byte(strings.Replace(string(event("evt_big", "invoice.paid", "2023-10-16")), `"in_1"`, `"`+pad+`"`, 1))
	got, _ := b.post(t, body, sign(body, secret1, time.Now(), ""))
	if got != http.StatusRequestEntityTooLarge {
		t.Fatalf("got %d, want 413", got)
	}
	// Without a Content-Length the limit still holds while reading.
	req, _ := http.NewRequest(http.MethodPost, b.server.URL, io.MultiReader(bytes.NewReader(body)))
	req.ContentLength = -1
	req.Header.Set("Stripe-Signature", sign(body, secret1, time.Now(), ""))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked: got %d, want 413", resp.StatusCode)
	}
	if n := b.events(t); n != 0 {
		t.Fatalf("got %d rows, want 0", n)
	}
}

func TestUnknownTypeIsStoredIgnored(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	body := event("evt_unknown", "customer.tax_id.created", "2023-10-16")
	if got, resp := b.post(t, body, sign(body, secret1, time.Now(), "")); got != 200 {
		t.Fatalf("got %d (%s), want 200", got, resp)
	}
	if n := b.count(t, `SELECT count(*) FROM stripe_events WHERE id = 'evt_unknown' AND status = 'ignored'`); n != 1 {
		t.Fatalf("got %d ignored rows, want 1", n)
	}
	if n := b.jobs(t); n != 0 {
		t.Fatalf("got %d jobs for an ignored type, want 0", n)
	}
}

func TestHandledTypeEnqueuesItsJob(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	body := event("evt_job", "customer.subscription.updated", "2023-10-16")
	if got, _ := b.post(t, body, sign(body, secret1, time.Now(), "")); got != 200 {
		t.Fatalf("got %d, want 200", got)
	}
	n := b.count(t, `SELECT count(*) FROM river_job WHERE kind = 'stripe_event' AND queue = 'events'
		AND args->>'event_id' = 'evt_job' AND args->>'type' = 'customer.subscription.updated'`)
	if n != 1 {
		t.Fatalf("got %d matching jobs, want 1", n)
	}
	if n := b.count(t, `SELECT count(*) FROM stripe_events WHERE id = 'evt_job' AND status = 'pending'
		AND payload->'data'->'object'->>'subscription' = 'sub_1' AND source = 'webhook'`); n != 1 {
		t.Fatalf("got %d pending rows with the payload, want 1", n)
	}
}

// An event of any API version is stored as received, with its version, and gets its
// job: the worker reads what it is about from the API (syncer.SubscriptionFor).
func TestAnyAPIVersionIsStoredAsReceived(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	basil := []byte(`{"id":"evt_basil","object":"event","api_version":"2025-03-31.basil","created":1700000000,"livemode":false,` +
		`"pending_webhooks":1,"type":"invoice.paid","data":{"object":{"id":"in_1","object":"invoice",` +
		`"parent":{"type":"subscription_details","subscription_details":{"subscription":"sub_1"}}}}}`)
	for _, body := range [][]byte{basil, event("evt_old", "invoice.paid", "2020-08-27")} {
		if got, resp := b.post(t, body, sign(body, secret1, time.Now(), "")); got != 200 {
			t.Fatalf("got %d (%s), want 200", got, resp)
		}
	}
	var version, parent string
	err := b.pool.QueryRow(context.Background(), `SELECT api_version, payload->'data'->'object'->'parent'->'subscription_details'->>'subscription'
		FROM stripe_events WHERE id = 'evt_basil' AND status = 'pending'`).Scan(&version, &parent)
	if err != nil || version != "2025-03-31.basil" || parent != "sub_1" {
		t.Fatalf("got api_version %q, parent subscription %q (%v); want the basil event stored as received", version, parent, err)
	}
	if n := b.count(t, `SELECT count(*) FROM stripe_events WHERE id = 'evt_old' AND api_version = '2020-08-27'`); n != 1 {
		t.Fatalf("got %d rows of the 2020-08-27 event, want 1", n)
	}
	if n := b.jobs(t); n != 2 {
		t.Fatalf("got %d jobs, want 2", n)
	}
}

// An event of the other mode than the API key's, or of a connected account, is stored
// ignored with the reason and answered 200; it gets no job, so it never reaches a Sync.
// It is counted, and each reason is logged once, not once per event.
func TestRefusedEvents(t *testing.T) {
	t.Parallel()
	withFields := func(id, fields string) []byte {
		return []byte(strings.Replace(string(event(id, "invoice.paid", "2023-10-16")), `"livemode":false,`, fields, 1))
	}
	tests := map[string]struct {
		keyLive bool
		body    func(id string) []byte
		reason  string
		detail  string
	}{
		"live event, test key": {false, func(id string) []byte { return withFields(id, `"livemode":true,`) }, "livemode_mismatch", "live-mode event"},
		"test event, live key": {true, func(id string) []byte { return withFields(id, `"livemode":false,`) }, "livemode_mismatch", "test-mode event"},
		"connected account": {false, func(id string) []byte { return withFields(id, `"livemode":false,"account":"acct_1Connected",`) },
			"connected_account", "acct_1Connected"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, options{livemode: tc.keyLive})
			for _, id := range []string{"evt_r1", "evt_r2"} {
				body := tc.body(id)
				if got, resp := b.post(t, body, sign(body, secret1, time.Now(), "")); got != 200 {
					t.Fatalf("%s: got %d (%s), want 200", id, got, resp)
				}
			}
			n := b.count(t, `SELECT count(*) FROM stripe_events WHERE status = 'ignored' AND last_error LIKE '%' || $1 || '%'`, tc.detail)
			if n != 2 {
				t.Fatalf("got %d events stored ignored with %q in last_error, want 2", n, tc.detail)
			}
			if n := b.jobs(t); n != 0 {
				t.Fatalf("got %d jobs, want 0", n)
			}
			b.mu.Lock()
			refused, ignored := b.refused[tc.reason], b.outcomes["ignored"]
			b.mu.Unlock()
			if refused != 2 || ignored != 2 {
				t.Fatalf("got %d refusals counted for %s and %d deliveries with outcome ignored, want 2 and 2", refused, tc.reason, ignored)
			}
			if got := strings.Count(b.logs.String(), `"reason":"`+tc.reason+`"`); got != 1 {
				t.Fatalf("got %d log lines for %s, want 1:\n%s", got, tc.reason, b.logs)
			}
			// A redelivery is a duplicate: neither counted nor logged again.
			body := tc.body("evt_r1")
			if got, resp := b.post(t, body, sign(body, secret1, time.Now(), "")); got != 200 || !strings.Contains(resp, "duplicate") {
				t.Fatalf("redelivery: got %d %s, want a 200 duplicate", got, resp)
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.refused[tc.reason] != 2 {
				t.Fatalf("redelivery counted: got %d, want 2", b.refused[tc.reason])
			}
		})
	}
	// A handled event of the key's own mode and account is not refused.
	b := setup(t, options{})
	body := event("evt_ok", "invoice.paid", "2023-10-16")
	if got, _ := b.post(t, body, sign(body, secret1, time.Now(), "")); got != 200 || b.jobs(t) != 1 {
		t.Fatalf("own mode: got %d and %d jobs, want 200 and 1", got, b.jobs(t))
	}
}

func TestNotAnEvent(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	for _, body := range [][]byte{[]byte(`not json`), []byte(`{"id":"evt_1"}`), []byte(`{"id":"cus_1","object":"customer","type":"x"}`)} {
		if got, _ := b.post(t, body, sign(body, secret1, time.Now(), "")); got != 400 {
			t.Fatalf("%s: got %d, want 400", body, got)
		}
	}
	if n := b.events(t); n != 0 {
		t.Fatalf("got %d rows, want 0", n)
	}
}

func TestStoppedIngesterAnswers503(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	b.ingester.Stop()
	body := event("evt_late", "invoice.paid", "2023-10-16")
	if got, _ := b.post(t, body, sign(body, secret1, time.Now(), "")); got != http.StatusServiceUnavailable {
		t.Fatalf("got %d, want 503", got)
	}
}

// trackedBody records whether the handler read any of the body.
type trackedBody struct {
	r    io.Reader
	read atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.r.Read(p)
}

// What the Stripe-Signature header alone shows to be wrong is refused before a byte of
// the body is read: a sender without a fresh, well-formed header costs no memory. A
// timestamp more than 5 minutes ahead is refused too, although its signature is valid:
// the delivery could be replayed until then.
func TestSignatureHeaderCheckedBeforeBody(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	now := time.Now()
	body := event("evt_hdr", "invoice.paid", "2023-10-16")
	tests := map[string]struct {
		header string
		want   int
		read   bool
	}{
		"missing":                {"", 400, false},
		"no timestamp":           {"v1=00ff", 400, false},
		"timestamp not a number": {"t=soon,v1=00ff", 400, false},
		"two timestamps":         {fmt.Sprintf("t=%d,t=%d,v1=00ff", now.Unix(), now.Unix()), 400, false},
		"only v0":                {sign(body, secret1, now, "v0"), 400, false},
		"10 min old":             {sign(body, secret1, now.Add(-10*time.Minute), ""), 400, false},
		"6 min ahead, valid":     {sign(body, secret1, now.Add(6*time.Minute), ""), 400, false},
		"a year ahead":           {fmt.Sprintf("t=%d,v1=00ff", now.AddDate(1, 0, 0).Unix()), 400, false},
		// Within the skew: read, verified and stored.
		"4 min ahead, valid": {sign(body, secret1, now.Add(4*time.Minute), ""), 200, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tracked := &trackedBody{r: bytes.NewReader(body)}
			req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", tracked)
			if tc.header != "" {
				req.Header.Set("Stripe-Signature", tc.header)
			}
			w := httptest.NewRecorder()
			b.handler.ServeHTTP(w, req)
			if w.Code != tc.want || tracked.read.Load() != tc.read {
				t.Fatalf("got status %d (%s), body read %v; want %d, read %v", w.Code, w.Body, tracked.read.Load(), tc.want, tc.read)
			}
		})
	}
	if n := b.events(t); n != 1 {
		t.Fatalf("got %d events stored, want 1", n)
	}
}

// The bodies held at once are bounded: a delivery that would pass the budget is
// answered 503 with Retry-After, without waiting and without reading its body, and
// deliveries are taken again once the budget is free.
func TestBodyBudget(t *testing.T) {
	t.Parallel()
	b := setup(t, options{config: func(c *wh.Config) { c.BodyBudget = wh.DefaultMaxBody }})

	// A sender declares the largest body and sends none of it: it holds the whole
	// budget while the handler waits for the body.
	conn, err := net.Dial("tcp", b.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=%d,v1=00ff\r\nContent-Length: %d\r\n\r\n", time.Now().Unix(), wh.DefaultMaxBody)

	probe := []byte(`{}`)
	pgtest.WaitFor(t, 10*time.Second, "the held body to take the budget", func() bool {
		got, _ := b.post(t, probe, sign(probe, secret1, time.Now(), ""))
		return got == http.StatusServiceUnavailable
	})
	body := event("evt_budget", "invoice.paid", "2023-10-16")
	tracked := &trackedBody{r: bytes.NewReader(body)}
	req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", tracked)
	req.Header.Set("Stripe-Signature", sign(body, secret1, time.Now(), ""))
	w := httptest.NewRecorder()
	b.handler.ServeHTTP(w, req)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || tracked.read.Load() {
		t.Fatalf("budget spent: got %d, Retry-After %q, body read %v; want 503 with Retry-After, unread", w.Code, w.Header().Get("Retry-After"), tracked.read.Load())
	}
	b.mu.Lock()
	busy := b.outcomes["busy"]
	b.mu.Unlock()
	if busy < 2 {
		t.Fatalf("got %d deliveries with outcome busy, want at least 2", busy)
	}

	// The sender gives up: its share comes back, and Stripe's retry is stored.
	conn.Close()
	pgtest.WaitFor(t, 10*time.Second, "the budget to come back", func() bool {
		got, _ := b.post(t, body, sign(body, secret1, time.Now(), ""))
		return got == http.StatusOK
	})
	if n := b.events(t); n != 1 {
		t.Fatalf("got %d events stored, want 1", n)
	}
}

// A flood of bad requests is logged at most once a second for each reason, and the
// next line says how many were left out.
func TestRejectionWarningsAreSampled(t *testing.T) {
	t.Parallel()
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	b := setup(t, options{config: func(c *wh.Config) { c.Now = now }})
	body := event("evt_flood", "invoice.paid", "2023-10-16")
	send := func(n int, header func() string) {
		for range n {
			if got, resp := b.post(t, body, header()); got != 400 {
				t.Fatalf("got %d (%s), want 400", got, resp)
			}
		}
	}
	unsigned := func() string { return "" }
	forged := func() string { return sign(body, "whsec_forged", now(), "") }
	send(5, unsigned)
	send(3, forged)
	if got := strings.Count(b.logs.String(), `"level":"warn"`); got != 2 {
		t.Fatalf("got %d warn lines for 8 rejections of 2 reasons within a second, want 2:\n%s", got, b.logs)
	}
	clock.Add(int64(time.Second))
	send(1, unsigned)
	logs := b.logs.String()
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], `"suppressed":4`) || !strings.Contains(lines[2], "missing Stripe-Signature") {
		t.Fatalf("got %d lines, the last %q; want 3, the last counting the 4 unsigned ones left out", len(lines), lines[len(lines)-1])
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.outcomes["bad_signature"] != 9 {
		t.Fatalf("got %d deliveries counted bad_signature, want 9: sampling thins the log, not the metrics", b.outcomes["bad_signature"])
	}
}

// Signed events that are odd: what Postgres cannot store as sent is cleaned, what is no
// Stripe event is refused (400, nothing stored), and what the database refuses is
// answered 400, not 503: no redelivery would change it.
func TestSignedButOddEvents(t *testing.T) {
	t.Parallel()
	withEnvelope := func(id, typ, created string) []byte {
		return fmt.Appendf(nil, `{"id":%s,"object":"event","api_version":"2023-10-16","created":%s,"livemode":false,"type":%s,"data":{"object":{"id":"in_1","object":"invoice"}}}`,
			id, created, typ)
	}
	tests := map[string]struct {
		body  []byte
		want  int
		note  string // the stored data.object.note; "" when nothing is stored
		error string // in the answer, when refused
	}{
		"lone surrogate": {[]byte(`{"id":"evt_s","object":"event","api_version":"2023-10-16","created":1700000000,"livemode":false,"type":"invoice.paid",` +
			`"data":{"object":{"id":"in_1","object":"invoice","note":"a\ud800b"}}}`), 200, "a\uFFFDb", ""},
		"nul": {[]byte(`{"id":"evt_n","object":"event","api_version":"2023-10-16","created":1700000000,"livemode":false,"type":"invoice.paid",` +
			`"data":{"object":{"id":"in_1","object":"invoice","note":"a\u0000b"}}}`), 200, "a\uFFFDb", ""},
		"created in 5138":   {withEnvelope(`"evt_c"`, `"invoice.paid"`, "99999999999"), 400, "", "not a Stripe event"},
		"created in 1970":   {withEnvelope(`"evt_c"`, `"invoice.paid"`, "0"), 400, "", "not a Stripe event"},
		"not an event id":   {withEnvelope(`"cus_1"`, `"invoice.paid"`, "1700000000"), 400, "", "not a Stripe event"},
		"id of 300 letters": {withEnvelope(`"evt_`+strings.Repeat("a", 296)+`"`, `"invoice.paid"`, "1700000000"), 400, "", "not a Stripe event"},
		"type with a quote": {withEnvelope(`"evt_t"`, `"invoice.paid\""`, "1700000000"), 400, "", "not a Stripe event"},
		"number jsonb cannot hold": {[]byte(`{"id":"evt_x","object":"event","api_version":"2023-10-16","created":1700000000,"livemode":false,"type":"invoice.paid",` +
			`"data":{"object":{"id":"in_1","object":"invoice","amount":1e1000000}}}`), 400, "", "cannot be stored"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, options{})
			got, resp := b.post(t, tc.body, sign(tc.body, secret1, time.Now(), ""))
			if got != tc.want || !strings.Contains(resp, tc.error) {
				t.Fatalf("got %d (%s), want %d with %q", got, resp, tc.want, tc.error)
			}
			if tc.note == "" {
				if n := b.events(t); n != 0 {
					t.Fatalf("got %d events stored, want 0", n)
				}
				return
			}
			var note string
			if err := b.pool.QueryRow(context.Background(), `SELECT payload->'data'->'object'->>'note' FROM stripe_events`).Scan(&note); err != nil || note != tc.note {
				t.Fatalf("got note %q (%v), want %q", note, err, tc.note)
			}
		})
	}
}
