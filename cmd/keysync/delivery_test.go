package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/smtpsim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// keysync serve with e-mail on, as a vendor runs it: a customer lands on the license
// page from Checkout before any webhook (none is configured to arrive) and the page's
// Sync makes the key, named after the Stripe product; the new key is e-mailed once, by
// the jobs serve runs; the lost-keys form mails it again. No line the customer side
// logs names the key, and the SMTP password is never printed.
func TestServeLicensePageAndEmail(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	// The simulators' clock starts at this host's (production's case): the page judges
	// a session's age on keysync's clock, which follows Cryptolens' only once it has
	// answered.
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	price := world.Price("Acme Pro", 1000, `{"F1":true,"MaxNoOfMachines":2}`)
	smtp := smtpsim.Start(t, smtpsim.Options{Username: "shop", Password: "smtp-secret-pw"})
	srv := startServe(t, env(map[string]string{
		"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "CRYPTOLENS_TOKEN": simtest.CryptolensToken,
		"STRIPE_API_BASE": world.StripeURL, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_LISTEN": "127.0.0.1:0",
		"LOG_FORMAT": "json", "STRIPE_WEBHOOK_SECRETS": "whsec_never_used", "KEYSYNC_SMTP_URL": smtp.URL(),
		"KEYSYNC_EMAIL_FROM": "Acme <shop@acme.example>", "KEYSYNC_PORTAL_URL": "https://billing.acme.example/portal",
	}))
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// The catch-up and the sweep at start are done, and neither comes again for
	// minutes: only the page can make the key.
	pgtest.WaitFor(t, 30*time.Second, "the catch-up and the sweep at start", func() bool {
		var n int
		_ = pool.QueryRow(context.Background(), `SELECT count(DISTINCT kind) FROM sync_runs WHERE finished_at IS NOT NULL`).Scan(&n)
		return n == 2
	})
	res, err := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Name: "Ada", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil {
		t.Fatal(err)
	}

	// The page, as JSON.
	req, _ := http.NewRequest("GET", srv.base+"/license?session_id="+res.Session, nil)
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var page struct {
		Status   string `json:"status"`
		Portal   string `json:"portal_url"`
		Licenses []struct {
			Key      string `json:"key"`
			Product  string `json:"product"`
			Machines int    `json:"machines"`
		} `json:"licenses"`
	}
	if err := json.Unmarshal(body, &page); err != nil || resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("got %d %s (%v), want 200 JSON, no-store", resp.StatusCode, body, err)
	}
	keys := world.Crypto.Keys(simtest.Product)
	if len(keys) != 1 || keys[0].Notes != syncer.Marker(res.Subscription) {
		t.Fatalf("got keys %+v, want the one the page's Sync made", keys)
	}
	key := keys[0].Key
	if page.Status != "ready" || len(page.Licenses) != 1 || page.Licenses[0].Key != key || page.Licenses[0].Product != "Acme Pro" ||
		page.Licenses[0].Machines != 2 || page.Portal != "https://billing.acme.example/portal" {
		t.Fatalf("got %s, want the key named after the Stripe product, with the portal", body)
	}
	var cause string
	if err := pool.QueryRow(context.Background(), `SELECT cause || ':' || cause_id FROM audit_log WHERE action = 'create_key'`).Scan(&cause); err != nil ||
		cause != "customer:"+res.Session {
		t.Fatalf("got create_key cause %q (%v), want the customer's page", cause, err)
	}

	// The new key's e-mail, once, sent by the jobs serve runs.
	m := smtp.Wait(t, 1, 30*time.Second)[0]
	if m.To[0] != "ada@example.com" || m.Header().Get("Subject") != "Your license key for Acme Pro" || !strings.Contains(m.Part("text/plain"), key) {
		t.Fatalf("got a message to %v, %q:\n%s\nwant the key's", m.To, m.Header().Get("Subject"), m.Part("text/plain"))
	}
	pgtest.WaitFor(t, 20*time.Second, "the e-mail recorded as sent", func() bool {
		var status string
		_ = pool.QueryRow(context.Background(), `SELECT status FROM key_emails WHERE license_key = $1`, key).Scan(&status)
		return status == "sent"
	})

	// The lost-keys form: answered at once, mailed by a job.
	resp, err = http.Post(srv.base+"/license/resend", "application/x-www-form-urlencoded", strings.NewReader("email=ada%40example.com"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("lost-keys form: got %d, want 202", resp.StatusCode)
	}
	msgs := smtp.Wait(t, 2, 30*time.Second)
	if msgs[1].Header().Get("Subject") != "Your license keys" || !strings.Contains(msgs[1].Part("text/plain"), key) {
		t.Fatalf("got %q, want the lost-keys message with the key", msgs[1].Header().Get("Subject"))
	}
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(smtp.Messages()); n != 2 {
		t.Fatalf("got %d messages, want the new key's and the lost-keys one", n)
	}

	// The logs: the customer side never names the key; the SMTP password never shows.
	logs := srv.logs.String()
	if strings.Contains(logs, "smtp-secret-pw") || !strings.Contains(logs, `"KEYSYNC_SMTP_URL":"smtp://shop:xxxxx@`) {
		t.Fatal("the logs leak the SMTP password, or do not print KEYSYNC_SMTP_URL masked")
	}
	lines := 0
	for line := range strings.SplitSeq(strings.TrimSpace(logs), "\n") {
		var l struct {
			Component string `json:"component"`
		}
		_ = json.Unmarshal([]byte(line), &l)
		if l.Component == "license" || l.Component == "email" {
			lines++
			if strings.Contains(line, key) {
				t.Fatalf("a %s log line names the key: %s", l.Component, line)
			}
		}
	}
	if lines == 0 {
		t.Fatal("the customer side logged nothing: the check above proves nothing")
	}
}

// keysync serve with e-mail on, and Stripe's webhooks late (held), as they often are: a
// customer who bought a one-time price lands on the license page, whose Sync makes the
// perpetual key (named after the Stripe product, no expiry); when the webhooks arrive,
// their Sync finds nothing left to do. The key is e-mailed once, and the e-mail's audit
// row names the purchase.
func TestServeLicensePageOfAPurchase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	prod := world.Stripe.CreateProduct("Acme Lifetime", map[string]string{"skm_product_id": "1001"})
	price, err := world.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 19900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F3":true,"MaxNoOfMachines":4}`}})
	if err != nil {
		t.Fatal(err)
	}
	smtp := smtpsim.Start(t, smtpsim.Options{})
	srv := startServe(t, env(map[string]string{
		"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "CRYPTOLENS_TOKEN": simtest.CryptolensToken,
		"STRIPE_API_BASE": world.StripeURL, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_LISTEN": "127.0.0.1:0",
		"LOG_FORMAT": "json", "STRIPE_WEBHOOK_SECRETS": "whsec_purchase_test", "KEYSYNC_SMTP_URL": smtp.URL(),
		"KEYSYNC_EMAIL_FROM": "Acme <shop@acme.example>",
	}))
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	count := func(query string, args ...any) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, query, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// The catch-up and the sweep at start are done; the webhooks wait.
	pgtest.WaitFor(t, 30*time.Second, "the catch-up and the sweep at start", func() bool {
		return count(`SELECT count(DISTINCT kind) FROM sync_runs WHERE finished_at IS NOT NULL`) == 2
	})
	world.Stripe.HoldWebhooks(true)
	world.Stripe.AddEndpoint(srv.base+"/webhooks/stripe", stripesim.EndpointOptions{Secrets: []string{"whsec_purchase_test"}})
	res, err := world.Stripe.CheckoutPayment(stripesim.PaymentParams{Email: "grace@example.com", Name: "Grace", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil || !res.Completed {
		t.Fatalf("checkout: %+v, %v", res, err)
	}

	// The page, as JSON, before any webhook.
	req, _ := http.NewRequest("GET", srv.base+"/license?session_id="+res.Session, nil)
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var page struct {
		Status   string `json:"status"`
		Licenses []struct {
			Key       string     `json:"key"`
			Product   string     `json:"product"`
			Expires   *time.Time `json:"expires"`
			Perpetual bool       `json:"perpetual"`
			Machines  int        `json:"machines"`
		} `json:"licenses"`
	}
	if err := json.Unmarshal(body, &page); err != nil || resp.StatusCode != 200 {
		t.Fatalf("got %d %s (%v), want 200 JSON", resp.StatusCode, body, err)
	}
	keys := world.Crypto.Keys(simtest.Product)
	if len(keys) != 1 || keys[0].Notes != syncer.Marker(res.Session) || keys[0].Features != [8]bool{2: true} {
		t.Fatalf("got keys %+v, want the purchase's, F3 alone (F1, the time-limited feature, off)", keys)
	}
	key := keys[0].Key
	if page.Status != "ready" || len(page.Licenses) != 1 || page.Licenses[0].Key != key || page.Licenses[0].Product != "Acme Lifetime" ||
		!page.Licenses[0].Perpetual || page.Licenses[0].Expires != nil || page.Licenses[0].Machines != 4 {
		t.Fatalf("got %s, want the perpetual key named after the Stripe product, 4 machines", body)
	}
	if n := count(`SELECT count(*) FROM stripe_events`); n != 0 {
		t.Fatalf("got %d events stored before the webhooks were released, want none: the page made the key alone", n)
	}
	if n := count(`SELECT count(*) FROM audit_log WHERE action = 'create_key' AND purchase_id = $1 AND cause = 'customer' AND cause_id = $1`, res.Session); n != 1 {
		t.Fatalf("got %d create_key rows of the purchase caused by its page, want 1", n)
	}

	// The webhooks arrive: every event is worked, and their Sync does nothing.
	world.Stripe.HoldWebhooks(false)
	flushCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := world.Stripe.FlushWebhooks(flushCtx); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 30*time.Second, "the purchase's events worked", func() bool {
		return count(`SELECT count(*) FROM stripe_events WHERE type = 'checkout.session.completed' AND status = 'processed'`) == 1 &&
			count(`SELECT count(*) FROM stripe_events WHERE status NOT IN ('processed', 'ignored')`) == 0
	})
	if n := world.Crypto.CallCount("CreateKey"); n != 1 {
		t.Fatalf("got %d CreateKey calls, want the page's alone", n)
	}
	if n := count(`SELECT count(*) FROM audit_log WHERE purchase_id = $1 AND action <> 'email_key' AND cause <> 'customer'`, res.Session); n != 0 {
		t.Fatalf("the webhooks' Sync wrote %d audit rows, want none: nothing was left to do", n)
	}

	// The key's e-mail, once, audited with the purchase.
	m := smtp.Wait(t, 1, 30*time.Second)[0]
	if m.To[0] != "grace@example.com" || m.Header().Get("Subject") != "Your license key for Acme Lifetime" ||
		!strings.Contains(m.Part("text/plain"), key) || !strings.Contains(m.Part("text/plain"), "perpetual") {
		t.Fatalf("got a message to %v, %q, want the perpetual key's", m.To, m.Header().Get("Subject"))
	}
	pgtest.WaitFor(t, 20*time.Second, "the e-mail audited", func() bool {
		return count(`SELECT count(*) FROM audit_log WHERE action = 'email_key' AND outcome = 'applied' AND purchase_id = $1
			AND subscription_id IS NULL AND license_key = $2`, res.Session, key) == 1
	})
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(smtp.Messages()); n != 1 {
		t.Fatalf("got %d messages, want the new key's alone", n)
	}
}

// The customer side's settings: defaults, e-mail needs both server and sender, a
// template that does not render stops start-up naming the file, and the SMTP URL is a
// secret (read from a file too).
func TestDeliveryConfig(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(env(map[string]string{"DATABASE_URL": validDB}), noFiles)
	if err != nil || c.LicensePageMaxAge != 7*24*time.Hour || c.LicenseRateLimit != 30 || c.SMTP != nil || c.LicenseTemplate != nil {
		t.Fatalf("defaults: got %+v, %v", c, err)
	}
	_, err = loadConfig(env(map[string]string{"DATABASE_URL": validDB, "KEYSYNC_SMTP_URL": "smtp://u:pw-123@mail.example.com"}), noFiles)
	if err == nil || !strings.Contains(err.Error(), "KEYSYNC_EMAIL_FROM") || strings.Contains(err.Error(), "pw-123") {
		t.Fatalf("server without sender: got %v", err)
	}
	bad := filepath.Join(t.TempDir(), "license.html")
	if err := os.WriteFile(bad, []byte("{{range .Licenses}}{{.Serial}}{{end}}"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = run(t.Context(), []string{"serve"}, env(map[string]string{"DATABASE_URL": validDB, "KEYSYNC_LICENSE_TEMPLATE": bad}), io.Discard, io.Discard, nil)
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "KEYSYNC_LICENSE_TEMPLATE") || !strings.Contains(err.Error(), "license.html") {
		t.Fatalf("a template that does not render: got %v, want a usage error naming the variable and the file", err)
	}
	files := func(p string) ([]byte, error) {
		if p == "/run/secrets/smtp" {
			return []byte("smtps://shop:pw-456@mail.example.com\n"), nil
		}
		return nil, os.ErrNotExist
	}
	vars := map[string]string{"DATABASE_URL": validDB, "KEYSYNC_SMTP_URL_FILE": "/run/secrets/smtp", "KEYSYNC_EMAIL_FROM": "shop@example.com"}
	c, err = loadConfig(env(vars), files)
	if err != nil || c.SMTP == nil || c.SMTP.Password != "pw-456" || c.SMTP.Port != 465 {
		t.Fatalf("from a file: got %+v, %v", c.SMTP, err)
	}
	vars = map[string]string{"KEYSYNC_SMTP_URL": "smtp://shop:pw-789@mail.example.com:587"}
	var buf bytes.Buffer
	logConfig(zerolog.New(&buf), env(vars))
	if strings.Contains(buf.String(), "pw-789") || !strings.Contains(buf.String(), `"KEYSYNC_SMTP_URL":"smtp://shop:xxxxx@mail.example.com:587"`) {
		t.Fatalf("config line: %s", buf.String())
	}
}
