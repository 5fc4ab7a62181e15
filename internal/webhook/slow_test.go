package webhook_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/clientip"
	"github.com/keysync/keysync/internal/pgtest"
	wh "github.com/keysync/keysync/internal/webhook"
)

// slowSender opens a delivery to b's server as client (X-Client), with a fresh,
// well-formed signature header and a declared body of 64 KiB of which it sends a few bytes, and
// then nothing: it holds its share of the budget while the handler waits for the rest.
func (b *bundle) slowSender(t *testing.T, client string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", b.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nX-Client: %s\r\nStripe-Signature: t=%d,v1=%s\r\nContent-Length: 65536\r\n\r\n{\"id\":",
		client, time.Now().Unix(), strings.Repeat("0", 64))
	return conn
}

// postAs posts a signed delivery of body as client and returns its status and answer.
func (b *bundle) postAs(t *testing.T, client string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.server.URL, bytes.NewReader(body))
	req.Header.Set("Stripe-Signature", sign(body, secret1, time.Now(), ""))
	req.Header.Set("X-Client", client)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// Senders that trickle their bodies hold the budget for BodyTimeout at most, not for
// the server's read timeout: they are answered 408, their shares come back, and
// Stripe's delivery is stored.
func TestSlowBodiesTimeOut(t *testing.T) {
	t.Parallel()
	// Long enough that a loaded machine sees the senders hold the budget before their
	// time is up (the first wait below has this long).
	const timeout = 5 * time.Second
	b := setup(t, options{config: func(c *wh.Config) {
		c.MaxBody, c.BodyBudget, c.ClientBudget, c.BodyTimeout = 64<<10, 128<<10, 128<<10, timeout
		c.ClientIP = clientip.FromRequest("X-Client")
	}})

	// 1. Two slow senders, from two clients, hold the whole budget.
	slow := []net.Conn{b.slowSender(t, "192.0.2.1"), b.slowSender(t, "192.0.2.2")}
	body := event("evt_after_slow", "invoice.paid", "2023-10-16")
	pgtest.WaitFor(t, timeout, "the slow senders to hold the budget", func() bool {
		got, _ := b.postAs(t, "203.0.113.1", body)
		return got == http.StatusServiceUnavailable
	})

	// 2. Once their time is up, the budget is free: Stripe's retry is stored.
	held := time.Now()
	pgtest.WaitFor(t, 4*timeout, "the slow senders' shares to come back", func() bool {
		got, _ := b.postAs(t, "203.0.113.1", body)
		return got == http.StatusOK
	})
	if n := b.events(t); n != 1 {
		t.Fatalf("got %d events stored, want 1", n)
	}
	t.Logf("the budget came back %s after it was found held", time.Since(held).Round(time.Millisecond))

	// 3. Each slow sender was told why.
	for i, conn := range slow {
		_ = conn.SetReadDeadline(time.Now().Add(timeout))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("slow sender %d: %v, want an answer", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("slow sender %d: got %d, want 408", i, resp.StatusCode)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.outcomes["too_slow"] != 2 {
		t.Fatalf("got outcomes %v, want 2 too_slow", b.outcomes)
	}
}

// One client holds at most its share of the budget: its further deliveries are turned
// away (503, Retry-After) while another client's, Stripe's, are read and stored.
func TestOneClientHoldsItsShareOnly(t *testing.T) {
	t.Parallel()
	b := setup(t, options{config: func(c *wh.Config) {
		c.MaxBody, c.BodyBudget, c.ClientBudget = 64<<10, 1<<20, 128<<10
		c.ClientIP = clientip.FromRequest("X-Client")
	}})

	// 1. The client's two slow bodies fill its share; a third delivery of its own is
	// turned away, whatever its signature.
	b.slowSender(t, "2001:db8::1")
	b.slowSender(t, "2001:db8::2") // the same /64: the same client
	body := event("evt_share", "invoice.paid", "2023-10-16")
	pgtest.WaitFor(t, 10*time.Second, "the client's share to be held", func() bool {
		got, answer := b.postAs(t, "2001:db8::3", body)
		return got == http.StatusServiceUnavailable && strings.Contains(answer, "from this client")
	})

	// 2. Another client is read and stored at once: the budget is far from spent.
	if got, answer := b.postAs(t, "198.51.100.7", body); got != http.StatusOK {
		t.Fatalf("another client: got %d %s, want 200", got, answer)
	}
	if n := b.events(t); n != 1 {
		t.Fatalf("got %d events stored, want 1", n)
	}
}
