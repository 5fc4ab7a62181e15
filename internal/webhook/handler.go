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
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
)

// DefaultMaxBody is the largest webhook body accepted. Stripe's events are a few KB;
// anything near this is not from Stripe.
const DefaultMaxBody = 1 << 20

// Config configures the Handler.
type Config struct {
	// Secrets are the endpoint signing secrets (whsec_...). An event signed with any one
	// of them is accepted, so a secret can be rotated without downtime.
	Secrets []string
	// Tolerance is how old a signature's timestamp may be (default 5 minutes, Stripe's).
	Tolerance time.Duration
	// MaxBody caps the request body (default DefaultMaxBody).
	MaxBody int64
	// Observe, if set, is told each delivery's event type ("" when unreadable), outcome
	// (stored, duplicate, ignored: refused by ingest's guard, or a rejection) and time to
	// answer (for metrics).
	Observe func(eventType, outcome string, took time.Duration)
}

// Ingest is what the handler needs to make an event durable (ingest.Ingester). It
// returns an error when the event was not stored, and the handler answers 503.
type Ingest interface {
	Ingest(ctx context.Context, ev events.Event) (ingest.Result, error)
}

// Handler is the http.Handler for POST /webhooks/stripe.
type Handler struct {
	cfg    Config
	ingest Ingest
	log    zerolog.Logger
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
	return &Handler{cfg: cfg, ingest: in, log: log}, nil
}

// Errors the handler answers with. They are the only texts a sender ever sees.
var (
	errTooLarge     = errors.New("request body too large")
	errUnreadable   = errors.New("request body could not be read")
	errNotSigned    = errors.New("missing Stripe-Signature header")
	errBadSignature = errors.New("no valid signature for this endpoint's secrets")
	errTooOld       = errors.New("signature timestamp outside the tolerance")
	errBadHeader    = errors.New("malformed Stripe-Signature header")
	errNotAnEvent   = errors.New("body is not a Stripe event")
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
	ev, err := h.parse(w, r)
	if err != nil {
		outcome = outcomeOf(err)
		h.fail(w, r, err)
		return
	}
	res, err := h.ingest.Ingest(r.Context(), ev)
	if err != nil {
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

// parse reads, verifies and decodes the request. It returns one of the handler's errors.
func (h *Handler) parse(w http.ResponseWriter, r *http.Request) (events.Event, error) {
	var ev events.Event
	if r.ContentLength > h.cfg.MaxBody {
		return ev, errTooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return ev, errTooLarge
		}
		return ev, errUnreadable
	}
	if err := h.verify(body, r.Header.Get("Stripe-Signature")); err != nil {
		return ev, err
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil || env.ID == "" || env.Type == "" || env.Object != "event" {
		return ev, errNotAnEvent
	}
	payload, err := events.StorablePayload(body)
	if err != nil {
		return ev, errNotAnEvent
	}
	// Stored as received, whatever its API version: the worker decides how much of
	// the payload it may trust (events.Pinned).
	ev = events.Event{
		ID:       env.ID,
		Type:     env.Type,
		Created:  time.Unix(env.Created, 0).UTC(),
		Livemode: env.Livemode,
		Account:  env.Account,
		Payload:  payload,
		Source:   events.SourceWebhook,
	}
	if env.APIVersion != nil {
		ev.APIVersion = *env.APIVersion
	}
	return ev, nil
}

// verify checks the signature against every configured secret; any one may match.
func (h *Handler) verify(body []byte, header string) error {
	if header == "" {
		return errNotSigned
	}
	var last error
	for _, secret := range h.cfg.Secrets {
		last = webhook.ValidatePayloadWithTolerance(body, header, secret, h.cfg.Tolerance)
		if last == nil {
			return nil
		}
	}
	switch {
	case errors.Is(last, webhook.ErrTooOld):
		return errTooOld
	case errors.Is(last, webhook.ErrInvalidHeader):
		return errBadHeader
	case errors.Is(last, webhook.ErrNotSigned):
		return errNotSigned
	default:
		return errBadSignature
	}
}

func outcomeOf(err error) string {
	switch {
	case errors.Is(err, errTooLarge):
		return "too_large"
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
	case errors.Is(err, errUnavailable):
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	case errors.Is(err, errNotSigned), errors.Is(err, errBadSignature), errors.Is(err, errTooOld), errors.Is(err, errBadHeader):
		// Never the body, never a secret: only what a person needs to find the sender.
		h.log.Warn().Str("reason", err.Error()).Str("remote_addr", r.RemoteAddr).
			Int64("content_length", r.ContentLength).Msg("webhook signature rejected")
	default:
		h.log.Warn().Str("reason", err.Error()).Str("remote_addr", r.RemoteAddr).Msg("webhook rejected")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	msg, _ := json.Marshal(map[string]string{"error": err.Error()})
	_, _ = w.Write(msg)
}
