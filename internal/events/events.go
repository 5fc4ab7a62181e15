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
	"charge.refunded":               true,
	"charge.dispute.created":        true,
	"charge.dispute.closed":         true,
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
	Payload    []byte
	Source     Source
}

// InitialStatus is the status an event is stored with: pending when keysync acts on its
// type, ignored otherwise.
func (e Event) InitialStatus() Status {
	if Handled(e.Type) {
		return StatusPending
	}
	return StatusIgnored
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
