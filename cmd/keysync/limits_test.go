package main

import (
	"fmt"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/testbed/simtest"
)

// A flood of made-up session ids from many clients, each within its own limit, reads
// Checkout Sessions from Stripe no faster than a quarter of STRIPE_RATE_LIMIT: past
// that the page answers 503 with Retry-After and leaves Stripe's rate to the Syncs.
func TestServeLicensePageStripeBudget(t *testing.T) {
	t.Parallel()
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	srv := startServe(t, env(map[string]string{
		"DATABASE_URL": pgtest.URL(t), "STRIPE_API_KEY": simtest.StripeKey, "CRYPTOLENS_TOKEN": simtest.CryptolensToken,
		"STRIPE_API_BASE": world.StripeURL, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_LISTEN": "127.0.0.1:0",
		"LOG_FORMAT": "json", "LOG_LEVEL": "warn", "STRIPE_RATE_LIMIT": "4", "KEYSYNC_CLIENT_IP_HEADER": "X-Forwarded-For",
	}))
	const route = "GET /v1/checkout/sessions/{id}"
	before := world.Stripe.Requests()[route]

	start := time.Now()
	answers := map[int]int{}
	const flood = 20
	for i := range flood {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/license?session_id=cs_test_madeUp%d", srv.base, i), nil)
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		answers[resp.StatusCode]++
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
			t.Fatal("503 without Retry-After")
		}
	}
	took := time.Since(start)

	// A quarter of 4 a second: one at once, one more each second.
	reads := world.Stripe.Requests()[route] - before
	most := 1 + int(math.Ceil(took.Seconds()))
	if reads > most || answers[http.StatusNotFound] != reads || answers[http.StatusServiceUnavailable] != flood-reads {
		t.Fatalf("%d made-up ids in %s: %d session reads, answers %v; want at most %d reads, each a 404, the rest 503",
			flood, took, reads, answers, most)
	}
}
