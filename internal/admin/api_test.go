package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

const token = "admin-token-0123456789abcdef"

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

func setup(t *testing.T) (*httptest.Server, *fakeJobs, string, *simtest.World) {
	t.Helper()
	store := postgres.NewStore(pgtest.Pool(t))
	w := simtest.New(t, simtest.Options{})
	sc, cc := w.Clients(t)
	engine := syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: store, Mapping: license.NewMapping(0), Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5}})
	price := w.Price("App", 1000, `{"F1":true}`)
	res, _ := w.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	jobs := &fakeJobs{}
	api := admin.NewAPI(token, store, engine, jobs, zerolog.Nop())
	mux := http.NewServeMux()
	api.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, jobs, res.Subscription, w
}

func call(t *testing.T, srv *httptest.Server, method, path, tok string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

func TestAdminAPIAuth(t *testing.T) {
	t.Parallel()
	srv, _, sub, _ := setup(t)
	for name, tok := range map[string]string{"no token": "", "wrong token": "admin-token-0123456789abcdeX", "prefix of the token": token[:10]} {
		if code, _ := call(t, srv, "GET", "/api/v1/subscriptions/"+sub, tok); code != http.StatusUnauthorized {
			t.Fatalf("%s: got %d, want 401", name, code)
		}
	}
	if code, _ := call(t, srv, "GET", "/api/v1/subscriptions/"+sub, token); code != 200 {
		t.Fatalf("right token: got %d, want 200", code)
	}
	if admin.NewAPI("", nil, nil, nil, zerolog.Nop()) != nil {
		t.Fatal("an admin API without a token must not exist")
	}
}

func TestAdminAPIRoutes(t *testing.T) {
	t.Parallel()
	srv, jobs, sub, w := setup(t)
	code, body := call(t, srv, "GET", "/api/v1/subscriptions/"+sub, token)
	if code != 200 || body["stripe"].(map[string]any)["status"] != "active" || len(body["actions"].([]any)) != 1 {
		t.Fatalf("status: got %d %v", code, body)
	}
	if code, body = call(t, srv, "POST", "/api/v1/subscriptions/"+sub+"/sync", token); code != 200 || len(w.Crypto.Keys(simtest.Product)) != 1 {
		t.Fatalf("sync: got %d %v", code, body)
	}
	code, body = call(t, srv, "GET", "/api/v1/audit?subscription="+sub+"&limit=10", token)
	rows, _ := body["rows"].([]any)
	if code != 200 || len(rows) != 1 || rows[0].(map[string]any)["action"] != "create_key" || rows[0].(map[string]any)["cause"] != "operator" {
		t.Fatalf("audit: got %d %v", code, body)
	}
	if code, _ = call(t, srv, "GET", "/api/v1/audit?since=yesterday", token); code != http.StatusBadRequest {
		t.Fatalf("bad since: got %d, want 400", code)
	}
	if code, body = call(t, srv, "GET", "/api/v1/events/failed", token); code != 200 || body["events"] == nil {
		t.Fatalf("failed events: got %d %v", code, body)
	}
	if code, _ = call(t, srv, "POST", "/api/v1/events/evt_known_1/replay", token); code != 200 || len(jobs.replayed) != 1 {
		t.Fatalf("replay: got %d, %v", code, jobs.replayed)
	}
	if code, _ = call(t, srv, "POST", "/api/v1/events/evt_unknown/replay", token); code != http.StatusNotFound {
		t.Fatalf("replay unknown: got %d, want 404", code)
	}
	if code, _ = call(t, srv, "POST", "/api/v1/reconcile", token); code != 200 || len(jobs.sweeps) != 1 {
		t.Fatalf("reconcile: got %d, %v", code, jobs.sweeps)
	}
	if code, body = call(t, srv, "GET", "/api/v1/subscriptions/sub_missing", token); code != http.StatusUnprocessableEntity {
		t.Fatalf("unknown subscription: got %d %v, want 422", code, body)
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
	api := admin.NewAPI(token, nil, nil, nil, zerolog.Nop())
	served := api.Routes()
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("documented %v\nserved     %v", documented, served)
	}
}
