package delivery

import (
	"context"
	"encoding/json"
	"html/template"
	"io"
	"mime"
	"net/http"
	netmail "net/mail"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// ResendPath is where the lost-keys form posts.
const ResendPath = "/license/resend"

// ResendQueue queues lost-keys requests (a River job, jobs.ResendKeysArgs): the
// request is answered before anyone looks the address up, so the answer cannot tell
// whether it is known.
type ResendQueue interface {
	// QueueResend queues the e-mail of address's keys. It queues at most one per
	// address (compared in lower case) in each period of jobs.ResendPeriod, across
	// replicas; further requests are dropped silently: the per-address limit.
	QueueResend(ctx context.Context, address string) error
}

// ResendOptions configure the lost-keys form.
type ResendOptions struct {
	// Template renders the HTML answers (default: DefaultPageTemplate).
	Template *template.Template
	// PerMinute and Burst limit each client's requests (default 5 a minute, 5 at once).
	PerMinute, Burst int
	// ClientIP names a request's client for the limit (default ClientIP("")).
	ClientIP func(*http.Request) string
}

// Resend is the lost-keys form's endpoint: POST /license/resend with an e-mail
// address (form field or JSON "email"). It is safe for concurrent use.
type Resend struct {
	queue ResendQueue
	opts  ResendOptions
	limit *limiter
	log   zerolog.Logger
}

// NewResend returns the endpoint; it queues requests on queue.
func NewResend(queue ResendQueue, opts ResendOptions, log zerolog.Logger) *Resend {
	if opts.Template == nil {
		opts.Template = DefaultPageTemplate()
	}
	if opts.PerMinute <= 0 {
		opts.PerMinute = 5
	}
	if opts.Burst <= 0 {
		opts.Burst = 5
	}
	if opts.ClientIP == nil {
		opts.ClientIP = ClientIP("")
	}
	return &Resend{queue: queue, opts: opts, limit: newLimiter(opts.PerMinute, opts.Burst), log: log}
}

// ServeHTTP answers 202 with the same body whether or not the address belongs to a
// customer (and whether or not this address was asked for just before), 400 for no
// usable address, 429 past the client's limit, 503 when the request cannot be queued.
func (h *Resend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	answer := func(s Status) { writePage(w, r, h.opts.Template, PageData{Status: s}, statusCode(s), h.log) }
	if ok, wait := h.limit.allow(h.opts.ClientIP(r), time.Now()); !ok {
		w.Header().Set("Retry-After", retryAfter(wait))
		answer(StatusRateLimited)
		return
	}
	address, ok := readAddress(r)
	if !ok {
		answer(StatusBadRequest)
		return
	}
	// The same path for every address: queued (or dropped by the per-address limit)
	// and answered, never looked up here.
	if err := h.queue.QueueResend(r.Context(), address); err != nil {
		h.log.Warn().Err(err).Msg("lost-keys request could not be queued")
		w.Header().Set("Retry-After", "10")
		answer(StatusUnavailable)
		return
	}
	answer(StatusResendAccepted)
}

// readAddress reads the e-mail address from a form or a JSON body (at most 4 KiB),
// and accepts it only as a plain address.
func readAddress(r *http.Request) (string, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	if err != nil {
		return "", false
	}
	var raw string
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/json" {
		var v struct {
			Email string `json:"email"`
		}
		if json.Unmarshal(body, &v) != nil {
			return "", false
		}
		raw = v.Email
	} else {
		q, err := url.ParseQuery(string(body))
		if err != nil {
			return "", false
		}
		raw = q.Get("email")
	}
	raw = strings.TrimSpace(raw)
	a, err := netmail.ParseAddress(raw)
	if err != nil || a.Address != raw || len(raw) > 254 {
		return "", false
	}
	return raw, true
}
