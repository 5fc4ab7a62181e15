// Package events holds keysync's vocabulary for Stripe events: which types it acts on,
// the API version it speaks, and the record an incoming event becomes.
package events

import (
	"bytes"
	"encoding/json"
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

// nulEscape is how a NUL character appears inside a JSON string.
var nulEscape = []byte(`\u0000`)

// StorablePayload returns payload in a form Postgres' jsonb accepts. jsonb refuses the
// NUL character, which is valid JSON and can reach an event through free-text fields
// such as metadata, and invalid UTF-8. Refusing the event would make Stripe redeliver it
// for days to no avail, so both become U+FFFD; the worker reads the objects fresh from
// Stripe anyway. A payload without either is returned as it is, without a copy.
func StorablePayload(payload []byte) ([]byte, error) {
	if !bytes.Contains(payload, nulEscape) && utf8.Valid(payload) {
		return payload, nil
	}
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
