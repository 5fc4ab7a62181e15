// Package events holds keysync's vocabulary for Stripe events: which types it acts on,
// the API version it speaks, and the record an incoming event becomes.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// StripeAPIVersion is the Stripe API version keysync's stripe-go (v76) decodes: every
// object keysync reads through the API comes in it. Events come in whatever version
// their endpoint (or, from the Events API, the account's default) was at; keysync reads
// the payload of an event in this version, and of any other only the id, the type and
// the object's id and kind (see Pinned).
const StripeAPIVersion = "2023-10-16"

// Pinned reports whether an event rendered in apiVersion can be read as keysync's
// stripe-go reads objects. Any other version may have moved or dropped the fields
// keysync follows (basil moved invoice.subscription under parent and dropped
// charge.invoice), so the object is read again from the API instead.
func Pinned(apiVersion string) bool { return apiVersion == StripeAPIVersion }

// Source says how an event reached keysync.
type Source string

// The sources of an event.
const (
	SourceWebhook   Source = "webhook"
	SourceEventsAPI Source = "events_api"
)

// Status is where a stored event is in its processing.
type Status string

// The states of a stored event.
const (
	StatusPending   Status = "pending"
	StatusProcessed Status = "processed"
	StatusIgnored   Status = "ignored"
	StatusFailed    Status = "failed"
)

// handled lists the event types that can change a license (DESIGN §3). Anything else is
// stored as ignored and acknowledged: a non-2xx for an unwanted type makes Stripe retry
// for days and eventually disable the endpoint.
var handled = map[string]bool{
	"customer.subscription.created": true,
	"customer.subscription.updated": true,
	"customer.subscription.deleted": true,
	"customer.subscription.paused":  true,
	"customer.subscription.resumed": true,
	"invoice.paid":                  true,
	"invoice.payment_succeeded":     true,
	"invoice.payment_failed":        true,
	"checkout.session.completed":    true,
	// A one-time purchase paid by a delayed payment method settles after the session
	// completed (DESIGN §2.1).
	"checkout.session.async_payment_succeeded": true,
	"checkout.session.async_payment_failed":    true,
	"charge.refunded":                          true,
	"charge.dispute.created":                   true,
	"charge.dispute.closed":                    true,
}

// Handled reports whether keysync acts on events of type t.
func Handled(t string) bool { return handled[t] }

// HandledTypes returns the handled event types, for listing events from the Events API.
func HandledTypes() []string {
	out := make([]string, 0, len(handled))
	for t := range handled {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Event is a verified Stripe event as keysync stores it: the few fields ingest needs,
// and the raw payload kept verbatim for the worker and for audits.
type Event struct {
	ID         string
	Type       string
	Created    time.Time
	Livemode   bool
	APIVersion string
	// Account is the connected account the event comes from (Stripe Connect); empty
	// for the account whose API key keysync holds.
	Account string
	Payload []byte
	Source  Source
	// Refused, when set, is why keysync must not act on the event although it may be
	// of a handled type (Guard): it is stored ignored, with the reason as its error.
	Refused *Refusal
}

// InitialStatus is the status an event is stored with: pending when keysync acts on its
// type and did not refuse it, ignored otherwise.
func (e Event) InitialStatus() Status {
	if Handled(e.Type) && e.Refused == nil {
		return StatusPending
	}
	return StatusIgnored
}

// Refusal is why an event must never reach a key, whatever its type.
type Refusal struct {
	// Reason is short and from a fixed set (a metric label, the key of the one log
	// line per reason).
	Reason string
	// Detail says it in words for the event's stored error.
	Detail string
}

// The reasons for a refusal.
const (
	// ReasonLivemode is an event of the other mode than the API key's: a test-mode
	// event reaching a live deployment (or the reverse) names objects keysync cannot
	// read, or worse, test purchases that must not touch real customers' keys.
	ReasonLivemode = "livemode_mismatch"
	// ReasonConnect is an event from a connected account: its objects live in another
	// Stripe account, which keysync neither reads nor licenses.
	ReasonConnect = "connected_account"
)

// Guard refuses the events that must never reach a key: those of the other mode than
// keysync's API key, and those of connected accounts (DESIGN §3, "Mode and account").
// Such events can arrive when an endpoint is shared, or is a Connect endpoint, and the
// Events API can list them.
type Guard struct {
	// Livemode is the API key's mode: true for sk_live_/rk_live_ keys.
	Livemode bool
}

// Check returns why ev must be refused, or nil when keysync may act on it.
func (g Guard) Check(ev Event) *Refusal {
	mode := func(live bool) string {
		if live {
			return "live"
		}
		return "test"
	}
	switch {
	case ev.Livemode != g.Livemode:
		return &Refusal{Reason: ReasonLivemode, Detail: fmt.Sprintf("ignored: a %s-mode event, and keysync's Stripe API key is a %s-mode key",
			mode(ev.Livemode), mode(g.Livemode))}
	case ev.Account != "":
		return &Refusal{Reason: ReasonConnect, Detail: fmt.Sprintf("ignored: an event of the connected account %s; keysync serves only its API key's own account",
			ev.Account)}
	}
	return nil
}

// ErrInvalid means an event's envelope is not that of a Stripe event (an id that is no
// event id, a type or time that no Stripe event has) or its payload is not JSON: it is
// refused and never stored.
var ErrInvalid = errors.New("not a valid Stripe event")

// ClockSkew is how far ahead of keysync's clock a Stripe time may be: a signature
// timestamp further ahead is refused as a replay prepared in advance.
const ClockSkew = 5 * time.Minute

// The envelope's bounds. Stripe's ids are a prefix and a few dozen characters; its
// types and API versions a few words. The bounds keep a signed but odd event from
// filling an index entry or a log line, and are far above anything Stripe sends.
const (
	maxIDLen         = 255
	maxTypeLen       = 128
	maxAPIVersionLen = 64
	// maxCreatedAhead is how far in the future an event may have been created. Stripe's
	// test clocks create events at their frozen time, which a vendor can move ahead by
	// up to two billing intervals per advance (a guess from Stripe's documentation of
	// test clocks; not measured); years beyond that are no Stripe event's.
	maxCreatedAhead = 5 * 365 * 24 * time.Hour
)

// stripeLaunch is before any Stripe event: Stripe opened to the public in 2011.
var stripeLaunch = time.Date(2011, 1, 1, 0, 0, 0, 0, time.UTC)

// Storable returns ev as keysync stores it: its envelope checked and its payload in a
// form Postgres' jsonb accepts (StorablePayload). Every path that stores an event
// (webhook, catch-up, replay) goes through it, in ingest, so that an event stored by one
// is stored the same by the others. It returns ErrInvalid (wrapped, with the field at
// fault) for an event that is not a Stripe event.
func Storable(ev Event, now time.Time) (Event, error) {
	if err := ev.checkEnvelope(now); err != nil {
		return Event{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	payload, err := StorablePayload(ev.Payload)
	if err != nil {
		return Event{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	ev.Payload = payload
	return ev, nil
}

// checkEnvelope checks the fields that are stored in columns of their own.
func (e Event) checkEnvelope(now time.Time) error {
	switch {
	case !strings.HasPrefix(e.ID, "evt_") || len(e.ID) > maxIDLen || !isWord(e.ID, "_"):
		return fmt.Errorf("id: want evt_ and at most %d letters, digits or underscores", maxIDLen)
	case e.Type == "" || len(e.Type) > maxTypeLen || !isWord(e.Type, "._") || e.Type != strings.ToLower(e.Type):
		return fmt.Errorf("type: want at most %d lowercase letters, digits, dots or underscores", maxTypeLen)
	case len(e.APIVersion) > maxAPIVersionLen || !isWord(e.APIVersion, "-._"):
		return fmt.Errorf("api_version: want at most %d letters, digits, dashes or dots", maxAPIVersionLen)
	case e.Account != "" && (!strings.HasPrefix(e.Account, "acct_") || len(e.Account) > maxIDLen || !isWord(e.Account, "_")):
		return fmt.Errorf("account: want acct_ and at most %d letters, digits or underscores", maxIDLen)
	case e.Created.Before(stripeLaunch) || e.Created.After(now.Add(maxCreatedAhead)):
		return fmt.Errorf("created: want a time from %s to %s", stripeLaunch.Format(time.DateOnly), now.Add(maxCreatedAhead).Format(time.DateOnly))
	}
	return nil
}

// isWord reports whether s holds only ASCII letters, digits and the characters of
// extra.
func isWord(s, extra string) bool {
	for i := range len(s) {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return false
		}
	}
	return true
}

// nulEscape is how a NUL character appears inside a JSON string.
var nulEscape = []byte(`\u0000`)

// StorablePayload returns payload in a form Postgres' jsonb accepts. jsonb refuses the
// NUL character and lone UTF-16 surrogates (a \ud800 with no pair), which are valid JSON
// and can reach an event through free-text fields such as metadata, and invalid UTF-8.
// Refusing the event would make Stripe redeliver it for days to no avail, and stall the
// catch-up on it, so all three become U+FFFD; the worker reads the objects fresh from
// Stripe anyway. A payload without any is returned as it is, without a copy. It returns
// an error when payload is not JSON.
func StorablePayload(payload []byte) ([]byte, error) {
	if !bytes.Contains(payload, nulEscape) && !hasSurrogateEscape(payload) && utf8.Valid(payload) {
		return payload, nil
	}
	// Decoding replaces invalid UTF-8 and lone surrogates with U+FFFD (encoding/json's
	// documented behaviour); NULs are replaced below.
	var v any
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber() // keep ids and amounts exactly as sent
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	out, err := json.Marshal(replaceNUL(v))
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	return out, nil
}

// hasSurrogateEscape reports whether payload holds a \uD800-\uDFFF escape. A valid pair
// (an escaped emoji) is reported too: it goes the slow way and is stored as UTF-8, which
// is the same text.
func hasSurrogateEscape(payload []byte) bool {
	for rest := payload; ; {
		i := bytes.Index(rest, []byte(`\u`))
		if i < 0 || i+4 > len(rest) {
			return false
		}
		if hi, next := rest[i+2], rest[i+3]; (hi == 'd' || hi == 'D') && strings.IndexByte("89abcdefABCDEF", next) >= 0 {
			return true
		}
		rest = rest[i+2:]
	}
}
func replaceNUL(v any) any {
	switch t := v.(type) {
	case string:
		return strings.ReplaceAll(t, "\x00", "\uFFFD")
	case []any:
		for i := range t {
			t[i] = replaceNUL(t[i])
		}
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			out[strings.ReplaceAll(k, "\x00", "\uFFFD")] = replaceNUL(val)
		}
		return out
	}
	return v
}
