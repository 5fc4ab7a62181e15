package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// Stripe keeps events for 30 days; past 25 days behind, the catch-up is about to lose
// some (reconcile's thresholds).
const (
	cursorWarnAge = 25 * 24 * time.Hour
	cursorLostAge = 30 * 24 * time.Hour
)

type overviewPage struct {
	postgres.Overview
	Runs []postgres.RunRow
	// CursorAge is the catch-up cursor's age; Cursor false: no catch-up succeeded yet.
	Cursor      bool
	CursorAge   time.Duration
	CursorAlarm string // "", "warn" (25 days) or "critical" (30 days)
	Calls       []CallCount
}

func (c *Console) overview(r *http.Request) (string, any, error) {
	ctx := r.Context()
	o, err := c.o.Store.ConsoleOverview(ctx)
	if err != nil {
		return "", nil, err
	}
	p := overviewPage{Overview: o}
	if p.Runs, err = c.o.Store.RecentRuns(ctx, 3); err != nil {
		return "", nil, err
	}

	// The cursor's age on the database's clock, the one that stamped the runs.
	cursor, ok, err := c.o.Store.CatchUpCursor(ctx)
	if err != nil {
		return "", nil, err
	}
	if ok {
		p.Cursor, p.CursorAge = true, max(o.Now.Sub(cursor), 0)
		switch {
		case p.CursorAge >= cursorLostAge:
			p.CursorAlarm = "critical"
		case p.CursorAge >= cursorWarnAge:
			p.CursorAlarm = "warn"
		}
	}
	if c.o.Calls != nil {
		p.Calls = c.o.Calls()
	}
	return "overview", p, nil
}

type searchPage struct {
	Query   string
	Hits    []postgres.SubscriptionHit
	Message string
}

// search finds subscriptions by subscription, customer, e-mail, license key or event
// id; one hit goes straight to its page.
func (c *Console) search(r *http.Request) (string, any, error) {
	ctx := r.Context()
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	p := searchPage{Query: q}
	var err error
	switch {
	case q == "":
		p.Message = "Search by subscription (sub_…), customer (cus_…), e-mail, license key or event id (evt_…)."
		return "search", p, nil
	case strings.HasPrefix(q, "sub_"):
		return "", nil, redirectTo("/console/subscriptions/" + url.PathEscape(q))
	case strings.HasPrefix(q, "evt_"):
		return c.searchEvent(r, q)
	case strings.HasPrefix(q, "cus_"):
		p.Hits, err = c.o.Store.SubscriptionsByCustomer(ctx, []string{q})
	case strings.Contains(q, "@"):
		if c.o.Customers == nil {
			p.Message = "Search by e-mail needs Stripe, which this console is not given."
			return "search", p, nil
		}
		var found []*stripe.Customer
		if found, err = c.o.Customers.CustomersByEmail(ctx, q); err == nil && len(found) > 0 {
			ids := make([]string, len(found))
			for i, cu := range found {
				ids[i] = cu.ID
			}
			p.Hits, err = c.o.Store.SubscriptionsByCustomer(ctx, ids)
		}
	default:
		p.Hits, err = c.o.Store.SubscriptionsByKey(ctx, q)
	}
	if err != nil {
		return "", nil, err
	}
	switch len(p.Hits) {
	case 0:
		p.Message = "Nothing found. Stripe e-mail search is exact and case-sensitive; keys and ids must be whole."
	case 1:
		return "", nil, redirectTo("/console/subscriptions/" + url.PathEscape(p.Hits[0].ID))
	}
	return "search", p, nil
}

// searchEvent goes to the subscription a stored event is about, found as its worker
// finds it.
func (c *Console) searchEvent(r *http.Request, id string) (string, any, error) {
	p := searchPage{Query: id}
	typ, _, payload, err := c.o.Store.EventPayload(r.Context(), id)
	if errors.Is(err, syncer.ErrNotFound) {
		p.Message = "keysync has not stored " + id + "."
		return "search", p, nil
	}
	if err != nil {
		return "", nil, err
	}
	sub, err := c.o.Engine.SubscriptionFor(r.Context(), typ, payload)
	if err != nil {
		return "", nil, err
	}
	if sub == "" {
		p.Message = id + " (" + typ + ") is about no subscription."
		return "search", p, nil
	}
	return "", nil, redirectTo("/console/subscriptions/" + url.PathEscape(sub) + "?event=" + url.QueryEscape(id))
}

// redirect is a page's answer that sends the browser elsewhere.
type redirect string

func (r redirect) Error() string { return "redirect to " + string(r) }

func redirectTo(path string) error { return redirect(path) }

type subscriptionPage struct {
	ID      string
	Event   string // the event searched for, highlighted
	Preview syncer.Preview
	// PreviewError says why Stripe or Cryptolens could not be read: the rest of the
	// page is keysync's own and still shown.
	PreviewError string
	Diff         []diffLine
	Actions      []string
	Audit        []postgres.AuditRecord
	Events       []postgres.EventRow
	TouchDays    int
}

func (c *Console) subscription(r *http.Request) (string, any, error) {
	ctx := r.Context()
	id := r.PathValue("id")
	if !strings.HasPrefix(id, "sub_") || len(id) > 255 {
		return "", nil, badRequest("A subscription id starts with sub_.")
	}
	p := subscriptionPage{ID: id, Event: r.URL.Query().Get("event"), TouchDays: int(postgres.TouchWindow.Hours() / 24)}
	var err error
	if p.Preview, err = c.o.Engine.Preview(ctx, id); err != nil {
		_, p.PreviewError = c.explain(r, err)
	} else {
		p.Diff = previewDiff(p.Preview.Key, p.Preview.Actions)
		for _, a := range p.Preview.Actions {
			p.Actions = append(p.Actions, describe(a))
		}
	}
	if p.Audit, err = c.o.Store.QueryAudit(ctx, postgres.AuditFilter{Subscription: id, Limit: 50}); err != nil {
		return "", nil, err
	}
	if p.Events, err = c.o.Store.EventsTouching(ctx, id, 50); err != nil {
		return "", nil, err
	}
	return "subscription", p, nil
}

// syncNow runs a Sync at once, audited with the operator's name.
func (c *Console) syncNow(w http.ResponseWriter, r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !strings.HasPrefix(id, "sub_") {
		return "", badRequest("A subscription id starts with sub_.")
	}
	who := sessionOf(r).Name
	res, err := c.o.Engine.Sync(r.Context(), id, syncer.Cause{Kind: syncer.CauseOperator, ID: "console:" + who})
	if err != nil {
		return "", err
	}
	c.o.Log.Info().Str("operator", who).Str("subscription_id", id).Int("actions", len(res.Actions)).Msg("console: sync now")
	return withNotice("/console/subscriptions/"+url.PathEscape(id), "synced", len(res.Actions)), nil
}

type failedPage struct {
	Events []postgres.EventRow
}

func (c *Console) failed(r *http.Request) (string, any, error) {
	evs, err := c.o.Store.FailedEventRows(r.Context(), 200)
	return "failed", failedPage{Events: evs}, err
}

type eventPage struct {
	Event   postgres.StoredEvent
	Payload string
	Cut     bool
}

// maxPayloadShown bounds the payload the viewer shows (Stripe's events are a few KB).
const maxPayloadShown = 256 << 10

func (c *Console) event(r *http.Request) (string, any, error) {
	id := r.PathValue("id")
	ev, err := c.o.Store.GetEvent(r.Context(), id)
	if err != nil {
		return "", nil, err
	}
	_, _, payload, err := c.o.Store.EventPayload(r.Context(), id)
	if err != nil {
		return "", nil, err
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, payload, "", "  ") != nil {
		pretty.Reset()
		pretty.Write(payload)
	}
	p := eventPage{Event: ev, Payload: pretty.String()}
	if len(p.Payload) > maxPayloadShown {
		p.Payload, p.Cut = p.Payload[:maxPayloadShown], true
	}
	return "event", p, nil
}

// replay queues one event again and goes back to the page it was asked from.
func (c *Console) replay(w http.ResponseWriter, r *http.Request) (string, error) {
	id := r.PathValue("id")
	if err := c.o.Jobs.ReplayEvent(r.Context(), id); err != nil {
		return "", err
	}
	c.o.Log.Info().Str("operator", sessionOf(r).Name).Str("event_id", id).Msg("console: replay event")
	return withNotice(safeNext(r.PostFormValue("back")), "replayed", -1), nil
}

func (c *Console) replayFailed(w http.ResponseWriter, r *http.Request) (string, error) {
	n, err := c.o.Jobs.ReplayFailed(r.Context())
	if err != nil {
		return "", err
	}
	c.o.Log.Info().Str("operator", sessionOf(r).Name).Int("events", n).Msg("console: replay every failed event")
	return withNotice("/console/events/failed", "replayed_all", n), nil
}

// The audit log's vocabularies, for the filters' choices.
var (
	auditActions  = []string{"create_key", "extend", "block", "unblock", "add_feature", "remove_feature", "machine_limit", "adopt_key", "skip_unmapped", "error"}
	auditOutcomes = []string{"applied", "dry_run", "failed"}
	auditCauses   = []string{"webhook", "sweep", "catch_up", "operator"}
)

type auditPage struct {
	Form                      url.Values
	Rows                      []postgres.AuditRecord
	Actions, Outcomes, Causes []string
	// Older is the query of the next page, "" on the last one.
	Older string
	CSV   string
}

// auditFilter reads the audit filters from a query as `keysync audit` reads its flags:
// the same names, the same --since syntax. It returns a badRequest naming a bad value.
func auditFilter(q url.Values, now time.Time, maxLimit int) (postgres.AuditFilter, error) {
	f := postgres.AuditFilter{Subscription: strings.TrimSpace(q.Get("subscription")), Customer: strings.TrimSpace(q.Get("customer")),
		LicenseKey: strings.TrimSpace(q.Get("key")), Action: q.Get("action"), Outcome: q.Get("outcome"), Cause: q.Get("cause"), Limit: 50}
	for _, c := range []struct {
		name, v string
		allowed []string
	}{{"action", f.Action, auditActions}, {"outcome", f.Outcome, auditOutcomes}, {"cause", f.Cause, auditCauses}} {
		if c.v != "" && !slices.Contains(c.allowed, c.v) {
			return f, badRequest("Unknown " + c.name + ": choose one of " + strings.Join(c.allowed, ", ") + ".")
		}
	}
	var err error
	if f.Since, err = postgres.ParseSince(strings.TrimSpace(q.Get("since")), now); err != nil {
		return f, badRequest("Since: " + err.Error() + ".")
	}
	if v := strings.TrimSpace(q.Get("until")); v != "" {
		if f.Until, err = time.Parse(time.RFC3339, v); err != nil {
			return f, badRequest("Until: want an RFC 3339 time such as 2026-01-31T00:00:00Z.")
		}
	}
	for _, n := range []struct {
		name string
		dst  *int64
	}{{"limit", nil}, {"before_id", &f.BeforeID}} {
		v := strings.TrimSpace(q.Get(n.name))
		if v == "" {
			continue
		}
		i, err := strconv.ParseInt(v, 10, 64)
		if err != nil || i < 1 {
			return f, badRequest(n.name + ": want a whole number from 1.")
		}
		if n.dst == nil && i > int64(maxLimit) {
			return f, badRequest("limit: at most " + strconv.Itoa(maxLimit) + " rows.")
		}
		if n.dst != nil {
			*n.dst = i
		} else {
			f.Limit = int(i)
		}
	}
	return f, nil
}

func (c *Console) audit(r *http.Request) (string, any, error) {
	q := r.URL.Query()
	f, err := auditFilter(q, c.o.Now(), 1000)
	if err != nil {
		return "", nil, err
	}
	rows, err := c.o.Store.QueryAudit(r.Context(), f)
	if err != nil {
		return "", nil, err
	}
	p := auditPage{Form: q, Rows: rows, Actions: auditActions, Outcomes: auditOutcomes, Causes: auditCauses}

	// The CSV has every row the filters select (up to 10,000), not this page's.
	csvQ := cloneValues(q)
	csvQ.Del("before_id")
	csvQ.Set("limit", "10000")
	p.CSV = "/console/audit.csv?" + csvQ.Encode()
	if len(rows) == f.Limit && len(rows) > 0 {
		older := cloneValues(q)
		older.Set("before_id", strconv.FormatInt(rows[len(rows)-1].ID, 10))
		p.Older = "/console/audit?" + older.Encode()
	}
	return "audit", p, nil
}

// auditCSV exports the rows the filters select, as `keysync audit --format csv` does.
func (c *Console) auditCSV(w http.ResponseWriter, r *http.Request) {
	f, err := auditFilter(r.URL.Query(), c.o.Now(), 10_000)
	if err == nil && r.URL.Query().Get("limit") == "" {
		f.Limit = 10_000
	}
	var rows []postgres.AuditRecord
	if err == nil {
		rows, err = c.o.Store.QueryAudit(r.Context(), f)
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="keysync-audit.csv"`)
	if err := postgres.WriteAuditCSV(w, rows); err != nil {
		c.o.Log.Warn().Err(err).Msg("console: audit export cut off")
	}
}

type queuePage struct {
	Kinds    []string
	States   []string
	Counts   map[string]map[string]int
	Failures []jobs.JobFailure
	JobsUI   bool
}

// queue is the jobs table: River's jobs by kind and state, and the recent failures.
// River UI, when mounted, shows the same in depth (it needs JavaScript).
func (c *Console) queue(r *http.Request) (string, any, error) {
	counts, err := c.o.Queue.JobCounts(r.Context())
	if err != nil {
		return "", nil, err
	}
	p := queuePage{Counts: map[string]map[string]int{}, JobsUI: c.o.JobsUI != nil,
		States: []string{"available", "scheduled", "pending", "running", "retryable", "completed", "cancelled", "discarded"}}
	for _, kc := range counts {
		if p.Counts[kc.Kind] == nil {
			p.Counts[kc.Kind] = map[string]int{}
			p.Kinds = append(p.Kinds, kc.Kind)
		}
		p.Counts[kc.Kind][kc.State] = kc.Count
	}
	p.Failures, err = c.o.Queue.RecentJobFailures(r.Context(), 20)
	return "queue", p, err
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}
