package admin

import (
	"context"
	_ "embed"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// openAPI is the admin API's OpenAPI 3 document, served at /api/v1/openapi.yaml; its
// tests check the routes against it and every request and answer they make.
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
	PreviewPurchase(ctx context.Context, purchase string) (syncer.PurchasePreview, error)
	SyncPurchase(ctx context.Context, purchase string, cause syncer.Cause) (syncer.Result, error)
}

// Jobs queues work for the workers.
type Jobs interface {
	// ReplayEvent queues a stored event again; it returns syncer.ErrNotFound (the
	// store's, wrapped or not) when keysync does not have it.
	ReplayEvent(ctx context.Context, id string) error
	// Reconcile queues a sweep now.
	Reconcile(ctx context.Context) error
}

// API is the admin HTTP API under /api/v1/. Every route needs a bearer token; the
// routes that act (sync, replay, reconcile) need the admin token, the others take the
// read-only token too. Every request is logged, without its token.
type API struct {
	guard  *Guard
	store  Store
	engine Engine
	jobs   Jobs
	log    zerolog.Logger
	mux    *http.ServeMux
	routes []string
}

// NewAPI returns the admin API behind guard, or nil when guard is nil: without a token
// the admin API is off (its routes do not exist), never open.
func NewAPI(guard *Guard, store Store, engine Engine, jobs Jobs, log zerolog.Logger) *API {
	if guard == nil {
		return nil
	}
	a := &API{guard: guard, store: store, engine: engine, jobs: jobs, log: log, mux: http.NewServeMux()}
	a.handle("GET /api/v1/subscriptions/{id}", ReadOnly, a.subscription)
	a.handle("POST /api/v1/subscriptions/{id}/sync", ReadWrite, a.sync)
	a.handle("GET /api/v1/purchases/{id}", ReadOnly, a.purchase)
	a.handle("POST /api/v1/purchases/{id}/sync", ReadWrite, a.syncPurchase)
	a.handle("GET /api/v1/audit", ReadOnly, a.audit)
	a.handle("GET /api/v1/events/failed", ReadOnly, a.failedEvents)
	a.handle("POST /api/v1/events/{id}/replay", ReadWrite, a.replay)
	a.handle("POST /api/v1/reconcile", ReadWrite, a.reconcile)

	// The document describing the API is a route too, answered in YAML, not JSON.
	a.route("GET /api/v1/openapi.yaml", ReadOnly, func(w http.ResponseWriter, _ *http.Request, _ Principal) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(openAPI)
	})
	return a
}

// Mount registers the API on mux.
func (a *API) Mount(mux *http.ServeMux) { mux.Handle("/api/v1/", a) }

// ServeHTTP authenticates, routes, and logs the request.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	rec := &statusRecorder{ResponseWriter: w}

	// The route's pattern, not its path, goes to the log: a path carries ids that a
	// caller chose, and the pattern names the route whether or not the caller may use it.
	_, pattern := a.mux.Handler(r)
	if pattern == "" {
		pattern = r.Method + " (no route)"
	}

	// Authenticate before anything else; a throttled client is not even checked.
	who, err := a.guard.Authenticate(r.RemoteAddr, bearer(r))
	var throttled *ThrottledError
	switch {
	case errors.As(err, &throttled):
		rec.Header().Set("Retry-After", strconv.Itoa(int((throttled.RetryAfter+time.Second-1)/time.Second)))
		writeJSON(rec, http.StatusTooManyRequests, map[string]string{"error": throttled.Error()})
	case err != nil:
		rec.Header().Set("WWW-Authenticate", `Bearer realm="keysync admin"`)
		writeJSON(rec, http.StatusUnauthorized, map[string]string{"error": err.Error()})
	default:
		a.mux.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), principalKey{}, who)))
	}
	a.logRequest(r, pattern, rec.code(), who, time.Since(began))
}

// logRequest logs one request: its route, its outcome, the client and the token's name.
func (a *API) logRequest(r *http.Request, pattern string, status int, who Principal, took time.Duration) {
	ev := a.log.Info()
	if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusTooManyRequests {
		ev = a.log.Warn()
	}
	token := who.Name
	if token == "" {
		token = "none"
	}
	ev.Str("route", pattern).Int("status", status).Str("outcome", outcomeOf(status)).Str("remote", r.RemoteAddr).
		Str("token", token).Dur("took", took).Msg("admin request")
}

// outcomeOf names an answer's status for the request log.
func outcomeOf(status int) string {
	switch status {
	case http.StatusOK:
		return "ok"
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusUnauthorized:
		return "unauthenticated"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusUnprocessableEntity:
		return "refused"
	case http.StatusTooManyRequests:
		return "throttled"
	case http.StatusServiceUnavailable:
		return "unavailable"
	}
	return "error"
}

// bearer returns the request's bearer token, or "" when it has none.
func bearer(r *http.Request) string {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return tok
}

type principalKey struct{}

// route registers a route that needs access, recording its pattern for the OpenAPI check.
func (a *API) route(pattern string, need Access, h func(http.ResponseWriter, *http.Request, Principal)) {
	a.routes = append(a.routes, pattern)
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		who, _ := r.Context().Value(principalKey{}).(Principal)
		if who.Access < need {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "the " + who.Name + " token may only read; this route needs the admin token"})
			return
		}
		h(w, r, who)
	})
}

type handlerFunc func(r *http.Request, who Principal) (any, error)

// handle registers a JSON route.
func (a *API) handle(pattern string, need Access, h handlerFunc) {
	a.route(pattern, need, func(w http.ResponseWriter, r *http.Request, who Principal) {
		out, err := h(r, who)
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
		a.log.Error().Err(err).Str("route", r.Pattern).Msg("admin request failed")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "temporarily unavailable; retry"})
	}
}

// The shapes of the ids the API takes. They are the OpenAPI document's patterns (a
// test compares them): an id that cannot be Stripe's is refused before it reaches
// Stripe, a log or the database.
var (
	subscriptionID = regexp.MustCompile(`^sub_[A-Za-z0-9_]{1,250}$`)
	purchaseID     = regexp.MustCompile(`^(cs|in)_[A-Za-z0-9_]{1,250}$`)
	customerID     = regexp.MustCompile(`^cus_[A-Za-z0-9_]{1,250}$`)
	eventID        = regexp.MustCompile(`^evt_[A-Za-z0-9_]{1,250}$`)
)

// maxKeyLength bounds the license key filter (Cryptolens keys are about 30 characters).
const maxKeyLength = 255

// auditEnums are the values the audit filters take: the audit log's own vocabulary
// (its table's CHECK constraints), which the OpenAPI document lists too.
var auditEnums = map[string][]string{
	"action": {string(license.CreateKey), string(license.Extend), string(license.Block), string(license.Unblock),
		string(license.AddFeature), string(license.RemoveFeature), string(license.MachineLimit), "adopt_key",
		string(license.SkipUnmapped), "error", "email_key"},
	"outcome": {string(syncer.OutcomeApplied), string(syncer.OutcomeDryRun), string(syncer.OutcomeFailed)},
	"cause": {string(syncer.CauseWebhook), string(syncer.CauseSweep), string(syncer.CauseCatchUp), string(syncer.CauseOperator),
		string(syncer.CauseCustomer)},
}

// pathID returns the path's id if it has the shape of what, else a badRequest.
func pathID(r *http.Request, shape *regexp.Regexp, what string) (string, error) {
	id := r.PathValue("id")
	if !shape.MatchString(id) {
		return "", badRequest("id must be " + what)
	}
	return id, nil
}

func (a *API) subscription(r *http.Request, _ Principal) (any, error) {
	id, err := pathID(r, subscriptionID, "a Stripe subscription id (sub_...)")
	if err != nil {
		return nil, err
	}
	p, err := a.engine.Preview(r.Context(), id)
	if err != nil {
		return nil, err
	}
	// The row names one key; a bundle's others are its Bundle.
	var recs []syncer.KeyRow
	if p.Row.ProductID != nil && p.Row.LicenseKey != nil {
		recs = append(recs, syncer.KeyRow{ProductID: *p.Row.ProductID, LicenseKey: p.Row.LicenseKey, BlockedByKeysync: p.Row.BlockedByKeysync})
	}
	recs = append(recs, p.Row.Bundle...)
	return map[string]any{"subscription": id, "stripe": map[string]any{"status": p.Status, "paid_through": p.PaidThrough,
		"entitled_through": p.EntitledThrough},
		"keysync": map[string]any{"known": p.Found, "license_key": p.Row.LicenseKey, "blocked_by_keysync": p.Row.BlockedByKeysync,
			"last_synced_at": p.Row.LastSyncedAt, "last_error": p.Row.LastError},
		"cryptolens": p.Key, "desired": p.Desired, "actions": orEmpty(p.Actions), "keys": keyStatuses(p.Keys, recs)}, nil
}

// keyStatuses are the keys a Sync would see, one per Cryptolens product: each as
// keysync recorded it, as Cryptolens has it, as the policy wants it, and the actions
// between them.
func keyStatuses(keys []syncer.KeyPreview, recs []syncer.KeyRow) []map[string]any {
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		var name *string
		blocked := false
		for _, r := range recs {
			if r.ProductID == k.Desired.ProductID {
				name, blocked = r.LicenseKey, r.BlockedByKeysync
			}
		}
		out = append(out, map[string]any{"product_id": k.Desired.ProductID, "license_key": name, "blocked_by_keysync": blocked,
			"cryptolens": k.Key, "desired": k.Desired, "actions": orEmpty(k.Actions)})
	}
	return out
}

// productKeys names the keys a Sync left, one per Cryptolens product.
func productKeys(keys []syncer.ProductKey) []map[string]any {
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, map[string]any{"product_id": k.ProductID, "license_key": k.Key})
	}
	return out
}

// sync runs a Sync now, audited as the operator's, named by the token that asked.
func (a *API) sync(r *http.Request, who Principal) (any, error) {
	id, err := pathID(r, subscriptionID, "a Stripe subscription id (sub_...)")
	if err != nil {
		return nil, err
	}
	res, err := a.engine.Sync(r.Context(), id, syncer.Cause{Kind: syncer.CauseOperator, ID: OperatorID(who)})
	if err != nil {
		return nil, err
	}
	return map[string]any{"subscription": id, "license_key": res.Key, "keys": productKeys(res.Keys), "unmapped": res.Unmapped,
		"actions": orEmpty(res.Actions)}, nil
}

// purchase is a one-time purchase's status: Stripe's view of the payment, keysync's
// row, and its keys as a Sync would see them now. An invoice that a Checkout Session
// made is part of the session's purchase: it answers with the session (checkout_session)
// and no keys.
func (a *API) purchase(r *http.Request, _ Principal) (any, error) {
	id, err := pathID(r, purchaseID, "a Stripe Checkout Session id (cs_...) or invoice id (in_...)")
	if err != nil {
		return nil, err
	}
	p, err := a.engine.PreviewPurchase(r.Context(), id)
	if err != nil {
		return nil, err
	}
	var session *string
	if p.Session != "" {
		session = &p.Session
	}
	stripe := map[string]any{"status": p.Status, "customer": p.CustomerID, "payment_checked": p.PaymentChecked,
		"refunded": p.Refunded, "disputed": p.Disputed}
	if !p.Created.IsZero() {
		stripe["created"] = p.Created
	}
	return map[string]any{"purchase": id, "checkout_session": session, "stripe": stripe,
		"keysync": map[string]any{"known": p.Found, "status": p.Row.Status, "refunded": p.Row.Refunded, "disputed": p.Row.Disputed,
			"last_synced_at": p.Row.LastSyncedAt, "last_error": p.Row.LastError},
		"keys": keyStatuses(p.Keys, p.Row.Keys)}, nil
}

// syncPurchase runs a purchase's Sync now, audited as the operator's, named by the
// token that asked.
func (a *API) syncPurchase(r *http.Request, who Principal) (any, error) {
	id, err := pathID(r, purchaseID, "a Stripe Checkout Session id (cs_...) or invoice id (in_...)")
	if err != nil {
		return nil, err
	}
	res, err := a.engine.SyncPurchase(r.Context(), id, syncer.Cause{Kind: syncer.CauseOperator, ID: OperatorID(who)})
	if err != nil {
		return nil, err
	}
	return map[string]any{"purchase": id, "status": res.Status, "keys": productKeys(res.Keys), "unmapped": res.Unmapped,
		"actions": orEmpty(res.Actions)}, nil
}

// OperatorID is the audit log's cause id for an action a token asked for: "api:" and
// the token's name.
func OperatorID(who Principal) string { return "api:" + who.Name }

func (a *API) audit(r *http.Request, _ Principal) (any, error) {
	f, err := auditFilter(r.URL.Query())
	if err != nil {
		return nil, err
	}
	rows, err := a.store.QueryAudit(r.Context(), f)
	if err != nil {
		return nil, err
	}
	return map[string]any{"rows": orEmpty(rows)}, nil
}

// auditFilter reads the audit query's filters, refusing what the OpenAPI document
// refuses: ids of the wrong shape, values outside the audit log's vocabulary, a limit
// out of range.
func auditFilter(q map[string][]string) (postgres.AuditFilter, error) {
	get := func(name string) string {
		if v := q[name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	f := postgres.AuditFilter{Subscription: get("subscription"), Purchase: get("purchase"), Customer: get("customer"), LicenseKey: get("key"),
		Action: get("action"), Outcome: get("outcome"), Cause: get("cause")}
	if f.Subscription != "" && !subscriptionID.MatchString(f.Subscription) {
		return f, badRequest("subscription must be a Stripe subscription id (sub_...)")
	}
	if f.Purchase != "" && !purchaseID.MatchString(f.Purchase) {
		return f, badRequest("purchase must be a Stripe Checkout Session id (cs_...) or invoice id (in_...)")
	}
	if f.Customer != "" && !customerID.MatchString(f.Customer) {
		return f, badRequest("customer must be a Stripe customer id (cus_...)")
	}
	if len(f.LicenseKey) > maxKeyLength {
		return f, badRequest("key must be at most " + strconv.Itoa(maxKeyLength) + " characters")
	}
	for name, v := range map[string]string{"action": f.Action, "outcome": f.Outcome, "cause": f.Cause} {
		if v != "" && !slices.Contains(auditEnums[name], v) {
			return f, badRequest(name + " must be one of " + strings.Join(auditEnums[name], ", "))
		}
	}
	var err error
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := get(name); v != "" {
			if *dst, err = time.Parse(time.RFC3339, v); err != nil {
				return f, badRequest(name + " must be an RFC 3339 time")
			}
		}
	}
	if v := get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10_000 {
			return f, badRequest("limit must be a whole number from 1 to 10000")
		}
		f.Limit = n
	}
	if v := get("before_id"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return f, badRequest("before_id must be a whole number above 0")
		}
		f.BeforeID = n
	}
	return f, nil
}

func (a *API) failedEvents(r *http.Request, _ Principal) (any, error) {
	evs, err := a.store.FailedEvents(r.Context(), 100)
	if err != nil {
		return nil, err
	}
	return map[string]any{"events": orEmpty(evs)}, nil
}

func (a *API) replay(r *http.Request, _ Principal) (any, error) {
	id, err := pathID(r, eventID, "a Stripe event id (evt_...)")
	if err != nil {
		return nil, err
	}
	if err := a.jobs.ReplayEvent(r.Context(), id); err != nil {
		return nil, err
	}
	return map[string]any{"queued": id}, nil
}

func (a *API) reconcile(r *http.Request, _ Principal) (any, error) {
	if err := a.jobs.Reconcile(r.Context()); err != nil {
		return nil, err
	}
	return map[string]any{"queued": "sweep"}, nil
}

// orEmpty makes a nil list an empty one: the answers have arrays, never null.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// statusRecorder remembers the status of the answer it passes on, for the log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) code() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}
