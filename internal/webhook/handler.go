// Package webhook receives Stripe webhooks: it verifies the signature, hands the event
// to ingest, which stores it and its job durably, and only then acknowledges, so that no
// event is ever lost. Events of every Stripe API version are accepted: the worker reads
// what an event of another version than keysync's is about from the API.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/clientip"
	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
)

// DefaultMaxBody is the largest webhook body accepted. Stripe's events are a few KB to
// a few tens of KB; mozilla/fxa saw some over 52 KB and set 1 MB (mozilla/fxa#8861,
// 2021). Stripe documents no largest event, and its documented limits allow events far
// above 256 KiB: by the 2023-10-16 OpenAPI spec (stripe-mock v0.183.0), a subscription
// embeds up to 20 items, each with its price and plan, and each of these 60 objects may
// carry 50 metadata pairs of up to 40 + 500 characters, about 1.8 MB in a
// customer.subscription.updated event. So the limit stays at 1 MiB rather than 256 KiB,
// and memory is bounded by DefaultBodyBudget instead. An event larger than this is
// answered 413 and reaches keysync through the catch-up (the Events API).
const DefaultMaxBody = 1 << 20

// DefaultBodyBudget bounds the bytes of the webhook bodies held at once, from the start
// of their reading to the answer. A delivery that would pass it is answered 503 with
// Retry-After at once, before its body is read: a flood of large bodies costs at most
// this much memory, and Stripe retries the deliveries it turned away.
const DefaultBodyBudget = 16 << 20

// DefaultBodyTimeout bounds the reading of a webhook body, from the end of its headers.
// Stripe sends its bodies, tens of kilobytes at most, at once; without a bound of its
// own a sender that trickles its body would hold its share of the budget for the whole
// server's read timeout (30 s), and a few such senders would turn Stripe away.
const DefaultBodyTimeout = 10 * time.Second

// clientShare is the part of the body budget one client may hold (DefaultBodyBudget /
// 4 = 4 MiB: 256 deliveries at minCharge): a single sender with slow bodies cannot take
// it all. Stripe sends webhooks from the dozen or so addresses it lists (its docs,
// "Domains and IP addresses", webhook notifications), so its deliveries spread over
// many shares; and behind a proxy whose header keysync is not told
// (KEYSYNC_CLIENT_IP_HEADER), where every sender is the proxy, Stripe still has 256
// deliveries at once, each answered in milliseconds.
const clientShare = 4

// minCharge is what each delivery takes from the budget however small its body: what a
// request costs beside its body (its goroutine, its buffers, the decoded envelope). It
// also bounds the deliveries being worked at once (DefaultBodyBudget / minCharge =
// 1,024, and 256 from one client): well above what Stripe sends at once, and above the
// ingest benchmark's 64 concurrent senders from one address.
const minCharge = 16 << 10

// Config configures the Handler.
type Config struct {
	// Secrets are the endpoint signing secrets (whsec_...). An event signed with any one
	// of them is accepted, so a secret can be rotated without downtime.
	Secrets []string
	// Tolerance is how old a signature's timestamp may be (default 5 minutes, Stripe's).
	Tolerance time.Duration
	// MaxBody caps the request body (default DefaultMaxBody).
	MaxBody int64
	// BodyBudget bounds the bytes of the bodies held at once (default
	// DefaultBodyBudget); it is at least MaxBody.
	BodyBudget int64
	// ClientBudget bounds the bytes one client (as ClientIP names it) holds at once
	// (default BodyBudget / 4); it is at least MaxBody and at most BodyBudget.
	ClientBudget int64
	// ClientIP names a request's client (default clientip.FromRequest("")).
	ClientIP func(*http.Request) string
	// BodyTimeout bounds the reading of a body (default DefaultBodyTimeout); a body
	// not in by then is answered 408 and its share of the budget given back.
	BodyTimeout time.Duration
	// Now is the clock signature timestamps are checked against (nil: time.Now).
	Now func() time.Time
	// Observe, if set, is told each delivery's event type ("" when unreadable), outcome
	// (stored, duplicate, ignored: refused by ingest's guard; or a rejection:
	// bad_signature, too_large, too_slow, not_an_event, not_storable, busy, unavailable) and time
	// to answer (for metrics).
	Observe func(eventType, outcome string, took time.Duration)
}

// Ingest is what the handler needs to make an event durable (ingest.Ingester). It
// returns an error when the event was not stored: the handler answers 400 for
// events.ErrInvalid and ingest.ErrNotStorable, which no redelivery changes, and 503 for
// any other.
type Ingest interface {
	Ingest(ctx context.Context, ev events.Event) (ingest.Result, error)
}

// Handler is the http.Handler for POST /webhooks/stripe.
type Handler struct {
	cfg    Config
	ingest Ingest
	log    zerolog.Logger
	// budget is what is left of cfg.BodyBudget, and what each client holds of it (a
	// client holding nothing has no entry: at most one per delivery being read).
	budget struct {
		sync.Mutex
		left int64
		held map[string]int64
	}
	// warn samples the rejection warnings: a flood of bad requests costs one line per
	// second per reason, not one per request.
	warn *sampler
}

// NewHandler returns a Handler. It returns an error when no secret is configured: a
// webhook endpoint that cannot verify anything must not exist.
func NewHandler(cfg Config, in Ingest, log zerolog.Logger) (*Handler, error) {
	if len(cfg.Secrets) == 0 {
		return nil, errors.New("webhook: no signing secret configured")
	}
	if cfg.Tolerance <= 0 {
		cfg.Tolerance = webhook.DefaultTolerance
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.BodyBudget <= 0 {
		cfg.BodyBudget = DefaultBodyBudget
	}
	cfg.BodyBudget = max(cfg.BodyBudget, cfg.MaxBody)
	if cfg.ClientBudget <= 0 {
		cfg.ClientBudget = cfg.BodyBudget / clientShare
	}
	cfg.ClientBudget = min(max(cfg.ClientBudget, cfg.MaxBody), cfg.BodyBudget)
	if cfg.ClientIP == nil {
		cfg.ClientIP = clientip.FromRequest("")
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{cfg: cfg, ingest: in, log: log, warn: newSampler(time.Second, cfg.Now)}
	h.budget.left = cfg.BodyBudget
	h.budget.held = map[string]int64{}
	return h, nil
}

// Errors the handler answers with. They are the only texts a sender ever sees.
var (
	errTooLarge     = errors.New("request body too large")
	errUnreadable   = errors.New("request body could not be read")
	errTooSlow      = errors.New("request body not received in time")
	errNotSigned    = errors.New("missing Stripe-Signature header")
	errBadSignature = errors.New("no valid signature for this endpoint's secrets")
	errTooOld       = errors.New("signature timestamp outside the tolerance")
	errFuture       = errors.New("signature timestamp in the future")
	errBadHeader    = errors.New("malformed Stripe-Signature header")
	errNotAnEvent   = errors.New("body is not a Stripe event")
	errNotStorable  = errors.New("the event cannot be stored")
	errBusy         = errors.New("too many deliveries at once; retry later")
	errClientBusy   = errors.New("too many deliveries at once from this client; retry later")
	errUnavailable  = errors.New("temporarily unable to store the event; retry later")
)

// envelope is the part of an event that ingest decodes: fields every API version has.
// Decoding the whole event into a map costs a quarter of the throughput for nothing:
// the worker reads the payload later.
type envelope struct {
	ID         string  `json:"id"`
	Object     string  `json:"object"`
	Type       string  `json:"type"`
	Created    int64   `json:"created"`
	Livemode   bool    `json:"livemode"`
	APIVersion *string `json:"api_version"`
	Account    string  `json:"account"`
}

// ServeHTTP verifies, stores and acknowledges one webhook delivery.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	outcome := "stored"
	var ev events.Event
	defer func() {
		if h.cfg.Observe != nil {
			h.cfg.Observe(ev.Type, outcome, time.Since(start))
		}
	}()

	// What can be refused without reading the body is refused first: a sender without
	// a fresh, well-formed signature header costs no memory.
	sig := r.Header.Get("Stripe-Signature")
	if err := h.checkHeader(sig); err != nil {
		outcome = outcomeOf(err)
		h.fail(w, r, err)
		return
	}
	if r.ContentLength > h.cfg.MaxBody {
		outcome = outcomeOf(errTooLarge)
		h.fail(w, r, errTooLarge)
		return
	}

	// The body is held until the answer: it takes its share of the budget for as long,
	// and of its client's.
	release, err := h.reserve(h.cfg.ClientIP(r), r.ContentLength)
	if err != nil {
		outcome = "busy"
		h.fail(w, r, err)
		return
	}
	defer release()

	ev, err = h.parse(w, r, sig)
	if err != nil {
		outcome = outcomeOf(err)
		h.fail(w, r, err)
		return
	}
	res, err := h.ingest.Ingest(r.Context(), ev)
	switch {
	case errors.Is(err, events.ErrInvalid):
		// Signed, yet no Stripe event: the signer's mistake, which no retry mends.
		outcome = outcomeOf(errNotAnEvent)
		h.log.Error().Err(err).Msg("signed webhook is not a valid Stripe event; answered 400")
		h.fail(w, r, errNotAnEvent)
		return
	case errors.Is(err, ingest.ErrNotStorable):
		// A real event the database refuses: a redelivery would be refused too. The
		// catch-up lists it again and skips it; the sweep repairs what it was about.
		outcome = "not_storable"
		h.log.Error().Err(err).Str("event_id", ev.ID).Str("event_type", ev.Type).Msg("webhook event refused by the database; answered 400")
		h.fail(w, r, errNotStorable)
		return
	case err != nil:
		outcome = "unavailable"
		h.log.Error().Err(err).Str("event_id", ev.ID).Str("event_type", ev.Type).Msg("webhook not stored; answered 503")
		h.fail(w, r, errUnavailable)
		return
	}
	switch {
	case res.Duplicate:
		outcome = "duplicate"
	case res.Refused != nil:
		// Answered 200 all the same: a non-2xx makes Stripe retry for days and then
		// disable the endpoint, and no retry would change the answer.
		outcome = "ignored"
	}
	h.log.Debug().Str("event_id", ev.ID).Str("event_type", ev.Type).Bool("duplicate", res.Duplicate).Str("api_version", ev.APIVersion).
		Dur("took", time.Since(start)).Msg("webhook stored")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if res.Duplicate {
		_, _ = io.WriteString(w, `{"received":true,"duplicate":true}`)
		return
	}
	_, _ = io.WriteString(w, `{"received":true}`)
}

// checkHeader checks the Stripe-Signature header as far as it can without the body: it
// is there, well formed (one timestamp, at least one v1 signature), and its timestamp is
// within the tolerance and not ahead of keysync's clock by more than events.ClockSkew.
// A timestamp from the future would let a captured delivery be replayed until then.
func (h *Handler) checkHeader(header string) error {
	if header == "" {
		return errNotSigned
	}
	var at int64
	stamps, signatures := 0, 0
	for _, part := range strings.Split(header, ",") {
		key, value, _ := strings.Cut(part, "=")
		if strings.Count(part, "=") != 1 {
			return errBadHeader // as stripe-go's parser, which verify runs later
		}
		switch key {
		case "t":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil {
				return errBadHeader
			}
			at, stamps = n, stamps+1
		case "v1":
			signatures++
		}
	}
	switch {
	case stamps != 1:
		return errBadHeader
	case signatures == 0:
		return errBadSignature // only other schemes (v0), which keysync does not accept
	}
	now := h.cfg.Now().Unix()
	switch {
	case at < now-int64(h.cfg.Tolerance/time.Second):
		return errTooOld
	case at > now+int64(events.ClockSkew/time.Second):
		return errFuture
	}
	return nil
}

// reserve takes a body's share of the budget for client: its declared length, or the
// largest body when it declares none, and at least minCharge. It returns errBusy when
// the budget cannot spare it and errClientBusy when the client's part cannot, taking
// nothing; release gives the share back.
func (h *Handler) reserve(client string, contentLength int64) (release func(), err error) {
	n := contentLength
	if n < 0 {
		n = h.cfg.MaxBody
	}
	n = max(n, minCharge)
	h.budget.Lock()
	defer h.budget.Unlock()
	switch {
	case h.budget.left < n:
		return nil, errBusy
	case h.budget.held[client]+n > h.cfg.ClientBudget:
		return nil, errClientBusy
	}
	h.budget.left -= n
	h.budget.held[client] += n
	return func() {
		h.budget.Lock()
		defer h.budget.Unlock()
		h.budget.left += n
		if h.budget.held[client] -= n; h.budget.held[client] <= 0 {
			delete(h.budget.held, client)
		}
	}, nil
}

// parse reads, verifies and decodes the request whose signature header is sig. It
// returns one of the handler's errors.
func (h *Handler) parse(w http.ResponseWriter, r *http.Request, sig string) (events.Event, error) {
	var ev events.Event
	body, err := h.read(w, r)
	if err != nil {
		return ev, err
	}
	if err := h.verify(body, sig); err != nil {
		return ev, err
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil || env.ID == "" || env.Type == "" || env.Object != "event" {
		return ev, errNotAnEvent
	}
	// Stored as received, whatever its API version: the worker decides how much of
	// the payload it may trust (events.Pinned). Ingest checks the envelope and makes
	// the payload storable, as for every other path.
	ev = events.Event{
		ID:       env.ID,
		Type:     env.Type,
		Created:  time.Unix(env.Created, 0).UTC(),
		Livemode: env.Livemode,
		Account:  env.Account,
		Payload:  body,
		Source:   events.SourceWebhook,
	}
	if env.APIVersion != nil {
		ev.APIVersion = *env.APIVersion
	}
	return ev, nil
}

// read reads the body, at most MaxBody bytes within BodyTimeout. A body of declared
// length is read into a buffer of that length, so that memory is what the budget
// counted.
func (h *Handler) read(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	// The connection's deadline, not a timer: a read blocked on a silent sender ends
	// with it. A writer that cannot set one (a test's recorder) reads without.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(h.cfg.BodyTimeout))
	limited := http.MaxBytesReader(w, r.Body, h.cfg.MaxBody)
	var body []byte
	var err error
	if r.ContentLength >= 0 {
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(limited, body)
	} else {
		body, err = io.ReadAll(limited)
	}
	if err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			return nil, errTooLarge
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, errTooSlow
		}
		return nil, errUnreadable
	}
	return body, nil
}

// verify checks the signature against every configured secret; any one may match. The
// timestamp was checked before the body was read (checkHeader).
func (h *Handler) verify(body []byte, header string) error {
	for _, secret := range h.cfg.Secrets {
		if webhook.ValidatePayloadIgnoringTolerance(body, header, secret) == nil {
			return nil
		}
	}
	return errBadSignature
}

func outcomeOf(err error) string {
	switch {
	case errors.Is(err, errTooLarge):
		return "too_large"
	case errors.Is(err, errTooSlow):
		return "too_slow"
	case errors.Is(err, errNotAnEvent), errors.Is(err, errUnreadable):
		return "not_an_event"
	}
	return "bad_signature"
}

// fail maps an error to its status and answers. It is the one place that does.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusBadRequest
	switch {
	case errors.Is(err, errTooLarge):
		status = http.StatusRequestEntityTooLarge
		h.warnSampled(r, err, "webhook rejected")
	case errors.Is(err, errTooSlow):
		status = http.StatusRequestTimeout
		h.warnSampled(r, err, "webhook rejected")
	case errors.Is(err, errUnavailable), errors.Is(err, errBusy), errors.Is(err, errClientBusy):
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
		if !errors.Is(err, errUnavailable) {
			h.warnSampled(r, err, "webhook turned away: body budget spent")
		}
	case errors.Is(err, errNotSigned), errors.Is(err, errBadSignature), errors.Is(err, errTooOld), errors.Is(err, errFuture),
		errors.Is(err, errBadHeader):
		h.warnSampled(r, err, "webhook signature rejected")
	case errors.Is(err, errNotStorable):
		// logged by the caller, with the event's id
	default:
		h.warnSampled(r, err, "webhook rejected")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	msg, _ := json.Marshal(map[string]string{"error": err.Error()})
	_, _ = w.Write(msg)
}

// warnSampled logs a rejection, at most once a second for each reason, with how many of
// the same reason were not logged since the last line. Never the body, never a secret:
// only what a person needs to find the sender.
func (h *Handler) warnSampled(r *http.Request, err error, msg string) {
	ok, suppressed := h.warn.allow(err.Error())
	if !ok {
		return
	}
	h.log.Warn().Str("reason", err.Error()).Str("remote_addr", r.RemoteAddr).Int64("content_length", r.ContentLength).
		Int("suppressed", suppressed).Msg(msg)
}
