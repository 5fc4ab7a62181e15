package admin

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// openAPI is the admin API's OpenAPI 3 document, served at /api/v1/openapi.yaml; a
// test checks it against the routes.
//
//go:embed openapi.yaml
var openAPI []byte

// Store is what the admin API reads.
type Store interface {
	QueryAudit(ctx context.Context, f postgres.AuditFilter) ([]postgres.AuditRecord, error)
	FailedEvents(ctx context.Context, limit int) ([]postgres.StoredEvent, error)
}

// Engine is the sync engine as the admin API drives it.
type Engine interface {
	Preview(ctx context.Context, subscription string) (syncer.Preview, error)
	Sync(ctx context.Context, subscription string, cause syncer.Cause) (syncer.Result, error)
}

// Jobs queues work for the workers.
type Jobs interface {
	// ReplayEvent queues a stored event again; it returns syncer.ErrNotFound (the
	// store's, wrapped or not) when keysync does not have it.
	ReplayEvent(ctx context.Context, id string) error
	// Reconcile queues a sweep now.
	Reconcile(ctx context.Context) error
}

// API is the admin HTTP API under /api/v1/. Every route needs the bearer token.
type API struct {
	token  []byte
	store  Store
	engine Engine
	jobs   Jobs
	log    zerolog.Logger
	mux    *http.ServeMux
	routes []string
}

// NewAPI returns the admin API, or nil when token is empty: without a token the admin
// API is off (its routes do not exist), never open.
func NewAPI(token string, store Store, engine Engine, jobs Jobs, log zerolog.Logger) *API {
	if token == "" {
		return nil
	}
	a := &API{token: []byte(token), store: store, engine: engine, jobs: jobs, log: log, mux: http.NewServeMux()}
	a.handle("GET /api/v1/subscriptions/{id}", a.subscription)
	a.handle("POST /api/v1/subscriptions/{id}/sync", a.sync)
	a.handle("GET /api/v1/audit", a.audit)
	a.handle("GET /api/v1/events/failed", a.failedEvents)
	a.handle("POST /api/v1/events/{id}/replay", a.replay)
	a.handle("POST /api/v1/reconcile", a.reconcile)

	// The document describing the API is a route too, answered in YAML, not JSON.
	a.routes = append(a.routes, "GET /api/v1/openapi.yaml")
	a.mux.HandleFunc("GET /api/v1/openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(openAPI)
	})
	return a
}

// Mount registers the API on mux.
func (a *API) Mount(mux *http.ServeMux) { mux.Handle("/api/v1/", a) }

// ServeHTTP authenticates, then routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), a.token) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keysync admin"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid bearer token is required"})
		return
	}
	a.mux.ServeHTTP(w, r)
}

type handlerFunc func(r *http.Request) (any, error)

// handle registers a JSON route, recording its pattern for the OpenAPI check.
func (a *API) handle(pattern string, h handlerFunc) {
	a.routes = append(a.routes, pattern)
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		out, err := h(r)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
}

type badRequest string

func (b badRequest) Error() string { return string(b) }

// fail maps errors to statuses in one place; internal error texts are logged, not sent.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var bad badRequest
	switch {
	case errors.As(err, &bad):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": bad.Error()})
	case errors.Is(err, syncer.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not found"})
	case failure.IsPermanent(err):
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error()})
	default:
		a.log.Error().Err(err).Str("path", r.URL.Path).Msg("admin request failed")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "temporarily unavailable; retry"})
	}
}

func (a *API) subscription(r *http.Request) (any, error) {
	p, err := a.engine.Preview(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"subscription": r.PathValue("id"), "stripe": map[string]any{"status": p.Status, "paid_through": p.PaidThrough,
		"entitled_through": p.EntitledThrough},
		"keysync": map[string]any{"known": p.Found, "license_key": p.Row.LicenseKey, "blocked_by_keysync": p.Row.BlockedByKeysync,
			"last_synced_at": p.Row.LastSyncedAt, "last_error": p.Row.LastError},
		"cryptolens": p.Key, "desired": p.Desired, "actions": p.Actions}, nil
}

func (a *API) sync(r *http.Request) (any, error) {
	res, err := a.engine.Sync(r.Context(), r.PathValue("id"), syncer.Cause{Kind: syncer.CauseOperator, ID: "api"})
	if err != nil {
		return nil, err
	}
	return map[string]any{"subscription": r.PathValue("id"), "license_key": res.Key, "unmapped": res.Unmapped, "actions": res.Actions}, nil
}

func (a *API) audit(r *http.Request) (any, error) {
	q := r.URL.Query()
	f := postgres.AuditFilter{Subscription: q.Get("subscription"), Customer: q.Get("customer"), LicenseKey: q.Get("key"),
		Action: q.Get("action"), Outcome: q.Get("outcome"), Cause: q.Get("cause")}
	var err error
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			if *dst, err = time.Parse(time.RFC3339, v); err != nil {
				return nil, badRequest(name + " must be an RFC 3339 time")
			}
		}
	}
	for name, dst := range map[string]*int64{"limit": nil, "before_id": &f.BeforeID} {
		if v := q.Get(name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return nil, badRequest(name + " must be a whole number")
			}
			if dst != nil {
				*dst = n
			} else {
				f.Limit = int(n)
			}
		}
	}
	rows, err := a.store.QueryAudit(r.Context(), f)
	if err != nil {
		return nil, err
	}
	if rows == nil {
		rows = []postgres.AuditRecord{}
	}
	return map[string]any{"rows": rows}, nil
}

func (a *API) failedEvents(r *http.Request) (any, error) {
	evs, err := a.store.FailedEvents(r.Context(), 100)
	if err != nil {
		return nil, err
	}
	if evs == nil {
		evs = []postgres.StoredEvent{}
	}
	return map[string]any{"events": evs}, nil
}

func (a *API) replay(r *http.Request) (any, error) {
	if err := a.jobs.ReplayEvent(r.Context(), r.PathValue("id")); err != nil {
		return nil, err
	}
	return map[string]any{"queued": r.PathValue("id")}, nil
}

func (a *API) reconcile(r *http.Request) (any, error) {
	if err := a.jobs.Reconcile(r.Context()); err != nil {
		return nil, err
	}
	return map[string]any{"queued": "sweep"}, nil
}
