package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	Query     string
	Hits      []postgres.SubscriptionHit
	Purchases []postgres.PurchaseHit
	Message   string
}

// search finds subscriptions and one-time purchases by their id, customer, e-mail,
// license key or event id; one hit goes straight to its page, and a customer's
// purchases are listed beside their subscriptions.
func (c *Console) search(r *http.Request) (string, any, error) {
	ctx := r.Context()
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	p := searchPage{Query: q}
	var err error
	switch {
	case q == "":
		p.Message = "Search by subscription (sub_…), purchase (cs_…, in_…), charge (ch_…), customer (cus_…), e-mail, license key or event id (evt_…)."
		return "search", p, nil
	case strings.HasPrefix(q, "sub_"):
		return "", nil, redirectTo("/console/subscriptions/" + url.PathEscape(q))
	case stripeKind(q) != "":
		return c.searchObject(r, q)
	case strings.HasPrefix(q, "evt_"):
		return c.searchEvent(r, q)
	case strings.HasPrefix(q, "cus_"):
		err = c.findByCustomers(ctx, &p, []string{q})
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
			err = c.findByCustomers(ctx, &p, ids)
		}
	default:
		if p.Hits, err = c.o.Store.SubscriptionsByKey(ctx, q); err == nil {
			p.Purchases, err = c.o.Store.PurchasesByKey(ctx, q)
		}
	}
	if err != nil {
		return "", nil, err
	}
	switch {
	case len(p.Hits)+len(p.Purchases) == 0:
		p.Message = "Nothing found. Stripe e-mail search is exact and case-sensitive; keys and ids must be whole."
	case len(p.Hits) == 1 && len(p.Purchases) == 0:
		return "", nil, redirectTo("/console/subscriptions/" + url.PathEscape(p.Hits[0].ID))
	case len(p.Hits) == 0 && len(p.Purchases) == 1:
		return "", nil, redirectTo("/console/purchases/" + url.PathEscape(p.Purchases[0].ID))
	}
	return "search", p, nil
}

// findByCustomers fills p with the customers' subscriptions and purchases.
func (c *Console) findByCustomers(ctx context.Context, p *searchPage, customers []string) error {
	var err error
	if p.Hits, err = c.o.Store.SubscriptionsByCustomer(ctx, customers); err != nil {
		return err
	}
	p.Purchases, err = c.o.Store.PurchasesByCustomer(ctx, customers)
	return err
}

// stripeKind is the kind of the Stripe object id names by its prefix, among those a
// search follows to their subscription or purchase ("" for none of them).
func stripeKind(id string) string {
	for prefix, kind := range map[string]string{"cs_": "checkout.session", "in_": "invoice", "ch_": "charge", "py_": "charge",
		"dp_": "dispute", "du_": "dispute"} {
		if strings.HasPrefix(id, prefix) {
			return kind
		}
	}
	return ""
}

// searchObject goes to the subscription or purchase a Checkout Session, invoice,
// charge or dispute is about, read from Stripe: a subscription's session or invoice
// leads to the subscription. A purchase id that Stripe does not answer for still leads
// to its page, which shows keysync's own record and Stripe's error.
func (c *Console) searchObject(r *http.Request, id string) (string, any, error) {
	target, err := c.o.Engine.TargetOf(r.Context(), stripeKind(id), id)
	switch {
	case err != nil && syncer.IsPurchase(id):
		return "", nil, redirectTo("/console/purchases/" + url.PathEscape(id))
	case err != nil:
		return "", nil, err
	case target.Subscription != "":
		return "", nil, redirectTo("/console/subscriptions/" + url.PathEscape(target.Subscription))
	case target.Purchase != "":
		return "", nil, redirectTo("/console/purchases/" + url.PathEscape(target.Purchase))
	}
	return "search", searchPage{Query: id, Message: id + " is about no subscription and no purchase that keysync licenses."}, nil
}

// searchEvent goes to the subscription or purchase a stored event is about, found as
// its worker finds it.
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
	target, err := c.o.Engine.TargetFor(r.Context(), typ, payload)
	if err != nil {
		return "", nil, err
	}
	switch {
	case target.Subscription != "":
		return "", nil, redirectTo("/console/subscriptions/" + url.PathEscape(target.Subscription) + "?event=" + url.QueryEscape(id))
	case target.Purchase != "":
		return "", nil, redirectTo("/console/purchases/" + url.PathEscape(target.Purchase) + "?event=" + url.QueryEscape(id))
	}
	p.Message = id + " (" + typ + ") is about no subscription and no purchase."
	return "search", p, nil
}

// redirect is a page's answer that sends the browser elsewhere.
type redirect string

func (r redirect) Error() string { return "redirect to " + string(r) }

func redirectTo(path string) error { return redirect(path) }

// trail is the part of a subscription's or purchase's page that is keysync's own: its
// audit rows and the events that touched it, each with its replay button.
type trail struct {
	// Back is the page the replay buttons return to; AllAudit the audit log's page
	// of every row.
	Back, AllAudit string
	Audit          []postgres.AuditRecord
	Event          string // the event searched for, highlighted
	Events         []postgres.EventRow
	// EventsNote says which events are shown.
	EventsNote string
}

type subscriptionPage struct {
	ID      string
	Preview syncer.Preview
	// PreviewError says why Stripe or Cryptolens could not be read: the rest of the
	// page is keysync's own and still shown.
	PreviewError string
	// Keys are the keys the policy wants, one per Cryptolens product (a bundle has
	// several); Records are the keys keysync recorded.
	Keys    []keyCard
	Records []syncer.KeyRow
	Trail   trail
}

func (c *Console) subscription(r *http.Request) (string, any, error) {
	ctx := r.Context()
	id := r.PathValue("id")
	if !strings.HasPrefix(id, "sub_") || len(id) > 255 {
		return "", nil, badRequest("A subscription id starts with sub_.")
	}
	p := subscriptionPage{ID: id}
	var err error
	if p.Preview, err = c.o.Engine.Preview(ctx, id); err != nil {
		_, p.PreviewError = c.explain(r, err)
	} else {
		p.Keys = keyCards(p.Preview.Keys)
	}
	if row := p.Preview.Row; row.ProductID != nil && row.LicenseKey != nil {
		p.Records = append(p.Records, syncer.KeyRow{ProductID: *row.ProductID, LicenseKey: row.LicenseKey, KeyID: row.KeyID,
			BlockedByKeysync: row.BlockedByKeysync, ExpiryBlockSeen: row.ExpiryBlockSeen})
	}
	p.Records = append(p.Records, p.Preview.Row.Bundle...)
	p.Trail = trail{Back: "/console/subscriptions/" + id, AllAudit: "/console/audit?subscription=" + url.QueryEscape(id),
		Event: r.URL.Query().Get("event"),
		EventsNote: fmt.Sprintf("Events of the last %d days whose object is this subscription or names it, and every event that caused an audited action on it.",
			int(postgres.TouchWindow.Hours()/24))}
	if p.Trail.Audit, err = c.o.Store.QueryAudit(ctx, postgres.AuditFilter{Subscription: id, Limit: 50}); err != nil {
		return "", nil, err
	}
	if p.Trail.Events, err = c.o.Store.EventsTouching(ctx, id, 50); err != nil {
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

// syncPurchaseNow runs a purchase's Sync at once, audited with the operator's name.
func (c *Console) syncPurchaseNow(w http.ResponseWriter, r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !syncer.IsPurchase(id) || len(id) > 255 {
		return "", badRequest(notAPurchase)
	}
	who := sessionOf(r).Name
	res, err := c.o.Engine.SyncPurchase(r.Context(), id, syncer.Cause{Kind: syncer.CauseOperator, ID: "console:" + who})
	if err != nil {
		return "", err
	}
	c.o.Log.Info().Str("operator", who).Str("purchase_id", id).Int("actions", len(res.Actions)).Msg("console: sync now")
	return withNotice("/console/purchases/"+url.PathEscape(id), "synced", len(res.Actions)), nil
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
	auditActions  = []string{"create_key", "extend", "block", "unblock", "add_feature", "remove_feature", "machine_limit", "adopt_key", "skip_unmapped", "error", "email_key"}
	auditOutcomes = []string{"applied", "dry_run", "failed"}
	auditCauses   = []string{"webhook", "sweep", "catch_up", "operator", "customer"}
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
	f := postgres.AuditFilter{Subscription: strings.TrimSpace(q.Get("subscription")), Purchase: strings.TrimSpace(q.Get("purchase")),
		Customer: strings.TrimSpace(q.Get("customer")), LicenseKey: strings.TrimSpace(q.Get("key")), Action: q.Get("action"),
		Outcome: q.Get("outcome"), Cause: q.Get("cause"), Limit: 50}
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
