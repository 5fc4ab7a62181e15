package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

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

// Behind a proxy (KEYSYNC_CLIENT_IP_HEADER), one sender of slow bodies holds at most a
// quarter of the webhook body budget while another sender's delivery is stored, and its
// bodies are cut off after 10 s (408), not the server's 30 s read timeout.
func TestServeWebhookSlowSender(t *testing.T) {
	t.Parallel()
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	const secret = "whsec_slow_sender_test"
	srv := startServe(t, env(map[string]string{
		"DATABASE_URL": pgtest.URL(t), "STRIPE_API_KEY": simtest.StripeKey, "CRYPTOLENS_TOKEN": simtest.CryptolensToken,
		"STRIPE_API_BASE": world.StripeURL, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_LISTEN": "127.0.0.1:0",
		"LOG_FORMAT": "json", "LOG_LEVEL": "warn", "STRIPE_WEBHOOK_SECRETS": secret, "KEYSYNC_CLIENT_IP_HEADER": "X-Forwarded-For",
	}))
	addr := strings.TrimPrefix(srv.base, "http://")
	post := func(client string) (int, string) {
		t.Helper()
		body := fmt.Appendf(nil, `{"id":"evt_slow_sender","object":"event","type":"test.ping","created":%d,"livemode":false,`+
			`"api_version":"2023-10-16","data":{"object":{}}}`, time.Now().Unix())
		req, _ := http.NewRequest(http.MethodPost, srv.base+"/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret}).Header)
		req.Header.Set("X-Forwarded-For", client)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(answer)
	}

	// 1. Senders of 1 MiB bodies that never come, all one client behind the proxy: four
	// hold a quarter of the 16 MiB budget. Six are sent, since the first probe below may
	// be in flight when one of them arrives, which is then refused as over the share.
	var slow []net.Conn
	sent := time.Now()
	for range 6 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.66\r\n"+
			"Stripe-Signature: t=%d,v1=%s\r\nContent-Length: %d\r\n\r\n{", time.Now().Unix(), strings.Repeat("0", 64), 1<<20)
		slow = append(slow, conn)
	}

	// 2. The client's share is full; another client's delivery is stored.
	var seen []string // what the client's deliveries were answered, for a failure's message
	defer func() {
		if t.Failed() {
			if len(seen) > 3 {
				seen = append(seen[:3], fmt.Sprintf("... %d in all", len(seen)))
			}
			t.Logf("the client's deliveries were answered %v (%s after the slow senders)", seen, time.Since(sent))
			for i, conn := range slow {
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				b, err := io.ReadAll(io.LimitReader(conn, 300))
				t.Logf("slow sender %d was answered %q (%v)", i, b, err)
			}
		}
	}()
	// The probe's signature is well-formed but wrong: refused (400) once its body is read,
	// it holds its part of the client's share for a moment only, not for a Postgres
	// commit, so that it seldom crosses a slow sender's arrival.
	probe := func() (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.base+"/webhooks/stripe", strings.NewReader(`{"id":"evt_probe"}`))
		req.Header.Set("Stripe-Signature", fmt.Sprintf("t=%d,v1=%s", time.Now().Unix(), strings.Repeat("0", 64)))
		req.Header.Set("X-Forwarded-For", "192.0.2.66")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(answer)
	}
	pgtest.WaitFor(t, 10*time.Second, "the slow client's share to be held", func() bool {
		got, answer := probe()
		seen = append(seen, fmt.Sprintf("%d %s", got, strings.TrimSpace(answer)))
		return got == http.StatusServiceUnavailable && strings.Contains(answer, "from this client")
	})
	if got, answer := post("198.51.100.1"); got != http.StatusOK {
		t.Fatalf("another client: got %d %s, want 200", got, answer)
	}

	// 3. The slow bodies held are cut off at the body timeout; the others were refused.
	cut := 0
	for i, conn := range slow {
		_ = conn.SetReadDeadline(sent.Add(28 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("slow sender %d: %v after %s, want an answer", i, err, time.Since(sent))
		}
		resp.Body.Close()
		switch took := time.Since(sent); {
		case resp.StatusCode == http.StatusServiceUnavailable:
		case resp.StatusCode != http.StatusRequestTimeout || took > 20*time.Second:
			t.Fatalf("slow sender %d: got %d after %s, want 408 after about 10 s (the server reads for 30 s)", i, resp.StatusCode, took)
		default:
			cut++
		}
	}
	if cut != 4 {
		t.Fatalf("%d slow senders were held and cut off, want 4: a quarter of the budget", cut)
	}
}
