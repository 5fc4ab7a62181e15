package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// withPassword adds a password to the test database's URL. The local server trusts
// loopback connections, so the password is ignored, but keysync must never print it.
func withPassword(raw, pw string) string {
	u, _ := url.Parse(raw)
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String()
}

// TestServeLifecycle starts keysync on an empty database, as a first deployment does,
// and follows one event from webhook to processed, then shuts down on cancellation.
// serving is a `keysync serve` that a test runs in-process.
type serving struct {
	base  string        // http://host:port of its public listener
	admin string        // http://host:port of its admin listener ("" when off)
	logs  *lockedBuffer // everything it logged
	// stop cancels serve and returns what it returned, waiting at most 40 s; a second
	// call returns the same. The test's cleanup calls it too.
	stop func() error
}

// startServe runs `keysync serve` with vars until the test ends (or stop), and returns
// once it listens; it fails t if serve exits or has not started within 30 s. Both
// listeners take a free loopback port unless vars names one (or the admin one off).
func startServe(t *testing.T, vars func(string) string) serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrCh, done := make(chan serveAddrs, 1), make(chan error, 1)
	logs := &lockedBuffer{}
	getenv := func(k string) string {
		if v := vars(k); v != "" || (k != "KEYSYNC_LISTEN" && k != "KEYSYNC_ADMIN_LISTEN") {
			return v
		}
		return "127.0.0.1:0"
	}
	go func() {
		done <- run(ctx, []string{"serve"}, getenv, io.Discard, logs, func(a serveAddrs) { addrCh <- a })
	}()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(40 * time.Second):
				stopErr = errors.New("serve did not stop within 40s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case a := <-addrCh:
		srv := serving{base: "http://" + a.Public, logs: logs, stop: stop}
		if a.Admin != "" {
			srv.admin = "http://" + a.Admin
		}
		return srv
	case err := <-done:
		cancel()
		t.Fatalf("serve exited early: %v\n%s", err, logs)
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not start\n%s", logs)
	}
	return serving{}
}

func TestServeLifecycle(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.EmptyURL(t)
	world := simtest.New(t, simtest.Options{StripeKey: "sk_test_stripe_secret_value", CryptolensToken: "cryptolens_secret_value"})
	ssim, csim := world.Stripe, world.Crypto
	prod := ssim.CreateProduct("App", nil)
	price, _ := ssim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 1000})
	checkout, _ := ssim.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	var subCreated []byte
	for _, ev := range ssim.Events() {
		if ev.Type == "customer.subscription.created" {
			subCreated = ev.Payload
		}
	}
	plans := filepath.Join(t.TempDir(), "plans.yaml")
	if err := os.WriteFile(plans, []byte("plans:\n  - price: "+price+"\n    features: [2]\n    machines_per_seat: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"DATABASE_URL":           withPassword(dbURL, "db-secret-pw"),
		"STRIPE_WEBHOOK_SECRETS": "whsec_old_secret_value,whsec_new_secret_value",
		"STRIPE_API_KEY":         "sk_test_stripe_secret_value",
		"CRYPTOLENS_TOKEN":       "cryptolens_secret_value",
		"KEYSYNC_ADMIN_TOKEN":    "admin_secret_value_0123456789",
	}
	vars := map[string]string{"KEYSYNC_LISTEN": "127.0.0.1:0", "LOG_FORMAT": "json", "LOG_LEVEL": "debug",
		"STRIPE_API_BASE": world.StripeURL, "CRYPTOLENS_API_BASE": world.CryptolensURL, "CRYPTOLENS_PRODUCT_ID": "1001", "KEYSYNC_PLANS_FILE": plans}
	for k, v := range secrets {
		vars[k] = v
	}
	srv := startServe(t, env(vars))
	base, logs := srv.base, srv.logs

	for url, want := range map[string]string{base + "/healthz": `"ok"`, base + "/readyz": `"ready"`, srv.admin + "/metrics": "go_goroutines"} {
		code, body := get(t, url)
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("GET %s: got %d %s, want 200 with %s", url, code, body, want)
		}
	}

	body := subCreated
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: "whsec_new_secret_value"})
	resp, err := http.Post(base+"/webhooks/stripe", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("unsigned: got %d, want 400", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/stripe", bytes.NewReader(body))
	req.Header.Set("Stripe-Signature", sig.Header)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("signed: got %d, want 200", resp.StatusCode)
	}

	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	pgtest.WaitFor(t, 20*time.Second, "the event job to run", func() bool {
		var status string
		_ = pool.QueryRow(context.Background(), `SELECT status FROM stripe_events WHERE type = 'customer.subscription.created'`).Scan(&status)
		return status == "processed"
	})
	// The event made the key: the plans file's features (and F1, the time-limited
	// feature by default) and per-seat machines.
	keys := csim.Keys(1001)
	if len(keys) != 1 || keys[0].Features != [8]bool{true, true} || keys[0].MaxNoOfMachines != 3 || keys[0].Notes != syncer.Marker(checkout.Subscription) {
		t.Fatalf("got keys %+v, want one key from the plans file", keys)
	}

	// Every metric family, with the counts of this lifecycle: one stored event, one
	// unsigned delivery, one key created.
	pgtest.WaitFor(t, 20*time.Second, "the catch-up at start", func() bool {
		var n int
		_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM sync_runs WHERE kind = 'catch_up' AND finished_at IS NOT NULL`).Scan(&n)
		return n > 0
	})
	_, metricsText := get(t, srv.admin+"/metrics")
	for _, want := range []string{
		`keysync_webhooks_total{outcome="stored",type="customer.subscription.created"} 1`,
		`keysync_webhooks_total{outcome="bad_signature",type=""} 1`,
		`keysync_webhook_ingest_seconds_count 2`,
		`keysync_event_to_applied_seconds_count 1`,
		`keysync_actions_total{kind="create_key",outcome="applied"} 1`,
		`keysync_cryptolens_calls_total{method="CreateKey",outcome="ok"} 1`,
		`keysync_cryptolens_call_seconds_count{method="CreateKey"} 1`,
		`keysync_stripe_calls_total{outcome="2xx",route="GET /v1/subscriptions/{id}"}`,
		`keysync_stripe_call_seconds_count{route="GET /v1/events"}`,
		`keysync_jobs{state="completed"}`,
		`keysync_oldest_pending_event_age_seconds 0`,
		`keysync_catchup_cursor_age_seconds`,
		`keysync_sweep_drifted `, // the sweep at start may run before or after the webhook's Sync
		`keysync_sweep_orphans 0`,
		`keysync_sweep_duration_seconds`,
		`keysync_last_sweep_age_seconds `,
		`keysync_sweep_overdue 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(metricsText, want) {
			t.Fatalf("/metrics lacks %s", want)
		}
	}

	if err := srv.stop(); err != nil {
		t.Fatalf("serve returned %v, want nil after a clean shutdown", err)
	}

	out := logs.String()
	for name, secret := range secrets {
		if name == "DATABASE_URL" {
			secret = "db-secret-pw"
		}
		if strings.Contains(out, secret) {
			t.Fatalf("logs contain the value of %s:\n%s", name, out)
		}
	}
	for _, want := range []string{`"message":"configuration"`, `"message":"keysync serving"`, `"message":"stopped"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("logs lack %s:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("log line is not JSON: %s", line)
		}
	}
}

func TestServeRefusesBadPlansFile(t *testing.T) {
	t.Parallel()
	plans := filepath.Join(t.TempDir(), "plans.yaml")
	_ = os.WriteFile(plans, []byte("plans:\n  - price: price_1\n    cryptolens_product: 1\n    features: [9]\n"), 0o600)
	err := run(t.Context(), []string{"serve"}, env(map[string]string{"DATABASE_URL": validDB, "KEYSYNC_PLANS_FILE": plans,
		"STRIPE_API_KEY": "sk_test_x", "CRYPTOLENS_TOKEN": "t"}), io.Discard, io.Discard, nil)
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "plans.yaml:4: feature 9 does not exist") {
		t.Fatalf("got %v, want a usage error naming plans.yaml:4", err)
	}
	err = run(t.Context(), []string{"serve"}, env(map[string]string{"DATABASE_URL": validDB}), io.Discard, io.Discard, nil)
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "STRIPE_API_KEY and CRYPTOLENS_TOKEN") {
		t.Fatalf("got %v, want a usage error naming the missing credentials", err)
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	t.Parallel()
	tests := map[string]struct{ name, value string }{
		"buffer": {"KEYSYNC_BUFFER_DAYS", "many"},
		// Cryptolens products have features 1 to 8: a key marked time-limited by a
		// feature that does not exist would never expire.
		"time-limited feature": {"CRYPTOLENS_TIME_LIMITED_FEATURE", "9"},
		"paused collection":    {"KEYSYNC_ON_PAUSED_COLLECTION", "ignore"},
	}
	for name, tc := range tests {
		vars := map[string]string{"DATABASE_URL": validDB, "STRIPE_API_KEY": "sk_test_x", "CRYPTOLENS_TOKEN": "t", tc.name: tc.value}
		err := run(t.Context(), []string{"serve"}, env(vars), io.Discard, io.Discard, nil)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s: got %v, want a configuration error naming %s", name, err, tc.name)
		}
	}
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.EmptyURL(t)
	var out bytes.Buffer
	vars := env(map[string]string{"DATABASE_URL": dbURL, "LOG_FORMAT": "json", "LOG_LEVEL": "warn"})
	if err := run(t.Context(), []string{"migrate", "status"}, vars, &out, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "schema: pending") {
		t.Fatalf("status before: got %q, want pending", out.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"migrate"}, vars, &out, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "schema: current") {
		t.Fatalf("up: got %q, want current", out.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"migrate", "status"}, vars, &out, io.Discard, nil); err != nil || !strings.Contains(out.String(), "schema: current") {
		t.Fatalf("status after: got %v %q, want current", err, out.String())
	}
	err := run(t.Context(), []string{"migrate", "sideways"}, vars, &out, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "up or status") {
		t.Fatalf("got %v, want a usage error", err)
	}
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, fmt.Sprint(string(b))
}

func TestReconcileOnce(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	world := simtest.New(t, simtest.Options{})
	price := world.Price("App", 1000, `{"F1":true}`)
	res, _ := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	orphan, _ := world.Crypto.PutKey(cryptolenssim.Key{ProductID: simtest.Product, Notes: syncer.Marker("sub_gone")})
	vars := env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
	var out bytes.Buffer
	if err := run(t.Context(), []string{"reconcile", "--once"}, vars, &out, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"1 subscriptions scanned", "1 drifted", "drift   " + res.Subscription + ": create_key", "orphan  " + orphan.Key, "1 Syncs queued"} {
		if !strings.Contains(got, want) {
			t.Fatalf("output lacks %q:\n%s", want, got)
		}
	}
	pool, _ := pgxpool.New(context.Background(), dbURL)
	defer pool.Close()
	var n int
	_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM river_job WHERE kind = 'sync_subscription' AND args->>'subscription' = $1`, res.Subscription).Scan(&n)
	if n != 1 {
		t.Fatalf("got %d queued Syncs, want 1", n)
	}
	if err := run(t.Context(), []string{"reconcile"}, vars, &out, io.Discard, nil); !errors.Is(err, errUsage) {
		t.Fatalf("without --once: got %v, want a usage error", err)
	}
}

// Polling mode: no webhook secret, so no webhook route; the catch-up that runs at start
// reads the Events API and the key appears all the same.
func TestServePollingMode(t *testing.T) {
	t.Parallel()
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	price := world.Price("App", 1000, `{"F4":true}`)
	res, _ := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "p@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	vars := env(map[string]string{"DATABASE_URL": pgtest.URL(t), "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_LISTEN": "127.0.0.1:0",
		"LOG_FORMAT": "json", "LOG_LEVEL": "warn"})
	srv := startServe(t, vars)
	base, logs := srv.base, srv.logs
	resp, err := http.Post(base+"/webhooks/stripe", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("webhook route in polling mode: got %d, want 404", resp.StatusCode)
	}
	pgtest.WaitFor(t, 30*time.Second, "the key from the Events API", func() bool {
		keys := world.Crypto.Keys(simtest.Product)
		return len(keys) == 1 && keys[0].Notes == syncer.Marker(res.Subscription) && keys[0].Features[3]
	})
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, "catch_up_lag") {
		t.Fatalf("readyz: got %d %s, want the catch-up lag", code, body)
	}
	if !strings.Contains(logs.String(), "polling mode") {
		t.Fatalf("logs do not say polling mode:\n%s", logs)
	}
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestStatusAndSyncCommands(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	world := simtest.New(t, simtest.Options{})
	price := world.Price("App", 1000, `{"F2":true,"MaxNoOfMachines":3}`)
	res, _ := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "s@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	vars := env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
	cmd := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(t.Context(), args, vars, &out, io.Discard, nil); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String()
	}
	status := cmd("status", res.Subscription)
	for _, want := range []string{"Stripe", "status active", "paid through", "entitled through", "no mapping row yet", "Cryptolens", "no key",
		"policy", "F1+F2", "3", "create_key"} {
		if !strings.Contains(status, want) {
			t.Fatalf("status lacks %q:\n%s", want, status)
		}
	}
	if out := cmd("sync", res.Subscription, "--dry-run"); !strings.Contains(out, "dry run: nothing sent") || len(world.Crypto.Keys(simtest.Product)) != 0 {
		t.Fatalf("sync --dry-run: got %q and %d keys", out, len(world.Crypto.Keys(simtest.Product)))
	}
	if out := cmd("sync", res.Subscription); !strings.Contains(out, "create_key") || len(world.Crypto.Keys(simtest.Product)) != 1 {
		t.Fatalf("sync: got %q and %d keys", out, len(world.Crypto.Keys(simtest.Product)))
	}
	if out := cmd("status", res.Subscription); !strings.Contains(out, "would change nothing") {
		t.Fatalf("status after the sync:\n%s", out)
	}
	if out := cmd("audit", "--subscription", res.Subscription, "--cause", "operator", "--format", "csv"); strings.Count(out, "create_key") != 2 {
		t.Fatalf("audit: want the dry-run and the applied create_key by the operator:\n%s", out)
	}
	if err := run(t.Context(), []string{"sync"}, vars, io.Discard, io.Discard, nil); !errors.Is(err, errUsage) {
		t.Fatalf("sync without a subscription: got %v", err)
	}
}

// A request header is held to 32 KiB (431 beyond), not net/http's 1 MiB: connections that
// never finish their headers cannot hold a megabyte each.
func TestServeBoundsRequestHeaders(t *testing.T) {
	t.Parallel()
	world := simtest.New(t, simtest.Options{Start: time.Now()})
	vars := env(map[string]string{"DATABASE_URL": pgtest.URL(t), "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_LISTEN": "127.0.0.1:0",
		"STRIPE_WEBHOOK_SECRETS": "whsec_header_test", "LOG_FORMAT": "json", "LOG_LEVEL": "warn"})
	srv := startServe(t, vars)
	for size, want := range map[int]int{16 << 10: http.StatusOK, 64 << 10: http.StatusRequestHeaderFieldsTooLarge} {
		req, err := http.NewRequest(http.MethodGet, srv.base+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Pad", strings.Repeat("a", size))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("header of %d bytes: got %d, want %d", size, resp.StatusCode, want)
		}
	}
}

// status, sync and audit take a one-time purchase's id (a Checkout Session or an
// invoice) as they take a subscription's.
func TestStatusSyncAndAuditOfAPurchase(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	world := simtest.New(t, simtest.Options{})
	prod := world.Stripe.CreateProduct("Lifetime", map[string]string{"skm_product_id": "1001"})
	price, _ := world.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 19900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F2":true,"MaxNoOfMachines":3}`}})
	res, _ := world.Stripe.CheckoutPayment(stripesim.PaymentParams{Email: "s@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	vars := env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
	cmd := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(t.Context(), args, vars, &out, io.Discard, nil); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String()
	}
	status := cmd("status", res.Session)
	for _, want := range []string{"purchase", res.Session, "payment paid", "no purchase row yet", "no key in product 1001",
		"never (perpetual)", "features F2,", "machines 3", "create_key"} {
		if !strings.Contains(status, want) {
			t.Fatalf("status lacks %q:\n%s", want, status)
		}
	}
	if out := cmd("sync", res.Session); !strings.Contains(out, "create_key") || len(world.Crypto.Keys(simtest.Product)) != 1 {
		t.Fatalf("sync: got %q and %d keys", out, len(world.Crypto.Keys(simtest.Product)))
	}
	key := world.Crypto.Keys(simtest.Product)[0]
	if key.Features != [8]bool{1: true} || key.Notes != syncer.Marker(res.Session) {
		t.Fatalf("got key %+v, want F2 alone (F1, the time-limited feature, off) and the session's marker", key)
	}
	if out := cmd("status", res.Session); !strings.Contains(out, "would change nothing") || !strings.Contains(out, key.Key) {
		t.Fatalf("status after the sync:\n%s", out)
	}
	out := cmd("audit", "--purchase", res.Session)
	if !strings.Contains(out, "create_key") || !strings.Contains(out, res.Session) || !strings.Contains(out, key.Key) {
		t.Fatalf("audit --purchase: want the create_key naming the purchase and key:\n%s", out)
	}
	if out := cmd("audit", "--subscription", res.Session); strings.Contains(out, "create_key") {
		t.Fatalf("audit --subscription of a purchase id: got rows\n%s", out)
	}
	if err := run(t.Context(), []string{"audit", "--purchase", "sub_1"}, vars, io.Discard, io.Discard, nil); !errors.Is(err, errUsage) {
		t.Fatalf("audit --purchase sub_1: got %v, want a usage error", err)
	}
}

// status shows every key of a bundle: one block per Cryptolens product.
func TestStatusOfABundle(t *testing.T) {
	t.Parallel()
	world := simtest.New(t, simtest.Options{})
	world.Crypto.AddProduct(2002, cryptolenssim.ProductOptions{})
	pro := world.Price("App", 1000, `{"F2":true}`)
	addonProduct := world.Stripe.CreateProduct("Add-on", map[string]string{"skm_product_id": "2002"})
	addon, _ := world.Stripe.CreatePrice(stripesim.PriceParams{Product: addonProduct, UnitAmount: 500, Metadata: map[string]string{"skm": `{"F5":true}`}})
	res, _ := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "b@example.com", Items: []stripesim.ItemParams{{Price: pro}, {Price: addon}}})
	vars := env(map[string]string{"DATABASE_URL": pgtest.URL(t), "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "LOG_LEVEL": "warn", "LOG_FORMAT": "json"})
	var out bytes.Buffer
	if err := run(t.Context(), []string{"sync", res.Subscription}, vars, &out, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := run(t.Context(), []string{"status", res.Subscription}, vars, &out, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	a, b := world.Crypto.Keys(simtest.Product), world.Crypto.Keys(2002)
	if len(a) != 1 || len(b) != 1 {
		t.Fatalf("got %d and %d keys, want one in each product", len(a), len(b))
	}
	for _, want := range []string{a[0].Key, "bundle: key " + b[0].Key + " (product 2002)", "product 1001, expires", "product 2002, expires"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("status lacks %q:\n%s", want, out.String())
		}
	}
	if n := strings.Count(out.String(), "would change nothing"); n != 2 {
		t.Fatalf("status: got %d verdicts, want one per key:\n%s", n, out.String())
	}
}
