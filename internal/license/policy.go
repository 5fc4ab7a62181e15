// Package license is keysync's policy: from a subscription's state in Stripe, its
// paid-through date, the plan mapping, and the key's state in Cryptolens, it computes
// the license the subscription is entitled to and the ordered actions that get the key
// there. It does no I/O.
package license

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"
)

// Stripe subscription statuses.
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

// Invoice is what paid-through needs of a Stripe invoice.
type Invoice struct {
	Paid  bool // status paid: charged, $0 trial invoices, and paid out of band
	Lines []Line
}

// Line is an invoice line.
type Line struct {
	Type      string // "subscription" or "invoiceitem"
	PeriodEnd time.Time
	// Metered is true for a line of a metered price (recurring.usage_type=metered): it
	// bills, in arrears, a period that is already over.
	Metered bool
}

// PaidThrough returns the latest period end of the licensed subscription lines of the
// paid invoices: the end of the service the customer has paid for in advance. It is
// zero when nothing is paid. Metered lines do not count (they bill a period that is
// over), nor does the subscription's current_period_end (it moves when a renewal
// invoice is created, before it is paid), nor an invoice's period_end (not the service
// period).
func PaidThrough(invoices []Invoice) time.Time {
	var out time.Time
	for _, inv := range invoices {
		if !inv.Paid {
			continue
		}
		for _, l := range inv.Lines {
			if l.Type == "subscription" && !l.Metered && l.PeriodEnd.After(out) {
				out = l.PeriodEnd
			}
		}
	}
	return out
}

// Collection methods of a subscription.
const (
	ChargeAutomatically = "charge_automatically"
	SendInvoice         = "send_invoice"
)

// Subscription is the Stripe side of one subscription, read fresh.
type Subscription struct {
	ID         string
	CustomerID string
	Status     string
	Items      []Item
	// PaidThrough is PaidThrough(invoices) of its paid invoices.
	PaidThrough time.Time
	// StoredThrough is the entitled-through date keysync stored at its last Sync: the
	// entitlement only moves forward.
	StoredThrough time.Time
	// CurrentPeriodEnd is the end of the current billing period (of the trial while
	// trialing).
	CurrentPeriodEnd time.Time
	// CollectionMethod is charge_automatically or send_invoice ("" reads as the former).
	CollectionMethod string
	// PausedCollection is true while pause_collection is set: Stripe keeps the
	// subscription active and collects nothing.
	PausedCollection bool
	// Disputed is true while a dispute on one of its charges is open or was lost.
	Disputed bool
	// RefundedLatest is true when the latest paid invoice was refunded in full.
	RefundedLatest bool
}

// Key is the Cryptolens side: the key's state, if there is one.
type Key struct {
	Exists      bool
	Key         string
	Expires     time.Time
	Blocked     bool
	Features    [8]bool
	MaxMachines int
	// WholeDays says Cryptolens keeps dates as whole days (midnight UTC): CreateKey's
	// Period and ExtendLicense then count from the start of the day they count from, so
	// the days are counted from there too, or the key would fall up to a day short. For
	// a key that does not exist yet it is what the keys seen so far showed.
	WholeDays bool
}

// Options are the policy's settings.
type Options struct {
	// BufferDays is added to entitled-through (KEYSYNC_BUFFER_DAYS, default 5).
	BufferDays int
	// LapseOnPausedCollection lets the key of a subscription whose collection is paused
	// run out at paid-through + buffer (KEYSYNC_ON_PAUSED_COLLECTION=lapse); by default
	// (keep) the customer keeps access, as Stripe documents for paused collection.
	LapseOnPausedCollection bool
	// TimeLimitedFeature is the Cryptolens feature (1..8) that marks a key as
	// time-limited (CRYPTOLENS_TIME_LIMITED_FEATURE); 0: the product has none. Cryptolens
	// enforces expiry only on time-limited keys, so subscription keys always have it on.
	TimeLimitedFeature int
	// BlockOnDispute blocks the key of a disputed subscription (KEYSYNC_ON_DISPUTE=block).
	BlockOnDispute bool
	// BlockOnRefund blocks the key when the latest invoice was refunded in full
	// (KEYSYNC_ON_REFUND=block).
	BlockOnRefund bool
}

// Desired is the license a subscription is entitled to.
type Desired struct {
	// Mapped is false when no item maps to a plan: the subscription needs no license.
	Mapped bool
	// ProductID is the Cryptolens product of the key.
	ProductID int
	// NeedKey is true when a key should exist (one is created if missing).
	NeedKey bool
	// Expires is the target expiry: entitled-through + buffer (zero when not extending).
	Expires time.Time
	// Through is the entitled-through date the expiry was computed from; keysync stores
	// it (it only moves forward).
	Through time.Time
	// Block says the key must be blocked; Reason says why.
	Block  bool
	Reason string
	// Features are the managed features and whether each should be on.
	Features map[int]bool
	// Machines is the machine limit, nil when no plan manages it.
	Machines *int
	// Sources are the mappings used, for the audit.
	Sources []string
	// Perpetual says the key is a one-time purchase's: its time-limited feature is off,
	// it has no expiry to reach and is never extended, and a block on it that is not
	// keysync's is never taken for an expiry block.
	Perpetual bool
}

// productGroup is what the items that map to one Cryptolens product ask for together.
type productGroup struct {
	d        Desired
	buffer   int
	machines int
	// managesMachines says some plan of the group sets a machine limit.
	managesMachines bool
}

// groupByProduct resolves items and gathers the mapped ones by Cryptolens product, in
// the order the products first appear: a product's features are the union over its
// items, its machine limit the sum of its items' limits (fixed + per seat × quantity),
// its buffer the largest any of its plans asks for (at least buffer). A perpetual plan
// maps no subscription's item (perpetual false): that is an error, as is metadata that
// cannot be read.
func groupByProduct(items []Item, m *Mapping, buffer int, perpetual bool) ([]*productGroup, error) {
	var out []*productGroup
	for _, it := range items {
		p, ok, err := m.Resolve(it)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if p.Perpetual && !perpetual {
			return nil, fmt.Errorf("%s is a perpetual plan, for one-time prices: it cannot license subscription price %s", p.Source, it.PriceID)
		}
		i := slices.IndexFunc(out, func(g *productGroup) bool { return g.d.ProductID == p.ProductID })
		if i < 0 {
			out = append(out, &productGroup{d: Desired{Mapped: true, ProductID: p.ProductID, Features: map[int]bool{}}, buffer: buffer})
			i = len(out) - 1
		}
		g := out[i]
		g.d.Sources = append(g.d.Sources, p.Source)
		for f, on := range p.Features {
			g.d.Features[f] = g.d.Features[f] || on // the union over items
		}
		if p.Machines != nil {
			g.managesMachines = true
			g.machines += p.Machines.Fixed + p.Machines.PerSeat*int(max(it.Quantity, 1))
		}
		if p.BufferDays != nil && *p.BufferDays > g.buffer {
			g.buffer = *p.BufferDays
		}
	}
	for _, g := range out {
		if g.managesMachines {
			machines := g.machines
			g.d.Machines = &machines
		}
	}
	return out, nil
}

// Desire computes the licenses sub is entitled to: one key per Cryptolens product its
// items map to (a bundle's items map to several), in the order the products first
// appear among the items, each with the features and machines of its own items;
// nothing for an unmapped subscription. Every key follows the subscription's status and
// entitled-through date, with its own plans' buffer. It returns an error when the
// mapping cannot be read or is contradictory for this subscription; those are not
// fixed by retrying.
func Desire(sub Subscription, m *Mapping, o Options) ([]Desired, error) {
	groups, err := groupByProduct(sub.Items, m, o.BufferDays, false)
	if err != nil {
		return nil, err
	}
	if len(groups) == 0 {
		return nil, nil
	}
	through := EntitledThrough(sub, o)
	out := make([]Desired, 0, len(groups))
	for _, g := range groups {
		d := g.d
		if f := o.TimeLimitedFeature; f >= 1 && f <= 8 {
			// Cryptolens enforces expiry only on time-limited keys: without this feature a
			// subscription key would be perpetual.
			d.Features[f] = true
		}
		d.Through = through
		switch sub.Status {
		case StatusIncomplete:
			// The first payment is pending: no key yet.
		case StatusTrialing, StatusActive, StatusPastDue:
			// past_due: the key keeps its entitled-through + buffer and is not extended
			// further; it lapses at the end of the buffer unless the invoice gets paid.
			d.NeedKey = true
			if !d.Through.IsZero() {
				d.Expires = d.Through.AddDate(0, 0, g.buffer)
			}
		case StatusUnpaid, StatusCanceled, StatusIncompleteExpired, StatusPaused:
			d.Block, d.Reason = true, "subscription "+sub.Status
		default:
			return nil, fmt.Errorf("unknown subscription status %q", sub.Status)
		}
		switch {
		case d.Block:
		case o.BlockOnDispute && sub.Disputed:
			d.Block, d.Reason = true, "payment disputed"
		case o.BlockOnRefund && sub.RefundedLatest:
			d.Block, d.Reason = true, "latest invoice refunded"
		}
		out = append(out, d)
	}
	return out, nil
}

// Purchase is the Stripe side of a one-time purchase, read fresh: a Checkout Session in
// payment mode (Payment Links are Checkout too), or an invoice that belongs to no
// subscription.
type Purchase struct {
	ID         string
	CustomerID string
	// Paid says the payment succeeded: Checkout's payment_status paid (or
	// no_payment_required, a purchase made free by a discount), or the invoice paid.
	// An asynchronous payment still processing is not paid yet.
	Paid  bool
	Items []Item
	// Refunded says the payment was refunded in full.
	Refunded bool
	// Disputed says a dispute on the payment is open or was lost.
	Disputed bool
}

// DesirePurchase computes the keys a one-time purchase is entitled to: one perpetual key
// per Cryptolens product its items map to, each with the union of its items' features
// and the sum of their machine limits (per seat × quantity), and the time-limited
// feature off (Cryptolens then never lets it expire; it is never extended). An unpaid
// purchase gets no key yet; a full refund (o.BlockOnRefund) or an open or lost dispute
// (o.BlockOnDispute) blocks the keys. No item mapped: nil. It returns an error when the
// mapping cannot be read.
func DesirePurchase(p Purchase, m *Mapping, o Options) ([]Desired, error) {
	groups, err := groupByProduct(p.Items, m, 0, true)
	if err != nil {
		return nil, err
	}
	out := make([]Desired, 0, len(groups))
	for _, g := range groups {
		d := g.d
		d.Perpetual, d.NeedKey = true, p.Paid
		if f := o.TimeLimitedFeature; f >= 1 && f <= 8 {
			d.Features[f] = false // managed, and off: the key must never expire
		}
		switch {
		case o.BlockOnDispute && p.Disputed:
			d.Block, d.Reason = true, "payment disputed"
		case o.BlockOnRefund && p.Refunded:
			d.Block, d.Reason = true, "purchase refunded"
		}
		out = append(out, d)
	}
	return out, nil
}

// EntitledThrough returns the date the customer is entitled to: the latest of what is
// paid (sub.PaidThrough), what keysync stored before (sub.StoredThrough; it only moves
// forward), and the current period's end when Stripe itself grants the current period
// without a paid invoice:
//   - trialing (a trial moved by trial_end issues no new invoice);
//   - active and invoiced (collection_method=send_invoice): Stripe keeps it active
//     until the due date passes, then past_due;
//   - active with collection paused, unless o.LapseOnPausedCollection: the customer
//     keeps access while nothing is collected;
//   - active with only metered items: they are billed in arrears, so no paid invoice
//     ever lies ahead of the period in use.
//
// A card-charged subscription of licensed prices gets its current period only when the
// period's invoice is paid.
func EntitledThrough(sub Subscription, o Options) time.Time {
	out := sub.PaidThrough
	if sub.StoredThrough.After(out) {
		out = sub.StoredThrough
	}
	if grantsCurrentPeriod(sub, o) && sub.CurrentPeriodEnd.After(out) {
		out = sub.CurrentPeriodEnd
	}
	return out
}

// grantsCurrentPeriod reports whether Stripe grants the current period without a paid
// invoice (see EntitledThrough).
func grantsCurrentPeriod(sub Subscription, o Options) bool {
	switch sub.Status {
	case StatusTrialing:
		return true
	case StatusActive:
		return sub.CollectionMethod == SendInvoice ||
			(sub.PausedCollection && !o.LapseOnPausedCollection) ||
			allMetered(sub.Items)
	}
	return false
}

// allMetered reports whether there are items and every one is metered.
func allMetered(items []Item) bool {
	for _, it := range items {
		if !it.Metered {
			return false
		}
	}
	return len(items) > 0
}

// ActionKind names an action, as in the audit log.
type ActionKind string

// The actions.
const (
	CreateKey     ActionKind = "create_key"
	Extend        ActionKind = "extend"
	Block         ActionKind = "block"
	Unblock       ActionKind = "unblock"
	AddFeature    ActionKind = "add_feature"
	RemoveFeature ActionKind = "remove_feature"
	MachineLimit  ActionKind = "machine_limit"
	SkipUnmapped  ActionKind = "skip_unmapped"
)

// Action is one change to make to the key.
type Action struct {
	Kind ActionKind
	// Days is the ExtendLicense argument, or CreateKey's Period.
	Days int
	// OldExpires and NewExpires are the expiry before and after (extend, create).
	OldExpires, NewExpires time.Time
	Feature                int
	Machines               int
	// Features and Machines (create) are the new key's settings.
	Features [8]bool
	// Reason explains a block or unblock.
	Reason string
}

// State is what keysync remembers of the key between syncs.
type State struct {
	// BlockedByKeysync is true when keysync blocked the key (or set out to: the intent
	// is recorded before the call).
	BlockedByKeysync bool
	// ExpiryBlockSeen is true when keysync saw Cryptolens' expiry block on the key and has
	// not lifted it yet: recorded before any call, so that a retry after "extended, then
	// the unblock failed" still knows the block is an expiry block though the key no
	// longer looks expired.
	ExpiryBlockSeen bool
}

// ExpiryBlocked reports whether the key carries an expiry block: Cryptolens' "Block
// Expired Licenses" blocks a time-limited key within an hour of its expiry. A block
// keysync did not make, on a key whose expiry has passed (or that keysync saw so
// before), is one; a block on a valid key is the vendor's.
func ExpiryBlocked(key Key, st State, now time.Time) bool {
	return key.Exists && key.Blocked && !st.BlockedByKeysync && (st.ExpiryBlockSeen || !key.Expires.After(now))
}

// Actions returns the actions that move key to desired, in the order to apply them:
// create, or block first (nothing else changes on a key being blocked); else extend,
// features, machine limit, and unblock last (the key is whole when it works again).
// now is the current time. It never shortens a key and never unblocks a block that is
// not keysync's, except an expiry block (Cryptolens' "Block Expired Licenses").
func Actions(d Desired, key Key, st State, now time.Time) []Action {
	if !d.Mapped {
		return []Action{{Kind: SkipUnmapped}}
	}
	if !key.Exists {
		if !d.NeedKey || d.Block {
			return nil
		}
		from := key.day(now)
		a := Action{Kind: CreateKey, Days: DaysUntil(from, d.Expires), OldExpires: now}
		a.NewExpires = from.Add(time.Duration(a.Days) * 24 * time.Hour)
		for f, on := range d.Features {
			a.Features[f-1] = on
		}
		if d.Machines != nil {
			a.Machines = *d.Machines
		}
		return []Action{a}
	}
	if d.Block {
		if key.Blocked {
			return nil
		}
		return []Action{{Kind: Block, Reason: d.Reason}}
	}
	var out []Action
	ref := key.Expires
	if ref.Before(now) {
		ref = now // Cryptolens counts from today when the key has expired
	}
	ref = key.day(ref)
	expires := key.Expires // after this Sync
	if days := DaysUntil(ref, d.Expires); days > 0 {
		expires = ref.Add(time.Duration(days) * 24 * time.Hour)
		out = append(out, Action{Kind: Extend, Days: days, OldExpires: key.Expires, NewExpires: expires})
	}
	features := make([]int, 0, len(d.Features))
	for f := range d.Features {
		features = append(features, f)
	}
	sort.Ints(features)
	for _, f := range features {
		want := d.Features[f]
		if key.Features[f-1] == want {
			continue
		}
		kind := RemoveFeature
		if want {
			kind = AddFeature
		}
		out = append(out, Action{Kind: kind, Feature: f})
	}
	if d.Machines != nil && key.MaxMachines != *d.Machines {
		out = append(out, Action{Kind: MachineLimit, Machines: *d.Machines})
	}
	if key.Blocked {
		switch {
		case st.BlockedByKeysync:
			out = append(out, Action{Kind: Unblock, Reason: "keysync's block lifted: subscription in good standing"})
		case !d.Perpetual && ExpiryBlocked(key, st, now) && expires.After(now):
			out = append(out, Action{Kind: Unblock, Reason: "expiry block lifted: the key had expired and the subscription is paid"})
		}
		// Otherwise the block stays: a key that stays expired would be blocked again by
		// Cryptolens within the hour (a past_due customer whose key lapsed), and a block
		// on a valid key, or on a perpetual key (Cryptolens never blocks one for expiry),
		// is the vendor's.
	}
	return out
}

// day is the time Cryptolens counts days from when it counts from t: t itself, or the
// start of t's day (UTC) when it keeps whole days.
func (k Key) day(t time.Time) time.Time {
	if k.WholeDays {
		return t.UTC().Truncate(24 * time.Hour)
	}
	return t
}

// DaysUntil returns ceil((target - from) / 24h), and 0 when target is not after from.
func DaysUntil(from, target time.Time) int {
	if target.IsZero() || !target.After(from) {
		return 0
	}
	return int(math.Ceil(target.Sub(from).Hours() / 24))
}
