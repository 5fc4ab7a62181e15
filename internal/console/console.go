// Package console is keysync's operator console: server-rendered pages under /console/
// on the admin listener that answer "is keysync healthy?", "why does this customer's key
// look like this?" and "fix it now", behind the admin tokens. Every page works without
// JavaScript and at phone width; every form is protected against CSRF; a read-only
// token sees everything and changes nothing.
package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// Store is what the console reads from keysync's tables.
type Store interface {
	ConsoleOverview(ctx context.Context) (postgres.Overview, error)
	RecentRuns(ctx context.Context, perKind int) ([]postgres.RunRow, error)
	CatchUpCursor(ctx context.Context) (time.Time, bool, error)
	QueryAudit(ctx context.Context, f postgres.AuditFilter) ([]postgres.AuditRecord, error)
	FailedEventRows(ctx context.Context, limit int) ([]postgres.EventRow, error)
	GetEvent(ctx context.Context, id string) (postgres.StoredEvent, error)
	EventPayload(ctx context.Context, id string) (typ, source string, payload []byte, err error)
	EventsTouching(ctx context.Context, subscription string, limit int) ([]postgres.EventRow, error)
	EventsTouchingPurchase(ctx context.Context, purchase string, limit int) ([]postgres.EventRow, error)
	SubscriptionsByCustomer(ctx context.Context, customers []string) ([]postgres.SubscriptionHit, error)
	SubscriptionsByKey(ctx context.Context, key string) ([]postgres.SubscriptionHit, error)
	PurchasesByCustomer(ctx context.Context, customers []string) ([]postgres.PurchaseHit, error)
	PurchasesByKey(ctx context.Context, key string) ([]postgres.PurchaseHit, error)
}

// Engine is the sync engine as the console drives it.
type Engine interface {
	// Preview is what a Sync would do now, read fresh from Stripe and Cryptolens.
	Preview(ctx context.Context, subscription string) (syncer.Preview, error)
	Sync(ctx context.Context, subscription string, cause syncer.Cause) (syncer.Result, error)
	// PreviewPurchase and SyncPurchase are Preview and Sync of a one-time purchase (a
	// Checkout Session cs_... or an invoice in_...).
	PreviewPurchase(ctx context.Context, purchase string) (syncer.PurchasePreview, error)
	SyncPurchase(ctx context.Context, purchase string, cause syncer.Cause) (syncer.Result, error)
	// TargetFor is the subscription or purchase an event is about (neither for none),
	// as the event's worker finds it.
	TargetFor(ctx context.Context, typ string, payload []byte) (syncer.Target, error)
	// TargetOf is the subscription or purchase a Stripe object (a Checkout Session, an
	// invoice, a charge, a dispute) is about, read from Stripe.
	TargetOf(ctx context.Context, kind, id string) (syncer.Target, error)
}

// Jobs queues work for the workers.
type Jobs interface {
	// ReplayEvent queues a stored event again; syncer.ErrNotFound when keysync does not
	// have it, a permanent error when it must not be replayed.
	ReplayEvent(ctx context.Context, id string) error
	// ReplayFailed queues every failed event again and says how many.
	ReplayFailed(ctx context.Context) (int, error)
}

// Queue reads River's jobs (jobs.Tables).
type Queue interface {
	JobCounts(ctx context.Context) ([]jobs.KindCount, error)
	RecentJobFailures(ctx context.Context, limit int) ([]jobs.JobFailure, error)
}

// Customers finds Stripe customers by e-mail (stripeapi.Client).
type Customers interface {
	CustomersByEmail(ctx context.Context, email string) ([]*stripe.Customer, error)
}

// CallCount is an outside system's calls since this process started, and the failed ones.
type CallCount struct {
	System        string
	Calls, Errors int
}

// Options are the console's parts. Auth, Store, Engine, Jobs, Queue and SessionKey are
// required.
type Options struct {
	Auth   Auth
	Store  Store
	Engine Engine
	Jobs   Jobs
	Queue  Queue
	// Customers, if set, makes e-mail addresses searchable.
	Customers Customers
	// JobsUI, if set, is served under /console/jobs/ behind the console's login (River
	// UI); a read-only session may only read it.
	JobsUI http.Handler
	// SessionKey signs the session cookies (TokenAuth.SessionKey).
	SessionKey []byte
	// SessionTTL is how long a login lasts (default 12 hours).
	SessionTTL time.Duration
	// DryRun is shown on every page: keysync sends nothing to Cryptolens or Stripe.
	DryRun bool
	// Calls, if set, reports Stripe's and Cryptolens' calls for the overview.
	Calls func() []CallCount
	// Now is the clock sessions expire by (default time.Now).
	Now func() time.Time
	Log zerolog.Logger
}

// Console serves the pages under /console/.
type Console struct {
	o        Options
	sessions *sessions
	pages    map[string]*template.Template
	mux      *http.ServeMux
}

//go:embed templates static
var assets embed.FS

// New returns the console, or an error when a required part is missing or a template
// does not parse.
func New(o Options) (*Console, error) {
	if o.Auth == nil || o.Store == nil || o.Engine == nil || o.Jobs == nil || o.Queue == nil || len(o.SessionKey) < 16 {
		return nil, errors.New("console: Auth, Store, Engine, Jobs, Queue and a SessionKey of 16 bytes or more are required")
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Console{o: o, sessions: &sessions{key: o.SessionKey, ttl: o.SessionTTL, now: o.Now, loggedOut: map[string]int64{}},
		pages: map[string]*template.Template{}, mux: http.NewServeMux()}
	for _, page := range []string{"login", "overview", "search", "subscription", "purchase", "failed", "event", "audit", "queue", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/parts.html", "templates/"+page+".html")
		if err != nil {
			return nil, err
		}
		c.pages[page] = t
	}
	static, _ := fs.Sub(assets, "static")

	// Reading pages and the login form; every other page needs a session.
	c.mux.Handle("GET /console/static/", http.StripPrefix("/console/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /console/login", c.loginForm)
	c.mux.HandleFunc("POST /console/login", c.login)
	c.mux.Handle("POST /console/logout", c.action(c.logout, false))
	c.mux.Handle("GET /console/{$}", c.page(c.overview))
	c.mux.Handle("GET /console/subscriptions", c.page(c.search))
	c.mux.Handle("GET /console/subscriptions/{id}", c.page(c.subscription))
	c.mux.Handle("GET /console/purchases/{id}", c.page(c.purchase))
	c.mux.Handle("GET /console/events/failed", c.page(c.failed))
	c.mux.Handle("GET /console/events/{id}", c.page(c.event))
	c.mux.Handle("GET /console/audit", c.page(c.audit))
	c.mux.Handle("GET /console/audit.csv", c.authenticated(http.HandlerFunc(c.auditCSV)))
	c.mux.Handle("GET /console/queue", c.page(c.queue))

	// Changes: a session that may write, and the session's CSRF token.
	c.mux.Handle("POST /console/subscriptions/{id}/sync", c.action(c.syncNow, true))
	c.mux.Handle("POST /console/purchases/{id}/sync", c.action(c.syncPurchaseNow, true))
	c.mux.Handle("POST /console/events/{id}/replay", c.action(c.replay, true))
	c.mux.Handle("POST /console/events/failed/replay", c.action(c.replayFailed, true))

	if o.JobsUI != nil {
		c.mux.Handle("/console/jobs/", c.authenticated(http.HandlerFunc(c.jobsUI)))
	}
	return c, nil
}

// Mount registers the console on mux.
func (c *Console) Mount(mux *http.ServeMux) { mux.Handle("/console/", c) }

// ServeHTTP routes a request under /console/.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// River UI sets its own headers (its pages run scripts); the console's pages run
	// none, load nothing from elsewhere, and are never framed or cached.
	if !strings.HasPrefix(r.URL.Path, "/console/jobs/") {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
	}
	c.mux.ServeHTTP(w, r)
}

type ctxKey struct{}

// sessionOf returns the request's session, set by authenticated.
func sessionOf(r *http.Request) session {
	s, _ := r.Context().Value(ctxKey{}).(session)
	return s
}

// authenticated lets a request with a valid session through. Without one, a page
// request goes to the login form (and back after it); anything else is refused.
func (c *Console) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sess session
		ck, err := r.Cookie(sessionCookie)
		if err == nil {
			sess, err = c.sessions.check(ck.Value)
		}
		if err != nil {
			if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/console/jobs/api/") {
				http.Redirect(w, r, "/console/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "log in to the console first", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, sess)))
	})
}

// pageFunc renders a page: it returns the template's name and data, or an error.
type pageFunc func(r *http.Request) (string, any, error)

// page wraps a reading page: authenticated, rendered in the layout, errors mapped.
func (c *Console) page(fn pageFunc) http.Handler {
	return c.authenticated(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, data, err := fn(r)
		var to redirect
		if errors.As(err, &to) {
			http.Redirect(w, r, string(to), http.StatusFound)
			return
		}
		if err != nil {
			c.fail(w, r, err)
			return
		}
		c.render(w, r, http.StatusOK, name, data)
	}))
}

// actionFunc does a change and returns where to go next.
type actionFunc func(w http.ResponseWriter, r *http.Request) (redirect string, err error)

// action wraps a POST: authenticated, the session's CSRF token checked, and, when
// writes is set, refused to a read-only session. Then it redirects (post, redirect,
// get), so that reloading the page repeats nothing.
func (c *Console) action(fn actionFunc, writes bool) http.Handler {
	return c.authenticated(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess := sessionOf(r)
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if !validCSRF(r.PostFormValue("csrf"), c.sessions.csrf(sess)) {
			c.renderError(w, r, http.StatusForbidden, "This form has expired or did not come from the console (missing or wrong CSRF token). Reload the page and try again.")
			return
		}
		if writes && sess.ReadOnly {
			c.renderError(w, r, http.StatusForbidden, "The read-only token may look but not change anything.")
			return
		}
		to, err := fn(w, r)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		http.Redirect(w, r, to, http.StatusSeeOther)
	}))
}

// badRequest is an error in what the operator typed; its text is shown as it is.
type badRequest string

func (b badRequest) Error() string { return string(b) }

// fail maps an error to a status and a message, in one place: the operator's own
// mistakes and permanent failures are shown, anything else is logged and shown as
// temporary, without internal detail.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := c.explain(r, err)
	c.renderError(w, r, status, msg)
}

// explain returns the status and message for err.
func (c *Console) explain(r *http.Request, err error) (int, string) {
	var bad badRequest
	switch {
	case errors.As(err, &bad):
		return http.StatusBadRequest, bad.Error()
	case errors.Is(err, syncer.ErrNotFound):
		return http.StatusNotFound, "Not found."
	case failure.IsPermanent(err):
		return http.StatusUnprocessableEntity, err.Error()
	default:
		c.o.Log.Error().Err(err).Str("path", r.URL.Path).Msg("console request failed")
		return http.StatusServiceUnavailable, "Stripe, Cryptolens or the database did not answer in time. Try again in a moment."
	}
}

// view is what every page's layout needs, beside the page's own data.
type view struct {
	Title    string
	Nav      string
	Session  session
	CSRF     string
	DryRun   bool
	Notice   string
	Page     any
	LoggedIn bool
}

// render executes a page in the layout. A template error after the first byte cannot
// change the status any more, so pages render into a buffer first.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	sess := sessionOf(r)
	v := view{Nav: name, Session: sess, DryRun: c.o.DryRun, Page: data, LoggedIn: sess.ID != "", Notice: notice(r.URL.Query())}
	if v.LoggedIn {
		v.CSRF = c.sessions.csrf(sess)
	}
	var buf bytes.Buffer
	if err := c.pages[name].Execute(&buf, v); err != nil {
		c.o.Log.Error().Err(err).Str("page", name).Msg("console template failed")
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

func (c *Console) renderError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	c.render(w, r, status, "error", errorPage{Status: status, StatusText: http.StatusText(status), Message: msg})
}

type errorPage struct {
	Status     int
	StatusText string
	Message    string
}

// jobsUI serves River UI to a session; a read-only session may only read, and a
// change must come from a console page (River UI's requests carry no CSRF token of
// ours: the SameSite=Strict cookie and the same-origin check stand in for it).
func (c *Console) jobsUI(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if sessionOf(r).ReadOnly {
			http.Error(w, "the read-only token may not change jobs", http.StatusForbidden)
			return
		}
		if !sameOrigin(r) {
			http.Error(w, "cross-origin request refused", http.StatusForbidden)
			return
		}
		c.o.Log.Info().Str("operator", sessionOf(r).Name).Str("method", r.Method).Str("path", r.URL.Path).Msg("job changed in River UI")
	}
	c.o.JobsUI.ServeHTTP(w, r)
}

// sameOrigin says the request came from a page of this host: browsers send Origin on
// every cross-origin POST and Sec-Fetch-Site where they support it.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return r.Header.Get("Sec-Fetch-Site") == "same-origin"
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host == r.Host
}
