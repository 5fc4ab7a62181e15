package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
)

// Status is what a license page or a lost-keys answer says; templates branch on it.
type Status string

// The statuses, each with its HTTP status code (statusCode).
const (
	// StatusReady: the keys (200).
	StatusReady Status = "ready"
	// StatusProcessing: the payment is not complete yet, or the key is still being
	// made; the page asks again by itself (202).
	StatusProcessing Status = "processing"
	// StatusNotFound: no such session for this account, or it sold nothing (404).
	StatusNotFound Status = "not_found"
	// StatusGone: the session is older than the page's maximum age (410).
	StatusGone Status = "gone"
	// StatusRateLimited: too many requests from this client (429).
	StatusRateLimited Status = "rate_limited"
	// StatusUnavailable: Stripe or Cryptolens did not answer; the page asks again (503).
	StatusUnavailable Status = "unavailable"
	// StatusError: the key cannot be made (a mapping the vendor must fix) (500).
	StatusError Status = "error"
	// StatusResendAccepted: the lost-keys form was accepted, whatever the address (202).
	StatusResendAccepted Status = "resend_accepted"
	// StatusBadRequest: the lost-keys form has no usable e-mail address (400).
	StatusBadRequest Status = "bad_request"
)

// Statuses lists every status, for checking a template against each.
var Statuses = []Status{StatusReady, StatusProcessing, StatusNotFound, StatusGone, StatusRateLimited, StatusUnavailable,
	StatusError, StatusResendAccepted, StatusBadRequest}

func statusCode(s Status) int {
	switch s {
	case StatusReady:
		return http.StatusOK
	case StatusProcessing, StatusResendAccepted:
		return http.StatusAccepted
	case StatusNotFound:
		return http.StatusNotFound
	case StatusGone:
		return http.StatusGone
	case StatusRateLimited:
		return http.StatusTooManyRequests
	case StatusUnavailable:
		return http.StatusServiceUnavailable
	case StatusBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// PageData is what the page template renders.
type PageData struct {
	Status Status
	// Licenses are the keys (ready only); none when the purchase sold no license.
	Licenses []License
	// PortalURL is the customer portal's address ("" when none is configured).
	PortalURL string
	// Refresh, when not 0, is the seconds after which the page should load itself again
	// (a <meta http-equiv="refresh">: it works without JavaScript).
	Refresh int
	// Nonce must be the nonce attribute of every inline <style> and <script>: the
	// Content-Security-Policy allows no other.
	Nonce string
	// ResendPath is where the lost-keys form posts ("" when e-mail is off: no form).
	ResendPath string
}

// PageOptions configure the license page.
type PageOptions struct {
	// Livemode is the mode of keysync's Stripe key: a session of the other mode is
	// not found.
	Livemode bool
	// MaxAge is how long after its creation a session shows its keys (default 7
	// days); an older one answers 410.
	MaxAge time.Duration
	// PortalURL is the customer portal's address, shown with the keys.
	PortalURL string
	// Template renders the HTML answers (default: DefaultPageTemplate).
	Template *template.Template
	// PerMinute and Burst limit each client's requests (default 30 a minute, 10 at
	// once): the page's own refreshes (every Refresh) stay well within.
	PerMinute, Burst int
	// ClientIP names a request's client for the limit (default ClientIP("")).
	ClientIP func(*http.Request) string
	// ResendPath is where the lost-keys form posts ("" when e-mail is off).
	ResendPath string
	// Refresh is how soon a waiting page loads itself again (default 5s).
	Refresh time.Duration
	// Timeout bounds the work of one answer (default 20s, within the public listener's
	// 30-second WriteTimeout): past it the page answers 202 and asks again, while a
	// Sync cut by it is finished by the next request or the webhook.
	Timeout time.Duration
	// Now is the clock sessions' ages are judged by (default time.Now).
	Now func() time.Time
}

// Page is the license page: GET /license?session_id=cs_... It is safe for concurrent
// use.
type Page struct {
	checkout Checkout
	sync     Syncer
	licenses Licenses
	opts     PageOptions
	limit    *limiter
	log      zerolog.Logger
}

// NewPage returns the license page. It reads sessions through checkout, syncs what
// they sold through sync, and shows the keys licenses reads.
func NewPage(checkout Checkout, sync Syncer, licenses Licenses, opts PageOptions, log zerolog.Logger) *Page {
	if opts.MaxAge <= 0 {
		opts.MaxAge = 7 * 24 * time.Hour
	}
	if opts.Template == nil {
		opts.Template = DefaultPageTemplate()
	}
	if opts.PerMinute <= 0 {
		opts.PerMinute = 30
	}
	if opts.Burst <= 0 {
		opts.Burst = 10
	}
	if opts.ClientIP == nil {
		opts.ClientIP = ClientIP("")
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 5 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultPageTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Page{checkout: checkout, sync: sync, licenses: licenses, opts: opts, limit: newLimiter(opts.PerMinute, opts.Burst), log: log}
}

// Path is where the page is served.
const Path = "/license"

// DefaultPageTimeout is PageOptions.Timeout's default.
const DefaultPageTimeout = 20 * time.Second

// ServeHTTP answers GET /license?session_id=...: 200 with the keys, 202 while the
// payment is processing (or the answer ran out of time), 404 for a session this
// account does not have, 410 for one older than MaxAge, 429 past the client's limit,
// 503 when Stripe or Cryptolens does not answer. JSON for Accept: application/json,
// HTML otherwise.
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if ok, wait := p.limit.allow(p.opts.ClientIP(r), time.Now()); !ok {
		w.Header().Set("Retry-After", retryAfter(wait))
		p.render(w, r, PageData{Status: StatusRateLimited})
		return
	}
	// The answer's work is not cut when the customer leaves (closes the tab, or the
	// browser gives up): a Sync cut between CreateKey and the record of the new key
	// would leave the key to be found again by its marker, its record and e-mail late.
	// Its own deadline keeps the answer within the listener's WriteTimeout.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), p.opts.Timeout)
	defer cancel()
	p.render(w, r, p.answer(ctx, r.URL.Query().Get("session_id")))
}

// sessionID is a Checkout Session id: Stripe's are about 66 characters.
var sessionID = regexp.MustCompile(`^cs_(test|live)_[A-Za-z0-9]{1,200}$`)

// answer finds what the page shows for session id.
func (p *Page) answer(ctx context.Context, id string) PageData {
	// 1. An id that cannot be a session of this account's mode costs no Stripe call.
	m := sessionID.FindStringSubmatch(id)
	if m == nil || (m[1] == "live") != p.opts.Livemode {
		return PageData{Status: StatusNotFound}
	}

	// 2. Stripe's session: complete and paid, this account's, recent.
	sess, err := p.checkout.GetCheckoutSession(ctx, id)
	switch {
	case errors.Is(err, stripeapi.ErrNotFound):
		return PageData{Status: StatusNotFound}
	case errors.Is(err, ErrBusy):
		return PageData{Status: StatusUnavailable} // SessionReads logs it, once a minute
	case err != nil && ctx.Err() != nil:
		p.log.Warn().Msg("license page: out of time reading the checkout session; the page asks again")
		return PageData{Status: StatusProcessing}
	case err != nil:
		p.log.Warn().Str("error", scrub(err, id)).Msg("license page: cannot read the checkout session")
		return PageData{Status: StatusUnavailable}
	}
	status, owner := judge(sess, p.opts.Livemode, p.opts.Now(), p.opts.MaxAge)
	if status != StatusReady {
		return PageData{Status: status}
	}
	log := p.log.With().Str(string(owner.Kind)+"_id", owner.ID).Logger()

	// 3. Sync what it sold now, under the usual lock: the key need not wait for the
	// webhook.
	cause := syncer.Cause{Kind: syncer.CauseCustomer, ID: id}
	var synced Synced
	if owner.Kind == OwnerPurchase {
		synced, err = p.sync.SyncPurchase(ctx, owner.ID, cause)
	} else {
		synced, err = p.sync.SyncSubscription(ctx, owner.ID, cause)
	}

	// 4. The keys as they are now. A Sync that failed still shows keys made before; one
	// that ran out of time asks again (202), as a payment on its way does.
	lics, lerr := p.licenses.Of(ctx, owner)
	switch {
	case lerr == nil && len(lics) > 0:
		if err != nil {
			secrets := []string{id}
			for _, l := range lics {
				secrets = append(secrets, l.Key)
			}
			log.Warn().Str("error", scrub(err, secrets...)).Msg("license page: the sync failed; showing the keys as they are")
		}
		return PageData{Status: StatusReady, Licenses: lics, PortalURL: p.opts.PortalURL}
	case ctx.Err() != nil:
		log.Warn().Dur("timeout", p.opts.Timeout).Msg("license page: out of time; the page asks again")
		return PageData{Status: StatusProcessing}
	case lerr != nil && failure.IsPermanent(lerr):
		log.Error().Str("error", scrub(lerr, id)).Msg("license page: cannot read the keys")
		return PageData{Status: StatusError}
	case lerr != nil:
		log.Warn().Str("error", scrub(lerr, id)).Msg("license page: cannot read the keys")
		return PageData{Status: StatusUnavailable}
	case err != nil && failure.IsPermanent(err):
		log.Error().Str("error", scrub(err, id)).Msg("license page: no key can be made for this checkout")
		return PageData{Status: StatusError}
	case err != nil:
		log.Warn().Str("error", scrub(err, id)).Msg("license page: the sync failed; the page asks again")
		return PageData{Status: StatusUnavailable}
	case synced.Unmapped:
		return PageData{Status: StatusReady, PortalURL: p.opts.PortalURL}
	}
	// Synced, mapped, and no key yet: the first payment is still pending.
	return PageData{Status: StatusProcessing}
}

// judge says what a session shows: not found (another mode, sold nothing, never
// completed), gone (older than maxAge), processing (not paid yet), or ready, with the
// owner of its keys.
func judge(s *stripe.CheckoutSession, livemode bool, now time.Time, maxAge time.Duration) (Status, Owner) {
	switch {
	case s == nil || s.Livemode != livemode:
		return StatusNotFound, Owner{}
	case now.Sub(time.Unix(s.Created, 0)) > maxAge:
		return StatusGone, Owner{}
	case s.Mode != stripe.CheckoutSessionModeSubscription && s.Mode != stripe.CheckoutSessionModePayment:
		return StatusNotFound, Owner{} // setup mode sells nothing
	case s.Status == stripe.CheckoutSessionStatusOpen:
		return StatusProcessing, Owner{} // the customer is still paying
	case s.Status != stripe.CheckoutSessionStatusComplete:
		return StatusNotFound, Owner{} // expired: never paid
	case s.PaymentStatus != stripe.CheckoutSessionPaymentStatusPaid &&
		s.PaymentStatus != stripe.CheckoutSessionPaymentStatusNoPaymentRequired:
		return StatusProcessing, Owner{} // an asynchronous payment (a bank debit) is on its way
	case s.Mode == stripe.CheckoutSessionModePayment:
		return StatusReady, Owner{Kind: OwnerPurchase, ID: s.ID}
	case s.Subscription == nil || s.Subscription.ID == "":
		return StatusNotFound, Owner{}
	}
	return StatusReady, Owner{Kind: OwnerSubscription, ID: s.Subscription.ID}
}

// render writes d as JSON or HTML, with the headers every answer carries.
func (p *Page) render(w http.ResponseWriter, r *http.Request, d PageData) {
	code := statusCode(d.Status)
	if d.Status == StatusProcessing || d.Status == StatusUnavailable {
		d.Refresh = int(p.opts.Refresh / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(d.Refresh))
	}
	if d.Status == StatusNotFound || d.Status == StatusGone {
		d.ResendPath = p.opts.ResendPath
	}
	writePage(w, r, p.opts.Template, d, code, p.log)
}

// writePage writes one answer of the page or of the lost-keys form. Every answer,
// errors too, is private (no cache may keep a key), sends no Referer on (the portal
// link must not learn the session id), and allows only the template's own inline
// style and script, by a nonce made for this answer.
func writePage(w http.ResponseWriter, r *http.Request, tmpl *template.Template, d PageData, code int, log zerolog.Logger) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Vary", "Accept")
	d.Nonce = nonce()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'nonce-"+d.Nonce+"'; script-src 'nonce-"+d.Nonce+
		"'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

	if wantsJSON(r) {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(pageJSON(d))
		return
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, d); err != nil {
		log.Error().Err(err).Str("status", string(d.Status)).Msg("license page template failed")
		http.Error(w, "the license page cannot be shown", http.StatusInternalServerError)
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// pageJSON is the JSON answer (see docs/license-page.md).
func pageJSON(d PageData) map[string]any {
	out := map[string]any{"status": d.Status}
	if d.Status == StatusReady {
		lics := d.Licenses
		if lics == nil {
			lics = []License{}
		}
		out["licenses"] = lics
		if d.PortalURL != "" {
			out["portal_url"] = d.PortalURL
		}
	}
	if d.Refresh > 0 {
		out["retry_after"] = d.Refresh
	}
	return out
}

// wantsJSON reports whether the request's Accept names application/json.
func wantsJSON(r *http.Request) bool {
	for part := range strings.SplitSeq(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "application/json" {
			return true
		}
	}
	return false
}

// scrub is err's text without the secrets: the session id opens the page, and keys are
// never logged by the customer side.
func scrub(err error, secrets ...string) string {
	text := err.Error()
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, "[redacted]")
		}
	}
	return text
}

func nonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
