// Package stripesim is a stateful, in-memory Stripe for API version 2023-10-16: products,
// prices, customers, subscriptions, invoices, charges, refunds, disputes, checkout
// sessions and events, driven by a test clock and control actions that emit the events
// Stripe emits, in Stripe's order; signed webhook delivery with retries, duplicates,
// reordering and loss; events in a newer API version (2025-03-31.basil) for accounts and
// endpoints that use it; and fault injection on the API. Each behaviour names its source
// in docs/fidelity.md. It serves the API as an http.Handler.
package stripesim

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"
)

// APIVersion is the API version stripe-go v76 pins and the simulator's objects are kept
// in; every other version is rendered from it.
const APIVersion = "2023-10-16"

// VersionBasil is the first API version in which invoices lose `subscription` and
// `paid`, charges lose `invoice` and subscriptions lose `current_period_*`: what accounts
// created since April 2025 default to.
const VersionBasil = "2025-03-31.basil"

// CheckVersion returns an error unless the simulator can render API version v.
func CheckVersion(v string) error {
	if v != APIVersion && v != VersionBasil {
		return fmt.Errorf("API version %q: the simulator renders %s and %s", v, APIVersion, VersionBasil)
	}
	return nil
}

// Options configure a Sim.
type Options struct {
	// APIKey is the secret key requests must carry (default "sk_test_sim").
	APIKey string
	// Start is the test clock's start (default 2026-01-01T00:00:00Z).
	Start time.Time
	// Seed makes ids and fault draws repeatable (default 1).
	Seed uint64
	// Dunning sets what happens after failed renewal payments.
	Dunning Dunning
	// FinalizeDelay is how long a renewal invoice stays a draft before it is finalized
	// and charged (Stripe: about an hour).
	FinalizeDelay time.Duration
	// NoEvents emits no events: none is kept, listed or delivered. For benchmarks that
	// seed hundreds of thousands of subscriptions and need only the API.
	NoEvents bool
	// AccountAPIVersion is the account's default API version (default APIVersion): the
	// version events are created in for the Events API and for endpoints that pin none,
	// and of API answers to requests that send no Stripe-Version. New panics on a version
	// CheckVersion refuses.
	AccountAPIVersion string
	// CanceledMetadata lets a canceled subscription's metadata change, as Stripe's answers
	// since 2026 say it may; by default it is refused, as Stripe's answers in 2023–24 did.
	CanceledMetadata bool
}

// Dunning mirrors the account's retry settings for failed payments.
type Dunning struct {
	// Retries are the delays, from the first failure, of each retry (default 3, 5 and
	// 7 days: four attempts in all).
	Retries []time.Duration
	// Final is the subscription's status after the last failed retry: "canceled"
	// (default) or "unpaid".
	Final string
	// InvoiceGrace is, for subscriptions that send invoices, how long after an unpaid
	// invoice's due date the subscription stays past_due before Final applies (the
	// account's "additional deadline"). Zero leaves it past_due.
	InvoiceGrace time.Duration
}

// Sim is the simulator. Create it with New.
type Sim struct {
	mu   sync.Mutex
	opts Options
	now  time.Time
	rng  *rand.Rand
	seq  int64

	products  map[string]*Product
	prices    map[string]*Price
	customers map[string]*Customer
	subs      map[string]*Subscription
	invoices  map[string]*Invoice
	charges   map[string]*Charge
	refunds   map[string]*Refund
	disputes  map[string]*Dispute
	sessions  map[string]*CheckoutSession
	events    []*Event
	eventByID map[string]*Event

	idempotent map[string]idemResult
	faults     Faults
	requests   map[string]int
	faulted    map[int]int

	endpoints []*Endpoint
	// webhooksHeld holds the deliveries of every endpoint, new ones too (HoldWebhooks).
	webhooksHeld bool
}

// New returns an empty simulator.
func New(opts Options) *Sim {
	if opts.APIKey == "" {
		opts.APIKey = "sk_test_sim"
	}
	if opts.Start.IsZero() {
		opts.Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	if len(opts.Dunning.Retries) == 0 {
		opts.Dunning.Retries = []time.Duration{3 * day, 5 * day, 7 * day}
	}
	if opts.Dunning.Final == "" {
		opts.Dunning.Final = StatusCanceled
	}
	if opts.FinalizeDelay == 0 {
		opts.FinalizeDelay = time.Hour
	}
	if opts.AccountAPIVersion == "" {
		opts.AccountAPIVersion = APIVersion
	}
	if err := CheckVersion(opts.AccountAPIVersion); err != nil {
		panic("stripesim: " + err.Error())
	}
	return &Sim{
		opts:       opts,
		now:        opts.Start.UTC().Truncate(time.Second),
		rng:        rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5851f42d4c957f2d)),
		products:   map[string]*Product{},
		prices:     map[string]*Price{},
		customers:  map[string]*Customer{},
		subs:       map[string]*Subscription{},
		invoices:   map[string]*Invoice{},
		charges:    map[string]*Charge{},
		refunds:    map[string]*Refund{},
		disputes:   map[string]*Dispute{},
		sessions:   map[string]*CheckoutSession{},
		eventByID:  map[string]*Event{},
		idempotent: map[string]idemResult{},
		requests:   map[string]int{},
		faulted:    map[int]int{},
	}
}

const day = 24 * time.Hour

// Subscription statuses.
const (
	StatusIncomplete        = "incomplete"
	StatusIncompleteExpired = "incomplete_expired"
	StatusTrialing          = "trialing"
	StatusActive            = "active"
	StatusPastDue           = "past_due"
	StatusCanceled          = "canceled"
	StatusUnpaid            = "unpaid"
	StatusPaused            = "paused"
)

// Collection methods.
const (
	ChargeAutomatically = "charge_automatically"
	SendInvoice         = "send_invoice"
)

// Usage types of a recurring price.
const (
	UsageLicensed = "licensed"
	UsageMetered  = "metered"
)

// Behaviours of a subscription's pause_collection.
const (
	PauseKeepAsDraft       = "keep_as_draft"
	PauseMarkUncollectible = "mark_uncollectible"
	PauseVoid              = "void"
)

// Product is a Stripe product.
type Product struct {
	ID       string
	Name     string
	Metadata map[string]string
	Created  int64
}

// Price is a Stripe price: recurring, or one-time.
type Price struct {
	ID         string
	Product    string
	UnitAmount int64
	Currency   string
	// OneTime makes the price of type one_time: it has no interval and sells through
	// Checkout in payment mode and on invoices, never on a subscription.
	OneTime       bool
	Interval      string // day, week, month, year
	IntervalCount int64
	// UsageType is licensed (billed in advance for a quantity) or metered (billed in
	// arrears for the usage reported during the period).
	UsageType string
	Nickname  string
	Metadata  map[string]string
	Created   int64
}

func (p *Price) metered() bool { return p.UsageType == UsageMetered }

// Customer is a Stripe customer.
type Customer struct {
	ID       string
	Email    string
	Name     string
	Metadata map[string]string
	Created  int64
	// CardDeclines makes every payment attempt fail until cleared.
	CardDeclines bool
	// failNext makes only the next payment attempt fail.
	failNext bool
}

// SubscriptionItem is one price on a subscription.
type SubscriptionItem struct {
	ID       string
	Price    string
	Quantity int64 // 0 for a metered price, which has none
	Created  int64
	// Usage is the metered usage reported in the current period.
	Usage int64
}

// PauseCollection is a subscription's pause_collection: its invoices are not collected.
type PauseCollection struct {
	Behavior  string // keep_as_draft, mark_uncollectible or void
	ResumesAt int64  // 0: until cleared
}

// Subscription is a Stripe subscription.
type Subscription struct {
	ID                 string
	Customer           string
	Status             string
	Items              []*SubscriptionItem
	Currency           string
	Created            int64
	StartDate          int64
	BillingCycleAnchor int64
	CurrentPeriodStart int64
	CurrentPeriodEnd   int64
	TrialStart         int64
	TrialEnd           int64
	CancelAtPeriodEnd  bool
	CancelAt           int64
	CanceledAt         int64
	EndedAt            int64
	CancelReason       string
	CancelComment      string
	CancelFeedback     string
	Metadata           map[string]string
	LatestInvoice      string
	// CollectionMethod is charge_automatically or send_invoice; DaysUntilDue is how
	// long a sent invoice gives the customer to pay.
	CollectionMethod string
	DaysUntilDue     int64
	PauseCollection  *PauseCollection
	seq              int64

	// draft is the renewal invoice waiting to be finalized at finalizeAt.
	draft      string
	finalizeAt int64
	// dunning state of the open invoice
	firstFailure int64
	retryIndex   int
	// prorations waiting for the next invoice
	pending []*LineItem
}

// LineItem is an invoice line.
type LineItem struct {
	ID               string
	Type             string // subscription | invoiceitem
	Price            string
	Quantity         int64
	Amount           int64
	PeriodStart      int64
	PeriodEnd        int64
	Proration        bool
	Description      string
	SubscriptionItem string
}

// Invoice is a Stripe invoice.
type Invoice struct {
	ID                    string
	Customer              string
	Subscription          string
	Status                string // draft, open, paid, uncollectible, void
	BillingReason         string
	Lines                 []*LineItem
	Currency              string
	Created               int64
	PeriodStart           int64
	PeriodEnd             int64
	AttemptCount          int64
	Attempted             bool
	Paid                  bool
	PaidOutOfBand         bool
	AmountPaid            int64
	Charge                string
	FinalizedAt           int64
	PaidAt                int64
	MarkedUncollectibleAt int64
	VoidedAt              int64
	NextPaymentAttempt    int64
	CollectionMethod      string
	DueDate               int64
	seq                   int64
	// daysUntilDue is how long a sent invoice that belongs to no subscription gives
	// the customer to pay.
	daysUntilDue int64

	// pause is the subscription's pause_collection behaviour when this invoice was made:
	// it is left a draft, or finalized and then marked uncollectible or voided.
	pause string
	// coversThrough is the end of the subscription period in force when the invoice was
	// made: what paying it keeps the customer in good standing through.
	coversThrough int64
}

// Total is the sum of the invoice's lines.
func (inv *Invoice) Total() int64 {
	var t int64
	for _, l := range inv.Lines {
		t += l.Amount
	}
	return t
}

// Charge is a Stripe charge.
type Charge struct {
	ID             string
	Amount         int64
	AmountRefunded int64
	Currency       string
	Customer       string
	Invoice        string
	// PaymentIntent is the PaymentIntent of a Checkout payment (none for an invoice's
	// charge here: the simulator keeps no PaymentIntents).
	PaymentIntent  string
	Status         string // succeeded, pending (an asynchronous payment), failed
	Paid           bool
	Refunded       bool
	Disputed       bool
	FailureCode    string
	FailureMessage string
	Created        int64
	seq            int64
}

// Refund is a Stripe refund.
type Refund struct {
	ID      string
	Charge  string
	Amount  int64
	Created int64
}

// Dispute is a Stripe dispute.
type Dispute struct {
	ID      string
	Charge  string
	Amount  int64
	Status  string
	Reason  string
	Created int64
}

// CheckoutSession is a Checkout Session: in subscription mode, or in payment mode for
// one-time prices.
type CheckoutSession struct {
	ID string
	// Mode is subscription or payment.
	Mode string
	// Status is open (not paid yet), complete or expired.
	Status string
	// Customer is empty for a guest's payment that created no customer.
	Customer          string
	Subscription      string
	Invoice           string
	ClientReferenceID string
	Metadata          map[string]string
	PaymentStatus     string
	Created           int64
	Email, Name       string
	// PaymentIntent and Charge are a payment-mode session's payment.
	PaymentIntent, Charge string
	// Lines are the line items bought.
	Lines []*SessionLine
	// InvoiceCreation makes a payment-mode session create a paid invoice once paid.
	InvoiceCreation bool
	seq             int64
}

// SessionLine is one line item of a Checkout Session.
type SessionLine struct {
	ID       string
	Price    string
	Quantity int64
	Amount   int64
}

// Total is the sum of the session's lines.
func (cs *CheckoutSession) Total() int64 {
	var t int64
	for _, l := range cs.Lines {
		t += l.Amount
	}
	return t
}

// Event is a Stripe event: a snapshot of an object when something happened.
type Event struct {
	ID      string
	Type    string
	Created int64
	seq     int64
	// Object and Previous are kept in API version 2023-10-16.
	Object   map[string]any
	Previous map[string]any
	// APIVersion is the version Payload is rendered in: the account's default when the
	// event was created.
	APIVersion string
	// Livemode and Account mark an event from live mode or from a connected account.
	Livemode bool
	Account  string
	// Payload is the event's JSON as the Events API serves it and as endpoints that pin
	// no version receive it.
	Payload []byte
	// payloads holds the event rendered in each version an endpoint asked for when it
	// was created; written once, before the event is handed to any endpoint.
	payloads map[string][]byte
}

// payload returns the event rendered in version ("" for the account's version then).
func (ev *Event) payload(version string) []byte {
	if p, ok := ev.payloads[version]; ok {
		return p
	}
	return ev.Payload
}

// Now returns the test clock's time.
func (s *Sim) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

const idAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func (s *Sim) id(prefix string) string {
	b := make([]byte, 24)
	for i := range b {
		b[i] = idAlphabet[s.rng.IntN(len(idAlphabet))]
	}
	return prefix + "_" + string(b)
}

func (s *Sim) unix() int64 { return s.now.Unix() }

// advancePeriod returns the end of a period that starts at start for the price.
func advancePeriod(start int64, p *Price) int64 {
	t := time.Unix(start, 0).UTC()
	n := int(max(p.IntervalCount, 1))
	switch p.Interval {
	case "day":
		t = t.AddDate(0, 0, n)
	case "week":
		t = t.AddDate(0, 0, 7*n)
	case "year":
		t = t.AddDate(n, 0, 0)
	default:
		t = t.AddDate(0, n, 0)
	}
	return t.Unix()
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// sortedSubs returns subscriptions newest first, as Stripe lists them.
func (s *Sim) sortedSubs() []*Subscription {
	out := make([]*Subscription, 0, len(s.subs))
	for _, sub := range s.subs {
		out = append(out, sub)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].seq > out[j].seq
	})
	return out
}

func (s *Sim) sortedInvoices() []*Invoice {
	out := make([]*Invoice, 0, len(s.invoices))
	for _, inv := range s.invoices {
		out = append(out, inv)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].seq > out[j].seq
	})
	return out
}

func (s *Sim) next() int64 {
	s.seq++
	return s.seq
}

// errNotFound is a control-API error for an unknown id.
func errNotFound(kind, id string) error { return fmt.Errorf("no such %s: %q", kind, id) }

// Subscription returns a copy of a subscription's state.
func (s *Sim) Subscription(id string) (Subscription, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, ok := s.subs[id]
	if !ok {
		return Subscription{}, false
	}
	c := *sub
	c.Items = make([]*SubscriptionItem, len(sub.Items))
	for i, it := range sub.Items {
		cp := *it
		c.Items[i] = &cp
	}
	c.Metadata = cloneMap(sub.Metadata)
	if sub.PauseCollection != nil {
		pc := *sub.PauseCollection
		c.PauseCollection = &pc
	}
	return c, true
}

// Invoice returns a copy of an invoice's state.
func (s *Sim) Invoice(id string) (Invoice, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inv, ok := s.invoices[id]
	if !ok {
		return Invoice{}, false
	}
	return *inv, true
}

// PaidThrough is what Stripe's side says a subscription is paid through (zero time when
// nothing is): the latest period end of a licensed subscription line on a paid invoice.
// Metered lines are billed in arrears, so a paid invoice with one keeps the customer in
// good standing through the subscription period in force when it was made; and a
// trialing subscription is good through its trial's end, wherever the trial was moved.
// Tests and the sandbox judge keysync's keys against it.
func (s *Sim) PaidThrough(subscription string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pt int64
	for _, inv := range s.invoices {
		if inv.Subscription != subscription || inv.Status != "paid" {
			continue
		}
		for _, l := range inv.Lines {
			if l.Type != "subscription" {
				continue
			}
			end := l.PeriodEnd
			if s.prices[l.Price].metered() {
				end = inv.coversThrough
			}
			pt = max(pt, end)
		}
	}
	if sub, ok := s.subs[subscription]; ok && sub.Status == StatusTrialing {
		pt = max(pt, sub.TrialEnd)
	}
	if pt == 0 {
		return time.Time{}
	}
	return time.Unix(pt, 0).UTC()
}

// Session returns a copy of a Checkout Session's state.
func (s *Sim) Session(id string) (CheckoutSession, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs, ok := s.sessions[id]
	if !ok {
		return CheckoutSession{}, false
	}
	c := *cs
	c.Metadata = cloneMap(cs.Metadata)
	c.Lines = make([]*SessionLine, len(cs.Lines))
	for i, l := range cs.Lines {
		cp := *l
		c.Lines[i] = &cp
	}
	return c, true
}

// Charge returns a copy of a charge's state.
func (s *Sim) Charge(id string) (Charge, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.charges[id]
	if !ok {
		return Charge{}, false
	}
	return *c, true
}

// Invoices returns copies of a subscription's invoices, oldest first.
func (s *Sim) Invoices(subscription string) []Invoice {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Invoice
	for _, inv := range s.sortedInvoices() {
		if inv.Subscription == subscription {
			out = append(out, *inv)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Events returns copies of all events, oldest first.
func (s *Sim) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Event, len(s.events))
	for i, ev := range s.events {
		out[i] = *ev
	}
	return out
}

// EventTypes returns the types of the events emitted since the n-th, oldest first: a
// test takes len(Events()) before an action and reads what the action emitted.
func (s *Sim) EventTypes(since int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ev := range s.events[min(since, len(s.events)):] {
		out = append(out, ev.Type)
	}
	return out
}

// EventCount returns how many events were emitted so far.
func (s *Sim) EventCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// Charges returns the ids of an invoice's charges, oldest first.
func (s *Sim) Charges(invoice string) []Charge {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Charge
	for _, c := range s.charges {
		if c.Invoice == invoice {
			out = append(out, *c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// SetAccountAPIVersion changes the account's default API version: events created from
// now on are in it (those before keep theirs), and so are answers to requests that send
// no Stripe-Version. It returns an error for a version CheckVersion refuses.
func (s *Sim) SetAccountAPIVersion(v string) error {
	if err := CheckVersion(v); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.AccountAPIVersion = v
	return nil
}
