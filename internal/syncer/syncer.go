// Package syncer is Sync(subscription): it reads the subscription from Stripe and its
// key from Cryptolens, asks the license policy what the key should be, applies the
// difference, and audits every action. Every path (webhook, sweep, catch-up, operator)
// ends here, so the order, duplication and loss of events cannot corrupt a key.
package syncer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/stripeapi"
)

// Stripe is what Sync reads from and writes to Stripe.
type Stripe interface {
	GetSubscription(ctx context.Context, id string) (*stripe.Subscription, error)
	PaidInvoices(ctx context.Context, subscription string) ([]*stripe.Invoice, error)
	GetCustomer(ctx context.Context, id string) (*stripe.Customer, error)
	GetInvoice(ctx context.Context, id string) (*stripe.Invoice, error)
	GetCharge(ctx context.Context, id string) (*stripe.Charge, error)
	GetDispute(ctx context.Context, id string) (*stripe.Dispute, error)
	GetCheckoutSession(ctx context.Context, id string) (*stripe.CheckoutSession, error)
	Disputes(ctx context.Context, charge string) ([]*stripe.Dispute, error)
	SetSubscriptionMetadata(ctx context.Context, subscription, key, value string) error

	// One-time purchases' reads (purchase.go).
	SessionLineItems(ctx context.Context, session string) ([]*stripe.LineItem, error)
	PurchaseInvoice(ctx context.Context, id string) (*stripe.Invoice, error)
	PaymentCharges(ctx context.Context, paymentIntent string) ([]*stripe.Charge, error)
	PaymentSession(ctx context.Context, paymentIntent string) (*stripe.CheckoutSession, error)
	InvoiceSession(ctx context.Context, customer, invoice string) (string, error)
}

// Cryptolens is what Sync does to keys. ExtendLicense, AddFeature and RemoveFeature
// return the key's new string when an SKGL key changed strings ("" otherwise).
type Cryptolens interface {
	CreateKey(ctx context.Context, p cryptolens.CreateKeyParams) (cryptolens.CreatedKey, error)
	GetKey(ctx context.Context, productID int, key string) (cryptolens.Key, error)
	GetKeys(ctx context.Context, productID, page int, search string) (cryptolens.KeysPage, error)
	ExtendLicense(ctx context.Context, productID int, key string, days int) (string, error)
	BlockKey(ctx context.Context, productID int, key string) (bool, error)
	UnblockKey(ctx context.Context, productID int, key string) (bool, error)
	AddFeature(ctx context.Context, productID int, key string, feature int) (string, error)
	RemoveFeature(ctx context.Context, productID int, key string, feature int) (string, error)
	MachineLockLimit(ctx context.Context, productID int, key string, machines int) error
}

// Cause says why a Sync runs; it is written on every audit row.
type Cause struct {
	Kind CauseKind
	ID   string // event id, sweep run id, operator name
}

// CauseKind is what started a Sync.
type CauseKind string

// The kinds of cause, as audit rows record them.
const (
	// CauseWebhook is a Stripe event that arrived by webhook; the ID is the event's.
	CauseWebhook CauseKind = "webhook"
	// CauseSweep is drift a reconcile sweep found; the ID is the sweep run's.
	CauseSweep CauseKind = "sweep"
	// CauseCatchUp is an event the catch-up fetched from Stripe's Events API; the ID is
	// the event's.
	CauseCatchUp CauseKind = "catch_up"
	// CauseOperator is an operator's command or admin API call; the ID names the
	// operator or the route.
	CauseOperator CauseKind = "operator"
	// CauseCustomer is a customer's request: the license page after Checkout (the ID is
	// the Checkout Session's) or the lost-keys form (the ID is "resend").
	CauseCustomer CauseKind = "customer"
)

// Options configure the Syncer.
type Options struct {
	Policy license.Options
	// DryRun runs everything and audits it as dry_run; no change reaches Cryptolens or Stripe.
	DryRun bool
	// WriteStripeMetadata writes the key's name into the subscription's metadata (under
	// KeyMetadata) after a key is created or adopted (KEYSYNC_WRITE_STRIPE_METADATA).
	WriteStripeMetadata bool
	// Now is the clock days are counted with (default time.Now): Cryptolens' clock in
	// production (cryptolens.Client.Now).
	Now func() time.Time
	// ObserveAction, if set, is told each audited action's kind and outcome (for metrics).
	ObserveAction func(kind string, outcome Outcome)
	// KeyCreated, if set, is told once a key this Sync created is recorded (its
	// create_key audit row is committed), or a key it adopted by keysync's own Notes
	// marker (its adopt_key row: the key may be one whose create_key row a crash lost):
	// new keys are e-mailed from there. It must not block; the audit row stays the
	// record a crash before the call cannot lose.
	KeyCreated func(ctx context.Context)
}

// Syncer runs Syncs. It is safe for concurrent use; Syncs of one subscription queue.
type Syncer struct {
	stripe  Stripe
	crypto  Cryptolens
	store   Store
	mapping *license.Mapping
	opts    Options
	log     zerolog.Logger
	// days is how Cryptolens keeps dates, as the keys read so far show it (a dayMode):
	// it decides how a new key's Period is counted.
	days atomic.Int32
}

// dayMode is how Cryptolens keeps a key's dates. Whether the real service keeps them
// to the second or as whole days (midnight) is unverified, so keysync reads it off the
// keys it sees.
type dayMode = int32

const (
	daysUnknown dayMode = iota // no key read yet
	daysSeconds
	daysWhole
)

// Deps are what a Syncer works with; all are required.
type Deps struct {
	Stripe     Stripe
	Cryptolens Cryptolens
	Store      Store
	// Mapping is the plans file: which prices map to which product and features.
	Mapping *license.Mapping
	Log     zerolog.Logger
}

// New returns a Syncer working with d, configured by opts.
func New(d Deps, opts Options) *Syncer {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Syncer{stripe: d.Stripe, crypto: d.Cryptolens, store: d.Store, mapping: d.Mapping, opts: opts, log: d.Log}
}

// ErrPermanent marks a failure of the Sync itself that retrying will not fix (an event
// without a subscription, a contradictory mapping). Like Stripe's and Cryptolens'
// permanent errors it is of class failure.ErrPermanent, which callers test.
var ErrPermanent = failure.NewPermanent("permanent failure")

// Result is what a Sync did.
type Result struct {
	// Key is the first key's name (of the first Cryptolens product the items map to);
	// Keys are all of them, one per product. A key the Sync did not create or find is
	// not there.
	Key  string
	Keys []ProductKey
	// Actions are every key's actions, in the order they were taken.
	Actions []license.Action
	// Unmapped is true when the subscription (or purchase) maps to no plan.
	Unmapped bool
	// Status is a purchase's payment status after SyncPurchase (PurchaseRow.Status).
	Status string
}

// ProductKey names a key: the Cryptolens product it lives in, and its string.
type ProductKey struct {
	ProductID int
	Key       string
}

// markerPrefix begins the Notes marker of a key.
const markerPrefix = "stripe:"

// Marker is the Notes marker that ties a key to its subscription: keysync writes it on
// every key it creates, and adopts a key whose Notes carry it as a whole word.
func Marker(subscription string) string { return markerPrefix + subscription }

// MarkedSubscription returns the subscription a Notes word marks, and false when the
// word is no marker. It is Marker's inverse.
func MarkedSubscription(word string) (string, bool) { return strings.CutPrefix(word, markerPrefix) }

// SourceMarker begins the source (params.source, "notes marker stripe:<id>") of an
// adopt_key audit row whose key was found by keysync's own Notes marker: a key keysync
// created, though its record (the create_key row) may have been lost with a commit
// that never happened. Other adoptions name the subscription's metadata (a key the
// vendor or Cryptolens' hosted Stripe module issued) or "skgl key change" (a key that
// got a new string). Such a row also carries the key's creation ("created") and its
// age on Cryptolens' clock when adopted ("key_age_seconds").
const SourceMarker = "notes marker"

// KeyMetadata is the Stripe subscription metadata entry that names the subscription's
// key: keysync adopts the key it names, and writes it when WriteStripeMetadata is on.
const KeyMetadata = "cryptolens_key"

// The subscription metadata entries in which Cryptolens' hosted Stripe module records
// the key it issued (its docs, recurring-payments/managing-customers.md and
// custom-interface.md): a vendor who switches over keeps the customers' live keys.
const (
	// hostedKeyID is the key's id within the product ("search Id=<skm_key_id>").
	hostedKeyID = "skm_key_id"
	// hostedKeyGlobalID is the key's GlobalId.
	hostedKeyGlobalID = "skm_key_globalid"
)

// disputeWindow is how far back a dispute on the subscription's charges counts: card
// disputes arrive weeks after the charge, often after the next renewal, and card
// networks allow them for about 120 days.
const disputeWindow = 120 * 24 * time.Hour

// run carries one Sync's state: the audit rows it saves with the owner's row, keysync's
// records of the owner's keys, and how to save them.
type run struct {
	s     *Syncer
	cause Cause
	// subscription or purchase is the owner the audit rows name; customer is its
	// Stripe customer.
	subscription, purchase, customer string
	// recs are keysync's records of the owner's keys, one per Cryptolens product.
	recs []*KeyRow
	// paidThrough is the subscription's, for the audit of a new or extended key.
	paidThrough *time.Time
	// save writes the owner's row, its key records and audits in one transaction.
	save   func(ctx context.Context, audits []AuditRow) error
	audits []AuditRow
	now    time.Time
	log    zerolog.Logger
	// adoptedByMarker says a key was adopted by keysync's marker (SourceMarker): once
	// that is recorded, the e-mail outbox may have a key to mail.
	adoptedByMarker bool
}

// recorded is told that the run's audit rows are committed: a key adopted by keysync's
// own marker may be a new key whose create_key row was lost, which the e-mail outbox
// mails, so the KeyCreated hook hears of it as of a create.
func (r *run) recorded(ctx context.Context) {
	if r.adoptedByMarker && r.s.opts.KeyCreated != nil && !r.s.opts.DryRun {
		r.s.opts.KeyCreated(ctx)
	}
	r.adoptedByMarker = false
}

// audit adds an audit row, naming the run's owner and cause; a row that names no key
// names the owner's first.
func (r *run) audit(a AuditRow) {
	if r.s.opts.ObserveAction != nil {
		r.s.opts.ObserveAction(a.Action, a.Outcome)
	}
	a.SubscriptionID, a.PurchaseID, a.CustomerID = r.subscription, r.purchase, r.customer
	if a.LicenseKey == "" {
		for _, rec := range r.recs {
			if rec.LicenseKey != nil {
				a.LicenseKey, a.ProductID = *rec.LicenseKey, rec.ProductID
				break
			}
		}
	}
	a.Cause, a.CauseID = r.cause.Kind, r.cause.ID
	r.audits = append(r.audits, a)
}

// Sync brings the subscription's key to the state the policy wants. It returns an
// error of class failure.ErrPermanent when a retry cannot help, and another
// error when it may. A Sync that fails part way records what it did; running it again
// continues from the key's actual state and never repeats an applied change.
func (s *Syncer) Sync(ctx context.Context, subscription string, cause Cause) (Result, error) {
	// 1. Hold the subscription's lock and read keysync's row: one Sync of a
	// subscription at a time, on any replica.
	lock, err := s.store.LockSubscription(ctx, subscription)
	if err != nil {
		return Result{}, err
	}
	defer lock.Release()
	now := s.opts.Now().UTC()
	row, _, err := readRow(ctx, lock, subscription)
	if err != nil {
		return Result{}, err
	}
	sr := &subscriptionRun{row: row, primary: primaryRecord(row)}
	r := &run{s: s, cause: cause, subscription: subscription, customer: row.CustomerID, recs: subscriptionRecords(sr.primary, row),
		log: s.log.With().Str("subscription_id", subscription).Str("cause", string(cause.Kind)).Str("cause_id", cause.ID).Logger()}
	r.save = func(ctx context.Context, audits []AuditRow) error {
		return lock.SaveSync(ctx, sr.fold(r), audits)
	}
	sr.run = r

	// 2. Plan. What the plan read is kept even when planning failed part way, so that
	// a failed Sync still records Stripe's view of the subscription.
	p, err := s.plan(ctx, row, &r.recs, now, r.log)
	r.now = p.now
	sr.learn(p)

	// 3. Apply the plan.
	var res Result
	if err == nil {
		res, err = sr.apply(ctx, p)
	}

	// 4. Record the outcome.
	r.recordOutcome(err, &sr.row.LastError)
	if sr.row.CustomerID == "" {
		// Never read from Stripe (the subscription does not exist there): keep no row.
		return res, err
	}
	if err == nil {
		// "Last synced" means the key was brought to the policy's state; a failed
		// attempt is recorded in the audit and last_error instead.
		synced := r.now
		sr.row.LastSyncedAt = &synced
	}
	if saveErr := r.save(ctx, r.audits); saveErr != nil {
		return res, errors.Join(err, saveErr)
	}
	r.recorded(ctx)
	return res, err
}

// subscriptionRun is a subscription's part of a run: its row, and the record of the key
// the row names (its primary key); a bundle's other keys are in the row's Bundle.
type subscriptionRun struct {
	run *run
	row SubscriptionRow
	// primary is the record of the key the row names (nil: none).
	primary *KeyRow
	// products are the products the policy wants keys in, once decided.
	products []int
}

// primaryRecord is the record of the key a subscription's row names, nil for none.
func primaryRecord(row SubscriptionRow) *KeyRow {
	if row.ProductID == nil {
		return nil
	}
	return &KeyRow{ProductID: *row.ProductID, LicenseKey: row.LicenseKey, KeyID: row.KeyID,
		BlockedByKeysync: row.BlockedByKeysync, ExpiryBlockSeen: row.ExpiryBlockSeen}
}

// subscriptionRecords are the records of a subscription's keys: the one its row names
// (primary, nil for none) first, then its bundle's others.
func subscriptionRecords(primary *KeyRow, row SubscriptionRow) []*KeyRow {
	var out []*KeyRow
	if primary != nil {
		out = append(out, primary)
	}
	for _, k := range row.Bundle {
		if primary == nil || k.ProductID != primary.ProductID {
			out = append(out, &k)
		}
	}
	return out
}

// fold returns the row with the run's key records in it. The row names the key of the
// product it named before while the policy still wants that product (a key that exists
// today for a subscription is kept as its first); else the first wanted product's key,
// once one exists (until then it keeps naming the old key). The keys of the other wanted
// products are its bundle; a key of a product no longer wanted is no longer recorded
// (its Notes marker still finds it), as a single key of a changed product was not.
func (sr *subscriptionRun) fold(r *run) SubscriptionRow {
	row := sr.row
	if sr.products != nil && !slices.ContainsFunc(sr.products, func(p int) bool { return sr.primary != nil && sr.primary.ProductID == p }) {
		for _, p := range sr.products {
			if rec := findRecord(r.recs, p); rec != nil && rec.LicenseKey != nil {
				sr.primary = rec
				break
			}
		}
	}
	if rec := sr.primary; rec != nil {
		product := rec.ProductID
		row.ProductID, row.LicenseKey, row.KeyID = &product, rec.LicenseKey, rec.KeyID
		row.BlockedByKeysync, row.ExpiryBlockSeen = rec.BlockedByKeysync, rec.ExpiryBlockSeen
	}
	if sr.products == nil {
		return row // nothing decided: the bundle stays as stored
	}
	row.Bundle = nil
	for _, p := range sr.products {
		if rec := findRecord(r.recs, p); rec != nil && rec != sr.primary && rec.LicenseKey != nil {
			row.Bundle = append(row.Bundle, *rec)
		}
	}
	return row
}

// findRecord returns the record of product's key among recs, nil for none.
func findRecord(recs []*KeyRow, product int) *KeyRow {
	for _, r := range recs {
		if r.ProductID == product {
			return r
		}
	}
	return nil
}

// readRow returns keysync's row for the locked subscription and whether one was
// stored: a subscription keysync has not seen yet starts from an empty row.
func readRow(ctx context.Context, lock Lock, subscription string) (SubscriptionRow, bool, error) {
	row, err := lock.GetSubscription(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		return SubscriptionRow{ID: subscription}, false, nil
	case err != nil:
		return SubscriptionRow{}, false, err
	}
	return row, true, nil
}

// plan is what a Sync found and decided before changing anything: Stripe's view of the
// subscription, the policy's wish, and per key the key as it is and the actions between
// them. A plan that failed part way holds what was read before the failure.
type plan struct {
	// now is the clock the plan counted with: Cryptolens' once a key was read.
	now time.Time
	// sub and stripe are Stripe's view; sub is nil until all of it was read.
	sub    *stripe.Subscription
	stripe license.Subscription
	// desired is the policy's wish, once decided (decided true): nothing for an
	// unmapped subscription.
	desired []license.Desired
	decided bool
	// keys are the keys the policy wants, one per product, as far as planned.
	keys []*keyPlan
}

// subscriptionOwner is the subscription as the key machinery sees it.
func (s *Syncer) subscriptionOwner(sub *stripe.Subscription) owner {
	o := owner{id: sub.ID, metadata: sub.Metadata, customer: s.customerOf("")}
	if sub.Customer != nil {
		o.customer = s.customerOf(sub.Customer.ID)
	}
	if o.metadata == nil {
		o.metadata = map[string]string{}
	}
	return o
}

// plan reads the subscription from Stripe and its key from Cryptolens and asks the
// policy what to do. It writes nothing anywhere: row is keysync's row as stored, recs
// its key records (a record is added for a product it has none for), now the time the
// Sync began. It returns the plan as far as it got, and the error that stopped it.
func (s *Syncer) plan(ctx context.Context, row SubscriptionRow, recs *[]*KeyRow, now time.Time, log zerolog.Logger) (*plan, error) {
	p := &plan{now: now}

	// 1. Stripe's view: the subscription, its paid invoices, and (when the policy
	// blocks on them) the latest charge's disputes and refund.
	sub, err := s.stripe.GetSubscription(ctx, row.ID)
	if err != nil {
		return p, fmt.Errorf("read subscription: %w", err)
	}
	paid, err := s.stripe.PaidInvoices(ctx, sub.ID)
	if err != nil {
		return p, fmt.Errorf("read paid invoices: %w", err)
	}
	ls := stripeapi.Subscription(sub, paid...) // the sweep reads it the same way
	if row.PaidThrough != nil && row.PaidThrough.After(ls.PaidThrough) {
		ls.PaidThrough = *row.PaidThrough // keysync only moves it forward
	}
	if row.EntitledThrough != nil {
		ls.StoredThrough = *row.EntitledThrough
	}
	if s.opts.Policy.BlockOnDispute || s.opts.Policy.BlockOnRefund {
		if ls.Disputed, ls.RefundedLatest, err = s.chargeState(ctx, paid, now); err != nil {
			return p, err
		}
	}
	p.sub, p.stripe = sub, ls

	// 2. The policy's wish: a key per Cryptolens product the items map to (a bundle has
	// several). A subscription that maps to no plan has no key to find.
	if p.desired, err = license.Desire(ls, s.mapping, s.opts.Policy); err != nil {
		return p, fmt.Errorf("%w: plan mapping: %v", ErrPermanent, err)
	}
	p.decided = true

	// 3. Each key as it is, and the actions that bring it to the wish. The hosted
	// Stripe module's metadata names the key of the product the row names, or of the
	// first wanted product when the row names none: the module issued one key a
	// subscription, and its key ids are per product.
	o := s.subscriptionOwner(sub)
	for i, d := range p.desired {
		kp := &keyPlan{desired: d, rec: recordFor(recs, d.ProductID)}
		kp.primary = (row.ProductID == nil && i == 0) || (row.ProductID != nil && *row.ProductID == d.ProductID)
		p.keys = append(p.keys, kp)
		if p.now, err = s.planKey(ctx, kp, o, log); err != nil {
			return p, err
		}
	}
	return p, nil
}

// learn folds what the plan read into the row and the key records: Stripe's view, the
// policy's expiry, and each key as found (an adopted key is audited). It changes
// nothing outside keysync's own rows.
func (sr *subscriptionRun) learn(p *plan) {
	if p.sub == nil {
		return
	}
	r := sr.run
	sr.row.CustomerID, sr.row.Status = p.stripe.CustomerID, p.stripe.Status
	r.customer = sr.row.CustomerID
	if !p.stripe.PaidThrough.IsZero() {
		pt := p.stripe.PaidThrough
		sr.row.PaidThrough = &pt
	}
	r.paidThrough = sr.row.PaidThrough
	if !p.decided || len(p.desired) == 0 {
		return // an unmapped subscription is recorded by apply, once
	}
	sr.row.UnmappedAt = nil
	for _, d := range p.desired {
		sr.products = append(sr.products, d.ProductID)
	}
	// The expiry's basis is the subscription's: every product's key follows it.
	d := p.desired[0]
	if !d.Through.IsZero() {
		et := d.Through
		sr.row.EntitledThrough = &et
	}
	if !d.Expires.IsZero() {
		de := d.Expires
		sr.row.DesiredExpires = &de
	}
	for _, kp := range p.keys {
		r.learnKey(kp)
	}
}

// apply carries out the plan: it records an unmapped subscription (once), or performs
// each key's actions in order and then names the key in Stripe's metadata.
func (sr *subscriptionRun) apply(ctx context.Context, p *plan) (Result, error) {
	r := sr.run
	s := r.s
	if len(p.desired) == 0 {
		if sr.row.UnmappedAt == nil {
			at := r.now
			sr.row.UnmappedAt = &at
			prices := make([]string, 0, len(p.stripe.Items))
			for _, it := range p.stripe.Items {
				prices = append(prices, it.PriceID)
			}
			r.audit(AuditRow{Action: string(license.SkipUnmapped), Outcome: OutcomeApplied,
				Params: map[string]any{"prices": prices}, Message: "no plan maps these prices: no license"})
			r.log.Info().Strs("prices", prices).Msg("subscription maps to no plan: no key")
		}
		return Result{Unmapped: true}, nil
	}
	res, err := r.applyKeys(ctx, p.keys, s.subscriptionOwner(p.sub))
	if err != nil {
		return res, err
	}

	// Name the key in Stripe's metadata, so the vendor sees it in Stripe and the mapping
	// survives losing the database. Stripe refuses to change a canceled subscription's
	// metadata (it did in 2023–24: "A canceled subscription can only update its
	// cancellation_details"), and a canceled subscription's key only stays blocked: no
	// write, so none fails on every Sync either.
	name := ""
	if row := sr.fold(r); row.LicenseKey != nil {
		name = *row.LicenseKey
	}
	if name != "" && s.opts.WriteStripeMetadata && !s.opts.DryRun && p.sub.Metadata[KeyMetadata] != name &&
		p.sub.Status != stripe.SubscriptionStatusCanceled {
		if err := s.stripe.SetSubscriptionMetadata(ctx, p.sub.ID, KeyMetadata, name); err != nil {
			r.log.Warn().Err(err).Str("metadata", KeyMetadata).Msg("could not write the key into the subscription's metadata; next sync retries")
		}
	}
	return res, nil
}

// applyKeys performs the actions of every key in turn and returns what they did.
func (r *run) applyKeys(ctx context.Context, keys []*keyPlan, o owner) (Result, error) {
	var res Result
	for _, kp := range keys {
		name, actions, err := r.applyKey(ctx, kp, o)
		res.Actions = append(res.Actions, actions...)
		if name != "" {
			res.Keys = append(res.Keys, ProductKey{ProductID: kp.desired.ProductID, Key: name})
			if res.Key == "" {
				res.Key = name
			}
		}
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// recordOutcome records a Sync's outcome on its row's last error: a permanent failure
// is shown there and audited; any success clears the last one; a failure a retry may
// mend leaves it as it was.
func (r *run) recordOutcome(err error, lastError **string) {
	switch {
	case err == nil:
		*lastError = nil
	case failure.IsPermanent(err):
		msg := err.Error()
		*lastError = &msg
		r.audit(AuditRow{Action: "error", Outcome: OutcomeFailed, Message: msg})
	}
}

// chargeState reads the charges of the subscription's paid invoices (newest first):
// disputed when a dispute on the latest charge, or on any charge of an invoice of the
// last 120 days (disputeWindow), is open or was lost; refunded when the latest charge
// was refunded in full. Disputes arrive weeks after the charge, often after the next
// renewal has been paid: the latest charge alone would miss them. A won dispute no
// longer counts, so keysync's block lifts. A charge PaidInvoices did not expand is read.
func (s *Syncer) chargeState(ctx context.Context, paid []*stripe.Invoice, now time.Time) (disputed, refunded bool, err error) {
	since := now.Add(-disputeWindow)
	latest := true
	for _, inv := range paid {
		if inv.Charge == nil || inv.Charge.ID == "" {
			continue // a $0 invoice, or paid out of band
		}
		if !latest && (!s.opts.Policy.BlockOnDispute || disputed || time.Unix(inv.Created, 0).Before(since)) {
			break // nothing left to learn: the list is newest first
		}
		ch := inv.Charge
		if ch.Object != "charge" { // not expanded
			var err error
			if ch, err = s.stripe.GetCharge(ctx, inv.Charge.ID); err != nil {
				return false, false, fmt.Errorf("read charge: %w", err)
			}
		}
		if latest {
			refunded, latest = ch.Refunded, false
		}
		if !ch.Disputed {
			continue
		}
		ds, err := s.stripe.Disputes(ctx, ch.ID)
		if err != nil {
			return false, false, fmt.Errorf("read disputes: %w", err)
		}
		for _, d := range ds {
			if d.Status != stripe.DisputeStatusWon && d.Status != stripe.DisputeStatusWarningClosed {
				disputed = true
			}
		}
	}
	return disputed, refunded, nil
}

// toKey is the policy's view of a key read from Cryptolens. A key whose expiry and
// creation fall at midnight (UTC) shows that Cryptolens keeps whole days.
func toKey(k cryptolens.Key) license.Key {
	return license.Key{Exists: true, Key: k.Key, Expires: k.Expires, Blocked: k.Block, Features: k.Features,
		MaxMachines: k.MaxNoOfMachines, WholeDays: atMidnight(k.Expires) && (k.Created.IsZero() || atMidnight(k.Created))}
}

// learnDays learns from a key read from Cryptolens how it keeps dates (see dayMode),
// for the keys keysync creates next.
func (s *Syncer) learnDays(k license.Key) {
	switch {
	case k.Expires.IsZero():
	case k.WholeDays:
		s.days.Store(daysWhole)
	default:
		s.days.Store(daysSeconds)
	}
}

func atMidnight(t time.Time) bool { return !t.IsZero() && t.UTC().Truncate(24*time.Hour).Equal(t) }

// SubscriptionFor returns the subscription an event is about (see the package function).
func (s *Syncer) SubscriptionFor(ctx context.Context, typ string, payload []byte) (string, error) {
	return SubscriptionFor(ctx, s.stripe, typ, payload)
}

// TargetFor returns the subscription or purchase an event is about (see the package
// function).
func (s *Syncer) TargetFor(ctx context.Context, typ string, payload []byte) (Target, error) {
	return TargetFor(ctx, s.stripe, typ, payload)
}

// TargetOf reads the Stripe object of the given kind ("checkout.session", "invoice",
// "charge" or "dispute") and returns the subscription or purchase it is about, as an
// event about it is resolved (see TargetFor); neither for an object keysync licenses
// nothing through, or of another kind. It returns Stripe's error when the object cannot
// be read.
func (s *Syncer) TargetOf(ctx context.Context, kind, id string) (Target, error) {
	return readTargetOf(ctx, s.stripe, kind, id)
}

// Preview is what a Sync would see and do now.
type Preview struct {
	// Row is keysync's mapping row as stored (Found false: none yet).
	Row   SubscriptionRow
	Found bool
	// Status and PaidThrough are Stripe's, read now; EntitledThrough is what the policy
	// makes of them (the expiry's basis, Desired.Through).
	Status          string
	PaidThrough     time.Time
	EntitledThrough time.Time
	// Desired, Key and Actions are the first key's (of the first product the
	// subscription's items map to): Keys has them all. Desired.Mapped is false for an
	// unmapped subscription.
	Desired license.Desired
	Key     license.Key
	Actions []license.Action
	Keys    []KeyPreview
}

// KeyPreview is what a Sync would see and do to one key: the policy's wish for its
// product, the key as Cryptolens has it (Exists false: none), and the actions.
type KeyPreview struct {
	Desired license.Desired
	Key     license.Key
	Actions []license.Action
}

// keyPreviews are the previews of planned keys.
func keyPreviews(keys []*keyPlan) []KeyPreview {
	out := make([]KeyPreview, len(keys))
	for i, kp := range keys {
		out[i] = KeyPreview{Desired: kp.desired, Key: kp.key, Actions: kp.actions}
	}
	return out
}

// Preview reads the subscription and its key as Sync does and returns what Sync would
// do now, without doing it or writing anything. It returns Sync's errors.
func (s *Syncer) Preview(ctx context.Context, subscription string) (Preview, error) {
	lock, err := s.store.LockSubscription(ctx, subscription)
	if err != nil {
		return Preview{}, err
	}
	defer lock.Release()
	now := s.opts.Now().UTC()
	row, found, err := readRow(ctx, lock, subscription)
	if err != nil {
		return Preview{}, err
	}
	recs := subscriptionRecords(primaryRecord(row), row)
	p, err := s.plan(ctx, row, &recs, now, s.log.With().Str("subscription_id", subscription).Logger())
	if err != nil {
		return Preview{Row: row, Found: found}, err
	}
	out := Preview{Row: row, Found: found, Status: p.stripe.Status, PaidThrough: p.stripe.PaidThrough, Keys: keyPreviews(p.keys)}
	if len(out.Keys) > 0 {
		first := out.Keys[0]
		out.EntitledThrough, out.Desired, out.Key, out.Actions = first.Desired.Through, first.Desired, first.Key, first.Actions
	}
	return out, nil
}
