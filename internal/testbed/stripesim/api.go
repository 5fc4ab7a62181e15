package stripesim

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Faults injects failures into the API (not into webhook delivery).
type Faults struct {
	// RateLimitRate answers that share of requests with HTTP 429 and Stripe's
	// rate_limit error (which stripe-go does not retry).
	RateLimitRate float64
	// ErrorRate answers that share with HTTP 500 and an api_error.
	ErrorRate float64
	// RateLimitNext answers the next N requests with 429: a burst, deterministic.
	RateLimitNext int
	// ErrorNext answers the next N requests with 500.
	ErrorNext int
	// LockTimeoutNext answers the next N requests with 429 and code lock_timeout: an
	// object another request holds, which stripe-go retries (Stripe-Should-Retry: true).
	LockTimeoutNext int
	// ConflictNext answers the next N requests with 409 and code idempotency_key_in_use:
	// another request with the same idempotency key is in flight, which Stripe asks to
	// retry (Stripe-Should-Retry: true) although a 4xx is otherwise final.
	ConflictNext int
	// FinalErrorNext answers the next N requests with 500 and Stripe-Should-Retry: false:
	// a failure a retry would only repeat (an idempotent request whose first answer was
	// that 500), which Stripe asks not to retry although a 5xx otherwise may be.
	FinalErrorNext int
	// Latency is added to every request.
	Latency time.Duration
}

// SetFaults replaces the API's injected faults.
func (s *Sim) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// Requests returns how many API requests each route received ("GET /v1/subscriptions"),
// faulted ones included.
func (s *Sim) Requests() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.requests))
	for k, v := range s.requests {
		out[k] = v
	}
	return out
}

// Faulted returns how many requests the injected faults answered, by HTTP status (429,
// 500).
func (s *Sim) Faulted() map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.faulted)
}

type idemResult struct {
	status int
	body   []byte
	// request is what the key was first used for; another request with the key is
	// refused.
	request string
}

type apiError struct {
	status  int
	typ     string
	code    string
	message string
	param   string
}

func notFound(kind, id string) *apiError {
	return &apiError{status: 404, typ: "invalid_request_error", code: "resource_missing", param: "id",
		message: fmt.Sprintf("No such %s: '%s'", kind, id)}
}

func badRequest(param, format string, a ...any) *apiError {
	return &apiError{status: 400, typ: "invalid_request_error", param: param, message: fmt.Sprintf(format, a...)}
}

// ServeHTTP serves the Stripe API routes keysync uses.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	faults := s.faults
	s.mu.Unlock()
	if faults.Latency > 0 {
		t := time.NewTimer(faults.Latency)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, badRequest("", "Invalid request body"))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	route := routeName(r)
	s.requests[route]++
	if !s.authorized(r) {
		writeError(w, &apiError{status: 401, typ: "invalid_request_error",
			message: "Invalid API Key provided: " + maskKey(bearer(r))})
		return
	}
	rateLimited := s.faults.RateLimitNext > 0
	if rateLimited {
		s.faults.RateLimitNext--
	}
	failed := !rateLimited && s.faults.ErrorNext > 0
	if failed {
		s.faults.ErrorNext--
	}
	locked := !rateLimited && !failed && s.faults.LockTimeoutNext > 0
	if locked {
		s.faults.LockTimeoutNext--
	}
	conflict := !rateLimited && !failed && !locked && s.faults.ConflictNext > 0
	if conflict {
		s.faults.ConflictNext--
	}
	final := !rateLimited && !failed && !locked && !conflict && s.faults.FinalErrorNext > 0
	if final {
		s.faults.FinalErrorNext--
	}
	switch {
	case conflict:
		s.faulted[http.StatusConflict]++
		writeError(w, &apiError{status: http.StatusConflict, typ: "invalid_request_error", code: "idempotency_key_in_use",
			message: "There is currently another in-progress request using this Stripe-Idempotency-Key. Please try again later."})
		return
	case final:
		s.faulted[http.StatusInternalServerError]++
		w.Header().Set("Stripe-Should-Retry", "false")
		writeError(w, &apiError{status: 500, typ: "api_error", message: "An unknown error occurred"})
		return
	case locked:
		s.faulted[http.StatusTooManyRequests]++
		writeError(w, &apiError{status: 429, typ: "invalid_request_error", code: "lock_timeout",
			message: "This object cannot be accessed right now because another API request or Stripe process is currently accessing it. " +
				"If you see this error intermittently, retry the request. If you see this error frequently and are making multiple " +
				"concurrent requests to a single object, make your requests serially or at a lower rate."})
		return
	case rateLimited || (faults.RateLimitRate > 0 && s.rng.Float64() < faults.RateLimitRate):
		s.faulted[http.StatusTooManyRequests]++
		writeError(w, &apiError{status: 429, typ: "invalid_request_error", code: "rate_limit",
			message: "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."})
		return
	case failed || (faults.ErrorRate > 0 && s.rng.Float64() < faults.ErrorRate):
		s.faulted[http.StatusInternalServerError]++
		writeError(w, &apiError{status: 500, typ: "api_error", message: "An unknown error occurred"})
		return
	}
	if r.Method == http.MethodPost {
		if key := r.Header.Get("Idempotency-Key"); key != "" {
			request := r.URL.Path + "?" + r.Form.Encode()
			if prev, ok := s.idempotent[key]; ok {
				if prev.request != request {
					writeError(w, &apiError{status: 400, typ: "idempotency_error", message: fmt.Sprintf("Keys for idempotent requests "+
						"can only be used with the same parameters they were first used with. Try using a key other than '%s' if "+
						"you meant to execute a different request.", key)})
					return
				}
				w.Header().Set("Idempotent-Replayed", "true")
				writeRaw(w, prev.status, prev.body)
				return
			}
			rec := &recorder{ResponseWriter: w}
			s.route(rec, r)
			if rec.status < 500 {
				s.idempotent[key] = idemResult{status: rec.status, body: rec.body, request: request}
			}
			return
		}
	}
	s.route(w, r)
}

type recorder struct {
	http.ResponseWriter
	status int
	body   []byte
}

func (r *recorder) WriteHeader(status int) { r.status = status; r.ResponseWriter.WriteHeader(status) }
func (r *recorder) Write(b []byte) (int, error) {
	r.body = append(r.body, b...)
	return r.ResponseWriter.Write(b)
}

func routeName(r *http.Request) string {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	// Collapse ids so counts group by endpoint: /v1/subscriptions/{id}.
	for i := 2; i < len(parts); i++ {
		if strings.Contains(parts[i], "_") && parts[i] != "line_items" {
			parts[i] = "{id}"
		}
	}
	return r.Method + " /" + strings.Join(parts, "/")
}

func bearer(r *http.Request) string {
	if u, _, ok := r.BasicAuth(); ok {
		return u
	}
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

func (s *Sim) authorized(r *http.Request) bool { return bearer(r) == s.opts.APIKey }

func maskKey(k string) string {
	if len(k) <= 8 {
		return "****"
	}
	return k[:8] + strings.Repeat("*", 12) + k[len(k)-4:]
}

func writeError(w http.ResponseWriter, e *apiError) {
	// Stripe-Should-Retry tells clients what stripe-go's shouldRetry obeys before its own
	// rules: retry an object lock or a conflict, never a request that would fail again.
	// A rate-limit 429 says nothing (stripe-go does not retry it; the caller backs off),
	// nor does a 5xx.
	switch {
	case e.code == "lock_timeout" || e.status == http.StatusConflict:
		w.Header().Set("Stripe-Should-Retry", "true")
	case e.code == "rate_limit":
	case e.status >= 400 && e.status < 500:
		w.Header().Set("Stripe-Should-Retry", "false")
	}
	body := obj{"type": e.typ, "message": e.message}
	if e.code != "" {
		body["code"] = e.code
		body["doc_url"] = "https://stripe.com/docs/error-codes/" + strings.ReplaceAll(e.code, "_", "-")
	}
	if e.param != "" {
		body["param"] = e.param
	}
	b, _ := json.Marshal(obj{"error": body})
	writeRaw(w, e.status, b)
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Request-Id", "req_sim")
	if w.Header().Get("Stripe-Version") == "" {
		w.Header().Set("Stripe-Version", APIVersion)
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, &apiError{status: 500, typ: "api_error", message: "render"})
		return
	}
	writeRaw(w, http.StatusOK, b)
}

func (s *Sim) route(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 || parts[0] != "v1" {
		writeError(w, &apiError{status: 404, typ: "invalid_request_error", message: "Unrecognized request URL (" + r.Method + ": " + r.URL.Path + ")."})
		return
	}
	// Objects are rendered in the request's Stripe-Version (stripe-go v76 always sends
	// 2023-10-16), or the account's default when it sends none.
	version := r.Header.Get("Stripe-Version")
	if version == "" {
		version = s.opts.AccountAPIVersion
	}
	if err := CheckVersion(version); err != nil {
		writeError(w, badRequest("", "Invalid Stripe API version: %s", version))
		return
	}
	w.Header().Set("Stripe-Version", version)
	q := r.Form
	exp := expansion(arrayParam(q, "expand"))
	get := r.Method == http.MethodGet
	res, id := parts[1], ""
	if len(parts) > 2 {
		id = parts[2]
	}
	if res == "checkout" && len(parts) >= 3 && parts[2] == "sessions" {
		res, id = "checkout/sessions", ""
		if len(parts) > 3 {
			id = parts[3]
		}
	}
	var out any
	var err *apiError
	switch {
	case res == "subscriptions" && get && id == "":
		out, err = s.listSubscriptions(q)
	case res == "subscriptions" && get:
		sub, ok := s.subs[id]
		if !ok {
			err = notFound("subscription", id)
			break
		}
		out = s.renderSubscription(sub, exp)
	case res == "subscriptions" && r.Method == http.MethodPost && id != "":
		out, err = s.updateSubscription(id, q)
	case res == "subscription_items" && get && id == "":
		out, err = s.listItems(q, version)
	case res == "invoices" && get && id == "":
		out, err = s.listInvoices(q)
	case res == "invoices" && get && len(parts) == 4 && parts[3] == "lines":
		inv, ok := s.invoices[id]
		if !ok {
			err = notFound("invoice", id)
			break
		}
		out, err = s.listLines(inv, q)
	case res == "invoices" && get:
		inv, ok := s.invoices[id]
		if !ok {
			err = notFound("invoice", id)
			break
		}
		out = s.renderInvoice(inv, exp)
	case res == "charges" && get && id != "":
		c, ok := s.charges[id]
		if !ok {
			err = notFound("charge", id)
			break
		}
		out = s.renderCharge(c)
	case res == "disputes" && get && id == "":
		var data []any
		for _, d := range s.disputes {
			if q.Get("charge") == "" || d.Charge == q.Get("charge") {
				data = append(data, s.renderDispute(d))
			}
		}
		out = list("/v1/disputes", data, false)
	case res == "disputes" && get && id != "":
		d, ok := s.disputes[id]
		if !ok {
			err = notFound("dispute", id)
			break
		}
		out = s.renderDispute(d)
	case res == "customers" && get && id == "":
		out, err = s.listCustomers(q)
	case res == "customers" && get && id != "":
		c, ok := s.customers[id]
		if !ok {
			err = notFound("customer", id)
			break
		}
		out = s.renderCustomer(c)
	case res == "checkout/sessions" && get && id == "":
		out, err = s.listSessions(q)
	case res == "checkout/sessions" && get && len(parts) == 5 && parts[4] == "line_items":
		cs, ok := s.sessions[id]
		if !ok {
			err = notFound("checkout.session", id)
			break
		}
		out, err = s.listSessionLines(cs, q)
	case res == "checkout/sessions" && get && len(parts) == 4:
		cs, ok := s.sessions[id]
		if !ok {
			err = notFound("checkout.session", id)
			break
		}
		out = s.renderSession(cs)
	case res == "charges" && get && id == "":
		out, err = s.listCharges(q)
	case res == "prices" && get && id != "":
		p, ok := s.prices[id]
		if !ok {
			err = notFound("price", id)
			break
		}
		out = s.renderPrice(p, exp)
	case res == "products" && get && id != "":
		p, ok := s.products[id]
		if !ok {
			err = notFound("product", id)
			break
		}
		out = s.renderProduct(p)
	case res == "events" && get && id == "":
		out, err = s.listEvents(q)
	case res == "events" && get:
		ev, ok := s.eventByID[id]
		if !ok {
			err = notFound("event", id)
			break
		}
		out = json.RawMessage(ev.Payload)
	default:
		err = &apiError{status: 404, typ: "invalid_request_error", message: "Unrecognized request URL (" + r.Method + ": " + r.URL.Path + ")."}
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, convert(version, out))
}

// page applies limit/starting_after/ending_before to ids sorted newest first.
func page(ids []string, q url.Values) (lo, hi int, hasMore bool, e *apiError) {
	limit := 10
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return 0, 0, false, badRequest("limit", "Invalid integer: %s (limit must be between 1 and 100)", v)
		}
		limit = n
	}
	lo, hi = 0, len(ids)
	if after := q.Get("starting_after"); after != "" {
		i := slices.Index(ids, after)
		if i < 0 {
			return 0, 0, false, notFound("object", after)
		}
		lo = i + 1
	}
	if before := q.Get("ending_before"); before != "" {
		i := slices.Index(ids, before)
		if i < 0 {
			return 0, 0, false, notFound("object", before)
		}
		hi = i
		lo = max(0, hi-limit)
		return lo, hi, lo > 0, nil
	}
	hasMore = hi-lo > limit
	return lo, min(hi, lo+limit), hasMore, nil
}

var subscriptionStatuses = []string{StatusActive, StatusCanceled, StatusIncomplete, StatusIncompleteExpired,
	StatusPastDue, StatusPaused, StatusTrialing, StatusUnpaid, "all", "ended"}

// listCustomers lists customers newest first; email filters on the exact, case-sensitive
// address (the spec's email parameter).
func (s *Sim) listCustomers(q url.Values) (any, *apiError) {
	var custs []*Customer
	for _, c := range s.customers {
		if email := q.Get("email"); email == "" || c.Email == email {
			custs = append(custs, c)
		}
	}
	slices.SortFunc(custs, func(a, b *Customer) int { return cmp.Or(cmp.Compare(b.Created, a.Created), cmp.Compare(b.ID, a.ID)) })
	ids := make([]string, len(custs))
	for i, c := range custs {
		ids[i] = c.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	data := make([]any, 0, hi-lo)
	for _, c := range custs[lo:hi] {
		data = append(data, s.renderCustomer(c))
	}
	return list("/v1/customers", data, more), nil
}

func (s *Sim) listSubscriptions(q url.Values) (any, *apiError) {
	status := q.Get("status")
	if status != "" && !slices.Contains(subscriptionStatuses, status) {
		return nil, badRequest("status", "Invalid status: must be one of %s", strings.Join(subscriptionStatuses, ", "))
	}
	var subs []*Subscription
	for _, sub := range s.sortedSubs() {
		switch {
		case q.Get("customer") != "" && sub.Customer != q.Get("customer"):
			continue
		case q.Get("price") != "" && !slices.ContainsFunc(sub.Items, func(it *SubscriptionItem) bool { return it.Price == q.Get("price") }):
			continue
		case status == "all":
		case status == "ended":
			if sub.Status != StatusCanceled && sub.Status != StatusIncompleteExpired {
				continue
			}
		case status == "":
			// Without a status, Stripe leaves canceled subscriptions out.
			if sub.Status == StatusCanceled {
				continue
			}
		case sub.Status != status:
			continue
		}
		subs = append(subs, sub)
	}
	ids := make([]string, len(subs))
	for i, sub := range subs {
		ids[i] = sub.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	exp := expansion(arrayParam(q, "expand")).under("data")
	data := make([]any, 0, hi-lo)
	for _, sub := range subs[lo:hi] {
		data = append(data, s.renderSubscription(sub, exp))
	}
	return list("/v1/subscriptions", data, more), nil
}

// listItems pages a subscription's items in their order on the subscription, rendered
// in version: in basil each item carries the subscription's billing period.
func (s *Sim) listItems(q url.Values, version string) (any, *apiError) {
	id := q.Get("subscription")
	if id == "" {
		return nil, badRequest("subscription", "Missing required param: subscription.")
	}
	sub, ok := s.subs[id]
	if !ok {
		return nil, notFound("subscription", id)
	}
	ids := make([]string, len(sub.Items))
	for i, it := range sub.Items {
		ids[i] = it.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	exp := expansion(arrayParam(q, "expand")).under("data")
	data := make([]any, 0, hi-lo)
	for _, it := range sub.Items[lo:hi] {
		item := s.renderItem(sub, it, exp)
		if version == VersionBasil {
			item["current_period_start"], item["current_period_end"] = sub.CurrentPeriodStart, sub.CurrentPeriodEnd
		}
		data = append(data, item)
	}
	return list("/v1/subscription_items", data, more), nil
}

// listLines pages an invoice's lines in their order on the invoice.
func (s *Sim) listLines(inv *Invoice, q url.Values) (any, *apiError) {
	ids := make([]string, len(inv.Lines))
	for i, l := range inv.Lines {
		ids[i] = l.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	exp := expansion(arrayParam(q, "expand")).under("data")
	data := make([]any, 0, hi-lo)
	for _, l := range inv.Lines[lo:hi] {
		data = append(data, s.renderLine(inv, l, exp))
	}
	return list("/v1/invoices/"+inv.ID+"/lines", data, more), nil
}

func (s *Sim) listInvoices(q url.Values) (any, *apiError) {
	status := q.Get("status")
	if status != "" && !slices.Contains([]string{"draft", "open", "paid", "uncollectible", "void"}, status) {
		return nil, badRequest("status", "Invalid status: must be one of draft, open, paid, uncollectible, or void")
	}
	created, err := createdRange(q)
	if err != nil {
		return nil, err
	}
	var invs []*Invoice
	for _, inv := range s.sortedInvoices() {
		if (q.Get("subscription") != "" && inv.Subscription != q.Get("subscription")) ||
			(q.Get("customer") != "" && inv.Customer != q.Get("customer")) || (status != "" && inv.Status != status) ||
			!inRange(inv.Created, created) {
			continue
		}
		invs = append(invs, inv)
	}
	ids := make([]string, len(invs))
	for i, inv := range invs {
		ids[i] = inv.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	exp := expansion(arrayParam(q, "expand")).under("data")
	data := make([]any, 0, hi-lo)
	for _, inv := range invs[lo:hi] {
		data = append(data, s.renderInvoice(inv, exp))
	}
	return list("/v1/invoices", data, more), nil
}

func (s *Sim) listEvents(q url.Values) (any, *apiError) {
	types := arrayParam(q, "types")
	if t := q.Get("type"); t != "" {
		if len(types) > 0 {
			return nil, badRequest("type", "You may only specify one of these parameters: type, types.")
		}
		types = []string{t}
	}
	if len(types) > 20 {
		return nil, badRequest("types", "types may contain at most 20 values")
	}
	rng, err := createdRange(q)
	if err != nil {
		return nil, err
	}
	cutoff := s.unix() - 30*86400 // Stripe keeps events for 30 days
	var evs []*Event
	for i := len(s.events) - 1; i >= 0; i-- {
		ev := s.events[i]
		if ev.Created < cutoff || !matchType(types, ev.Type) || !inRange(ev.Created, rng) {
			continue
		}
		evs = append(evs, ev)
	}
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	data := make([]any, 0, hi-lo)
	for _, ev := range evs[lo:hi] {
		data = append(data, json.RawMessage(ev.Payload))
	}
	return list("/v1/events", data, more), nil
}

// createdRange reads a list's created filter: created=<t>, or created[gt|gte|lt|lte].
func createdRange(q url.Values) (map[string]int64, *apiError) {
	rng := map[string]int64{}
	for _, op := range []string{"gt", "gte", "lt", "lte"} {
		if v := q.Get("created[" + op + "]"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, badRequest("created", "Invalid integer: %s", v)
			}
			rng[op] = n
		}
	}
	if v := q.Get("created"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, badRequest("created", "Invalid integer: %s", v)
		}
		rng["gte"], rng["lte"] = n, n
	}
	return rng, nil
}

// listSessions pages Checkout Sessions newest first, filtered by customer,
// payment_intent, subscription, status and created.
func (s *Sim) listSessions(q url.Values) (any, *apiError) {
	status := q.Get("status")
	if status != "" && !slices.Contains([]string{SessionOpen, SessionComplete, SessionExpired}, status) {
		return nil, badRequest("status", "Invalid status: must be one of complete, expired, or open")
	}
	created, err := createdRange(q)
	if err != nil {
		return nil, err
	}
	var all []*CheckoutSession
	for _, cs := range s.sessions {
		if (q.Get("customer") != "" && cs.Customer != q.Get("customer")) ||
			(q.Get("payment_intent") != "" && cs.PaymentIntent != q.Get("payment_intent")) ||
			(q.Get("subscription") != "" && cs.Subscription != q.Get("subscription")) ||
			(status != "" && sessionStatus(cs) != status) || !inRange(cs.Created, created) {
			continue
		}
		all = append(all, cs)
	}
	slices.SortFunc(all, func(a, b *CheckoutSession) int { return int(b.seq - a.seq) })
	ids := make([]string, len(all))
	for i, cs := range all {
		ids[i] = cs.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	data := make([]any, 0, hi-lo)
	for _, cs := range all[lo:hi] {
		data = append(data, s.renderSession(cs))
	}
	return list("/v1/checkout/sessions", data, more), nil
}

// listSessionLines pages a Checkout Session's line items in their order: Stripe does
// not embed them in the session.
func (s *Sim) listSessionLines(cs *CheckoutSession, q url.Values) (any, *apiError) {
	ids := make([]string, len(cs.Lines))
	for i, l := range cs.Lines {
		ids[i] = l.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	exp := expansion(arrayParam(q, "expand")).under("data")
	data := make([]any, 0, hi-lo)
	for _, l := range cs.Lines[lo:hi] {
		data = append(data, s.renderSessionLine(l, exp))
	}
	return list("/v1/checkout/sessions/"+cs.ID+"/line_items", data, more), nil
}

// listCharges pages charges newest first, filtered by payment_intent, customer and
// created.
func (s *Sim) listCharges(q url.Values) (any, *apiError) {
	created, err := createdRange(q)
	if err != nil {
		return nil, err
	}
	var all []*Charge
	for _, c := range s.charges {
		if (q.Get("payment_intent") != "" && c.PaymentIntent != q.Get("payment_intent")) ||
			(q.Get("customer") != "" && c.Customer != q.Get("customer")) || !inRange(c.Created, created) {
			continue
		}
		all = append(all, c)
	}
	slices.SortFunc(all, func(a, b *Charge) int { return int(b.seq - a.seq) })
	ids := make([]string, len(all))
	for i, c := range all {
		ids[i] = c.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	data := make([]any, 0, hi-lo)
	for _, c := range all[lo:hi] {
		data = append(data, s.renderCharge(c))
	}
	return list("/v1/charges", data, more), nil
}

func matchType(types []string, t string) bool {
	if len(types) == 0 {
		return true
	}
	for _, want := range types {
		if want == t || want == "*" || (strings.HasSuffix(want, ".*") && strings.HasPrefix(t, strings.TrimSuffix(want, "*"))) {
			return true
		}
	}
	return false
}

func inRange(v int64, rng map[string]int64) bool {
	for op, n := range rng {
		switch {
		case op == "gt" && v <= n, op == "gte" && v < n, op == "lt" && v >= n, op == "lte" && v > n:
			return false
		}
	}
	return true
}

func (s *Sim) updateSubscription(id string, q url.Values) (any, *apiError) {
	sub, ok := s.subs[id]
	if !ok {
		return nil, notFound("subscription", id)
	}
	kv := map[string]string{}
	var comment, feedback *string
	for k, v := range q {
		name, isMeta := strings.CutPrefix(k, "metadata[")
		switch {
		case isMeta && strings.HasSuffix(name, "]"):
			kv[strings.TrimSuffix(name, "]")] = v[0]
		case k == "cancellation_details[comment]":
			comment = &v[0]
		case k == "cancellation_details[feedback]":
			if v[0] != "" && !slices.Contains(cancellationFeedback, v[0]) {
				return nil, badRequest(k, "Invalid cancellation_details[feedback]: must be one of %s", strings.Join(cancellationFeedback, ", "))
			}
			feedback = &v[0]
		case strings.HasPrefix(k, "expand["):
		default:
			return nil, badRequest(k, "Received unknown parameter: %s", k)
		}
	}
	if len(kv) > 0 {
		if msg := s.refuseUpdate(sub, true); msg != "" {
			return nil, badRequest("", "%s", msg)
		}
		s.updateMetadata(sub, kv)
	}
	if comment != nil || feedback != nil {
		s.updateCancellationDetails(sub, comment, feedback)
	}
	return s.renderSubscription(sub, expansion(arrayParam(q, "expand"))), nil
}

// arrayParam reads an array parameter in either of Stripe's encodings: name[]=a&name[]=b
// (curl, most clients) or name[0]=a&name[1]=b (stripe-go).
func arrayParam(q url.Values, name string) []string {
	out := slices.Clone(q[name+"[]"])
	for i := 0; ; i++ {
		v, ok := q[name+"["+strconv.Itoa(i)+"]"]
		if !ok {
			break
		}
		out = append(out, v...)
	}
	return out
}
