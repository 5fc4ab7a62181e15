package delivery_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// clock is a test clock that moves only when told.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// budgetPage serves the license page reading sessions through SessionReads with budget
// until t ends; per-client limits are far away.
func (e *env) budgetPage(t *testing.T, budget delivery.SessionBudget) string {
	t.Helper()
	reads := delivery.NewSessionReads(e.sc, budget, e.log)
	page := delivery.NewPage(reads, engine{e.engine}, e.licenses, delivery.PageOptions{PerMinute: 10000, Burst: 10000, Now: e.stripe.Now}, e.log)
	mux := http.NewServeMux()
	mux.Handle("GET "+delivery.Path, page)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// sessionReads is how many Checkout Sessions keysync read from the simulator.
func (e *env) sessionReads() int { return e.stripe.Requests()["GET /v1/checkout/sessions/{id}"] }

// pageStatus gets the page of session as JSON and returns its HTTP status, its JSON
// status and its Retry-After.
func pageStatus(t *testing.T, base, session string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+delivery.Path+"?session_id="+session, nil)
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct{ Status string }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, v.Status, resp.Header.Get("Retry-After")
}

// Made-up session ids take from the page's own budget of Stripe reads, never beyond:
// past it the page answers 503 with Retry-After and Stripe is not asked. An id Stripe
// did not know is not asked about again. A paying customer's page still gets its read
// once the budget refills, and the flood is logged once, without the ids.
func TestLicensePageStripeBudget(t *testing.T) {
	t.Parallel()
	e := setup(t)
	c := &clock{now: t0}
	base := e.budgetPage(t, delivery.SessionBudget{PerSecond: 1.0 / 60, Burst: 2, Now: c.Now})
	fakes := []string{"cs_test_madeUp1", "cs_test_madeUp2", "cs_test_madeUp3", "cs_test_madeUp4"}

	// 1. The budget's burst: two reads, each not found.
	for _, id := range fakes[:2] {
		if code, status, _ := pageStatus(t, base, id); code != 404 || status != "not_found" {
			t.Fatalf("%s: got %d %s, want 404 not_found", id, code, status)
		}
	}
	if n := e.sessionReads(); n != 2 {
		t.Fatalf("got %d session reads, want 2", n)
	}

	// 2. Past the budget: 503 with Retry-After, and Stripe is not asked.
	for _, id := range fakes[2:] {
		if code, status, retry := pageStatus(t, base, id); code != 503 || status != "unavailable" || retry == "" {
			t.Fatalf("%s past the budget: got %d %s Retry-After %q, want 503 unavailable with Retry-After", id, code, status, retry)
		}
	}
	if n := e.sessionReads(); n != 2 {
		t.Fatalf("past the budget: got %d session reads, want still 2", n)
	}

	// 3. An id Stripe did not know is not found again at no cost, budget or not.
	if code, _, _ := pageStatus(t, base, fakes[0]); code != 404 || e.sessionReads() != 2 {
		t.Fatalf("a known-unknown id: got %d after %d reads, want 404 without a read", code, e.sessionReads())
	}

	// 4. The budget refills: the paying customer's page reads its session and shows
	// the key.
	paid := e.checkout(t, stripesim.CheckoutParams{})
	c.Advance(time.Minute)
	if code, status, _ := pageStatus(t, base, paid.Session); code != 200 || status != "ready" {
		t.Fatalf("a paid session once the budget refilled: got %d %s, want 200 ready", code, status)
	}
	if n := e.sessionReads(); n != 3 {
		t.Fatalf("got %d session reads, want 3", n)
	}

	// 5. One warning for the flood, naming no session.
	logs := e.logs.String()
	if n := strings.Count(logs, "too many Checkout Session reads"); n != 1 {
		t.Fatalf("got %d warnings about the budget, want 1:\n%s", n, logs)
	}
	for _, id := range append(fakes, paid.Session) {
		if strings.Contains(logs, id) {
			t.Fatalf("the log names session %s:\n%s", id, logs)
		}
	}
}

// The ids Stripe did not know are remembered for NotFoundFor, at most NotFoundMax of
// them, the oldest forgotten first.
func TestSessionReadsRemembersUnknownIdsBounded(t *testing.T) {
	t.Parallel()
	e := setup(t)
	c := &clock{now: t0}
	base := e.budgetPage(t, delivery.SessionBudget{PerSecond: 1000, NotFoundFor: time.Minute, NotFoundMax: 2, Now: c.Now})
	read := func(id string, wantRead bool) {
		t.Helper()
		before := e.sessionReads()
		if code, _, _ := pageStatus(t, base, id); code != 404 {
			t.Fatalf("%s: got %d, want 404", id, code)
		}
		if read := e.sessionReads() > before; read != wantRead {
			t.Fatalf("%s: Stripe asked %v, want %v", id, read, wantRead)
		}
	}
	read("cs_test_a", true)
	read("cs_test_b", true)
	read("cs_test_b", false)
	read("cs_test_c", true) // the third: a, the oldest, is forgotten
	read("cs_test_c", false)
	read("cs_test_a", true)
	c.Advance(time.Minute) // every id is forgotten
	read("cs_test_c", true)
}
