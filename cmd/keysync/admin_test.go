package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// request makes one request with a bearer token (none if tok is empty) and returns the
// status and body.
func request(t *testing.T, method, url, tok string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The public listener serves webhooks and health only; the admin API and the metrics
// are on the admin listener, where the read-only token reads and the admin token acts,
// audited under its name.
func TestServeAdminListener(t *testing.T) {
	t.Parallel()
	const adminTok, readTok = "admin-token-0123456789abcdef", "read-token-0123456789abcdef"
	dbURL := pgtest.URL(t)
	world := simtest.New(t, simtest.Options{})
	price := world.Price("App", 1000, `{"F1":true}`)
	res, _ := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "o@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	srv := startServe(t, env(map[string]string{"DATABASE_URL": dbURL, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"STRIPE_WEBHOOK_SECRETS": "whsec_admin_listener_test", "CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL,
		"KEYSYNC_ADMIN_TOKEN": adminTok, "KEYSYNC_ADMIN_READ_TOKEN": readTok, "LOG_FORMAT": "json", "LOG_LEVEL": "info"}))
	if srv.admin == "" || srv.admin == srv.base {
		t.Fatalf("admin listener %q, public %q: want two listeners", srv.admin, srv.base)
	}
	status := "/api/v1/subscriptions/" + res.Subscription

	// Each listener serves its own routes and none of the other's.
	tests := map[string]struct {
		method, url, tok string
		want             int
	}{
		"health on the public listener":        {"GET", srv.base + "/readyz", "", 200},
		"webhooks on the public listener":      {"POST", srv.base + "/webhooks/stripe", "", 400}, // unsigned
		"metrics on the admin listener":        {"GET", srv.admin + "/metrics", "", 200},
		"the admin API on the admin listener":  {"GET", srv.admin + status, adminTok, 200},
		"no metrics on the public listener":    {"GET", srv.base + "/metrics", "", 404},
		"no admin API on the public listener":  {"GET", srv.base + status, adminTok, 404},
		"no OpenAPI on the public listener":    {"GET", srv.base + "/api/v1/openapi.yaml", adminTok, 404},
		"no webhooks on the admin listener":    {"POST", srv.admin + "/webhooks/stripe", "", 404},
		"console on the admin listener":        {"GET", srv.admin + "/console/login", "", 200},
		"no console on the public listener":    {"GET", srv.base + "/console/login", "", 404},
		"no River UI on the public listener":   {"GET", srv.base + "/console/jobs/", "", 404},
		"no health on the admin listener":      {"GET", srv.admin + "/readyz", "", 404},
		"the read token reads":                 {"GET", srv.admin + "/api/v1/audit", readTok, 200},
		"the read token may not sync":          {"POST", srv.admin + status + "/sync", readTok, 403},
		"the read token may not reconcile":     {"POST", srv.admin + "/api/v1/reconcile", readTok, 403},
		"an id that is no subscription's":      {"GET", srv.admin + "/api/v1/subscriptions/not_a_sub", adminTok, 400},
		"an audit filter outside the schema":   {"GET", srv.admin + "/api/v1/audit?outcome=maybe", readTok, 400},
		"an audit page size outside the range": {"GET", srv.admin + "/api/v1/audit?limit=0", readTok, 400},
	}
	apiRequests := 1 // the sync below
	for name, tc := range tests {
		if code, body := request(t, tc.method, tc.url, tc.tok); code != tc.want {
			t.Errorf("%s: got %d %s, want %d", name, code, body, tc.want)
		}
		if strings.HasPrefix(tc.url, srv.admin+"/api/") {
			apiRequests++
		}
	}

	// The admin token acts, and the audit log names it.
	if code, body := request(t, "POST", srv.admin+status+"/sync", adminTok); code != 200 || !strings.Contains(body, "create_key") {
		t.Fatalf("sync: got %d %s", code, body)
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var cause, causeID string
	if err := pool.QueryRow(context.Background(), `SELECT cause, cause_id FROM audit_log WHERE subscription_id = $1 AND action = 'create_key'`,
		res.Subscription).Scan(&cause, &causeID); err != nil || cause != "operator" || causeID != "api:admin" {
		t.Fatalf("audit: got %q %q %v, want operator api:admin", cause, causeID, err)
	}

	// Every admin request is in the log, with its route and the token's name, never
	// the token.
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	logs := srv.logs.String()
	var routes []string
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var l struct{ Message, Route, Token string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Message == "admin request" {
			routes = append(routes, l.Route+" by "+l.Token)
		}
	}
	if len(routes) != apiRequests || !slices.Contains(routes, "POST /api/v1/subscriptions/{id}/sync by admin") ||
		!slices.Contains(routes, "POST /api/v1/reconcile by read") {
		t.Fatalf("got admin request lines %q, want the %d requests made to the admin API", routes, apiRequests)
	}
	for _, secret := range []string{adminTok, readTok} {
		if strings.Contains(logs, secret) {
			t.Fatal("the log contains a token")
		}
	}
}

// With KEYSYNC_ADMIN_LISTEN=off there is no admin listener, so no metrics and no admin
// API anywhere.
func TestServeAdminListenerOff(t *testing.T) {
	t.Parallel()
	world := simtest.New(t, simtest.Options{})
	srv := startServe(t, env(map[string]string{"DATABASE_URL": pgtest.URL(t), "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL, "KEYSYNC_ADMIN_LISTEN": "off",
		"LOG_FORMAT": "json", "LOG_LEVEL": "info"}))
	if srv.admin != "" {
		t.Fatalf("got an admin listener on %s, want none", srv.admin)
	}
	if code, _ := request(t, "GET", srv.base+"/metrics", ""); code != 404 {
		t.Fatalf("/metrics on the public listener: got %d, want 404", code)
	}
	if !strings.Contains(srv.logs.String(), "KEYSYNC_ADMIN_LISTEN is off") {
		t.Fatalf("the log does not say the admin listener is off:\n%s", srv.logs)
	}
}
