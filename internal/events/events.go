// Package events holds keysync's vocabulary for Stripe events: which types it acts on,
// the API version it speaks, and the record an incoming event becomes.
package events

import (
	"sort"
	"time"
)

// StripeAPIVersion is the Stripe API version keysync's stripe-go (v76) decodes. Webhook
// endpoints must be created with it; events rendered in another version would decode
// with fields missing.
const StripeAPIVersion = "2023-10-16"

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
