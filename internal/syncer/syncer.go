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
	"strconv"
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
	// create_key audit row is committed): new keys are e-mailed from there. It must not
	// block; the audit row stays the record a crash before the call cannot lose.
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
	Key     string
	Actions []license.Action
	// Unmapped is true when the subscription maps to no plan.
	Unmapped bool
}

// markerPrefix begins the Notes marker of a key.
const markerPrefix = "stripe:"

// Marker is the Notes marker that ties a key to its subscription: keysync writes it on
// every key it creates, and adopts a key whose Notes carry it as a whole word.
func Marker(subscription string) string { return markerPrefix + subscription }

// MarkedSubscription returns the subscription a Notes word marks, and false when the
// word is no marker. It is Marker's inverse.
func MarkedSubscription(word string) (string, bool) { return strings.CutPrefix(word, markerPrefix) }

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

// run carries one Sync's state: the row it brings up to date and the audit rows it
// saves with it.
type run struct {
	s      *Syncer
	lock   Lock
	cause  Cause
	row    SubscriptionRow
	audits []AuditRow
	now    time.Time
	log    zerolog.Logger
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
	r := &run{s: s, lock: lock, cause: cause, row: row,
		log: s.log.With().Str("subscription_id", subscription).Str("cause", string(cause.Kind)).Str("cause_id", cause.ID).Logger()}

	// 2. Plan. What the plan read is kept even when planning failed part way, so that
	// a failed Sync still records Stripe's view of the subscription.
	p, err := s.plan(ctx, row, now, r.log)
	r.now = p.now
	r.learn(p)

	// 3. Apply the plan.
	var res Result
	if err == nil {
		res, err = r.apply(ctx, p)
	}

	// 4. Record the outcome: a permanent failure is shown on the row and audited; any
	// success clears the last one.
	if err != nil && failure.IsPermanent(err) {
		msg := err.Error()
		r.row.LastError = &msg
		r.audit(AuditRow{Action: "error", Outcome: OutcomeFailed, Message: msg})
	} else if err == nil {
		r.row.LastError = nil
	}
	if r.row.CustomerID == "" {
		// Never read from Stripe (the subscription does not exist there): keep no row.
		return res, err
	}
	if err == nil {
		// "Last synced" means the key was brought to the policy's state; a failed
		// attempt is recorded in the audit and last_error instead.
		synced := r.now
		r.row.LastSyncedAt = &synced
	}
	if saveErr := lock.SaveSync(ctx, r.row, r.audits); saveErr != nil {
		return res, errors.Join(err, saveErr)
	}
	return res, err
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
// subscription, the policy's wish, the key as it is, and the actions between them. A
// plan that failed part way holds what was read before the failure.
type plan struct {
	// now is the clock the plan counted with: Cryptolens' once the key was read.
	now time.Time
	// sub and stripe are Stripe's view; sub is nil until all of it was read.
	sub    *stripe.Subscription
	stripe license.Subscription
	// desired is the policy's wish, once decided.
	desired license.Desired
	decided bool
	// key is the subscription's key as Cryptolens has it (Exists false: none).
	key license.Key
	// forget says the key keysync recorded no longer exists in Cryptolens.
	forget bool
	// keyRead says the key was looked for and key is what Cryptolens has (a plan that
	// failed before may not judge the key).
	keyRead bool
	// expiryBlocked says the key carries Cryptolens' expiry block (license.ExpiryBlocked);
	// newExpiryBlock that keysync's row does not record it yet.
	expiryBlocked, newExpiryBlock bool
	// adopted is a key keysync had not recorded, found the way adoptedFrom says.
	adopted     *cryptolens.Key
	adoptedFrom string
	actions     []license.Action
}

// plan reads the subscription from Stripe and its key from Cryptolens and asks the
// policy what to do. It writes nothing anywhere: row is keysync's row as stored, now
// the time the Sync began. It returns the plan as far as it got, and the error that
// stopped it.
func (s *Syncer) plan(ctx context.Context, row SubscriptionRow, now time.Time, log zerolog.Logger) (*plan, error) {
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

	// 2. The policy's wish. A subscription that maps to no plan has no key to find.
	desired, err := license.Desire(ls, s.mapping, s.opts.Policy)
	if err != nil {
		return p, fmt.Errorf("%w: plan mapping: %v", ErrPermanent, err)
	}
	p.desired, p.decided = desired, true
	if !desired.Mapped {
		return p, nil
	}

	// 3. The key as it is. Its dates show how Cryptolens keeps dates; a new key's days
	// are counted the way the keys seen so far showed.
	if err := s.findKey(ctx, p, row, log); err != nil {
		return p, err
	}
	p.keyRead = true
	if p.key.Exists {
		s.learnDays(p.key)
	} else {
		p.key.WholeDays = s.days.Load() == daysWhole
	}

	// 4. The actions between them. The key was just read from Cryptolens: its clock is
	// known now (see Options.Now).
	p.now = s.opts.Now().UTC()
	st := license.State{BlockedByKeysync: row.BlockedByKeysync, ExpiryBlockSeen: row.ExpiryBlockSeen}
	p.expiryBlocked = license.ExpiryBlocked(p.key, st, p.now)
	p.newExpiryBlock = p.expiryBlocked && !row.ExpiryBlockSeen
	p.actions = license.Actions(desired, p.key, st, p.now)
	return p, nil
}

// findKey finds the subscription's key for p: the one keysync recorded (row), else the
// one the subscription's metadata names (cryptolens_key, then the hosted Stripe
// module's skm_key_id, then its skm_key_globalid), else the one whose Notes carry the
// marker. A key found any way but the first is to be adopted; none found means none
// exists.
func (s *Syncer) findKey(ctx context.Context, p *plan, row SubscriptionRow, log zerolog.Logger) error {
	product := p.desired.ProductID
	if row.LicenseKey != nil && row.ProductID != nil && *row.ProductID == product {
		k, err := s.crypto.GetKey(ctx, product, *row.LicenseKey)
		if err == nil {
			p.key = toKey(k)
			return nil
		}
		if !errors.Is(err, cryptolens.ErrKeyNotFound) {
			return fmt.Errorf("read key: %w", err)
		}
		log.Warn().Str("license_key", *row.LicenseKey).Msg("recorded key no longer exists in Cryptolens")
		p.forget = true
	}
	if name := p.sub.Metadata[KeyMetadata]; name != "" {
		k, err := s.crypto.GetKey(ctx, product, name)
		switch {
		case err == nil:
			p.adopt(k, "subscription metadata "+KeyMetadata)
			return nil
		case !errors.Is(err, cryptolens.ErrKeyNotFound):
			return fmt.Errorf("read key from metadata: %w", err)
		}
	}
	for _, find := range []struct {
		metadata string
		find     func(ctx context.Context, product int, id int64) (cryptolens.Key, bool, error)
	}{{hostedKeyID, s.keyByID}, {hostedKeyGlobalID, s.keyByGlobalID}} {
		value := p.sub.Metadata[find.metadata]
		if value == "" {
			continue
		}
		id, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil || id <= 0 {
			log.Warn().Str("metadata", find.metadata).Str("value", value).Msg("subscription metadata names no key id; ignored")
			continue
		}
		k, ok, err := find.find(ctx, product, id)
		if err != nil {
			return fmt.Errorf("find key by %s: %w", find.metadata, err)
		}
		if ok {
			p.adopt(k, fmt.Sprintf("subscription metadata %s=%d", find.metadata, id))
			return nil
		}
		log.Warn().Str("metadata", find.metadata).Int64("id", id).Int("product_id", product).
			Msg("no key in the product has the id the hosted Stripe module recorded")
	}
	marker := Marker(p.sub.ID)
	page, err := s.crypto.GetKeys(ctx, product, 1, fmt.Sprintf(`notes.contains(%q)`, marker))
	if err != nil {
		return fmt.Errorf("search key by marker: %w", err)
	}
	for _, k := range page.Keys {
		// contains() also matches longer ids (sub_1 in sub_12): the marker must be a
		// whole word of the notes.
		if slices.Contains(strings.Fields(k.Notes), marker) {
			p.adopt(k, "notes marker "+marker)
			return nil
		}
	}
	return nil
}

// keyByID finds the product's key with the id, as Cryptolens' search language
// documents it (`id=5`, docs web-interface/linq-search-product.md).
func (s *Syncer) keyByID(ctx context.Context, product int, id int64) (cryptolens.Key, bool, error) {
	page, err := s.crypto.GetKeys(ctx, product, 1, fmt.Sprintf("id=%d", id))
	if err != nil {
		return cryptolens.Key{}, false, err
	}
	for _, k := range page.Keys {
		if k.ID == id {
			return k, true, nil
		}
	}
	return cryptolens.Key{}, false, nil
}

// keyByGlobalID finds the product's key with the GlobalId. Cryptolens documents no
// search by GlobalId (the search language has no such field), so it pages through all
// of the product's keys: one GetKeys call per 99 keys, at most the product's page
// count. That is paid once per subscription: the adopted key is recorded, and named in
// the subscription's cryptolens_key metadata, so later Syncs never search again.
func (s *Syncer) keyByGlobalID(ctx context.Context, product int, id int64) (cryptolens.Key, bool, error) {
	for n := 1; ; n++ {
		page, err := s.crypto.GetKeys(ctx, product, n, "")
		if err != nil {
			return cryptolens.Key{}, false, err
		}
		for _, k := range page.Keys {
			if k.GlobalID == id {
				return k, true, nil
			}
		}
		if n >= page.PageCount || len(page.Keys) == 0 {
			return cryptolens.Key{}, false, nil
		}
	}
}

func (p *plan) adopt(k cryptolens.Key, source string) {
	p.key, p.adopted, p.adoptedFrom = toKey(k), &k, source
}

// learn folds what the plan read into the row: Stripe's view, the policy's expiry, and
// the key as found (an adopted key is audited). It changes nothing outside keysync's
// own row.
func (r *run) learn(p *plan) {
	if p.sub == nil {
		return
	}
	r.row.CustomerID, r.row.Status = p.stripe.CustomerID, p.stripe.Status
	if !p.stripe.PaidThrough.IsZero() {
		pt := p.stripe.PaidThrough
		r.row.PaidThrough = &pt
	}
	if !p.decided || !p.desired.Mapped {
		return // an unmapped subscription is recorded by apply, once
	}
	r.row.UnmappedAt = nil
	if !p.desired.Through.IsZero() {
		et := p.desired.Through
		r.row.EntitledThrough = &et
	}
	if !p.desired.Expires.IsZero() {
		de := p.desired.Expires
		r.row.DesiredExpires = &de
	}
	if p.keyRead {
		// Seen now, or seen before and not lifted yet; a key seen unblocked (or with
		// keysync's own block) clears it.
		r.row.ExpiryBlockSeen = p.expiryBlocked
	}
	if p.forget {
		r.row.LicenseKey, r.row.KeyID = nil, nil
	}
	if k := p.adopted; k != nil {
		product := p.desired.ProductID
		r.row.LicenseKey, r.row.ProductID = &k.Key, &product
		id := k.ID
		r.row.KeyID = &id
		r.audit(AuditRow{Action: "adopt_key", Outcome: OutcomeApplied, LicenseKey: k.Key, ProductID: product,
			Params: map[string]any{"source": p.adoptedFrom, "expires": k.Expires}})
	}
}

// apply carries out the plan: it records an unmapped subscription (once), or performs
// the plan's actions in order and then names the key in Stripe's metadata.
func (r *run) apply(ctx context.Context, p *plan) (Result, error) {
	s := r.s
	if !p.desired.Mapped {
		if r.row.UnmappedAt == nil {
			at := r.now
			r.row.UnmappedAt = &at
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
	key := p.key
	res := Result{Key: key.Key, Actions: slices.Clone(p.actions)}
	if p.newExpiryBlock && len(p.actions) > 0 && !s.opts.DryRun {
		// Recorded before any call: once the key is extended it no longer looks
		// expired, so a retry after "extended, then the unblock failed" knows the block
		// is Cryptolens' expiry block only from this row.
		if err := r.lock.SaveSync(ctx, r.row, nil); err != nil {
			return res, fmt.Errorf("record expiry block: %w", err)
		}
	}
	for i := 0; i < len(res.Actions); i++ {
		a := res.Actions[i]
		// Each action names the key by its string as it is now: an SKGL key gets a new
		// one from a change (see perform).
		renamed, err := r.perform(ctx, p.sub, p.desired, key, a)
		if renamed != "" {
			res.Key, key.Key, key.Exists = renamed, renamed, true
		}
		if err != nil {
			return res, err
		}
		if a.Kind == license.CreateKey {
			more, err := r.checkNewKey(ctx, p.desired, key.Key)
			if err != nil {
				return res, err
			}
			res.Actions = append(res.Actions, more...)
		}
	}

	// Name the key in Stripe's metadata, so the vendor sees it in Stripe and the mapping
	// survives losing the database. Stripe refuses to change a canceled subscription's
	// metadata (it did in 2023–24: "A canceled subscription can only update its
	// cancellation_details"), and a canceled subscription's key only stays blocked: no
	// write, so none fails on every Sync either.
	if key.Exists && s.opts.WriteStripeMetadata && !s.opts.DryRun && p.sub.Metadata[KeyMetadata] != key.Key &&
		p.sub.Status != stripe.SubscriptionStatusCanceled {
		if err := s.stripe.SetSubscriptionMetadata(ctx, p.sub.ID, KeyMetadata, key.Key); err != nil {
			r.log.Warn().Err(err).Str("metadata", KeyMetadata).Msg("could not write the key into the subscription's metadata; next sync retries")
		}
	}
	return res, nil
}

// checkNewKey reads a key just created back when the Syncer does not know yet whether
// Cryptolens keeps dates to the second or as whole days: with whole days, CreateKey
// counts Period from midnight and the key may fall up to a day short of the target. It
// learns which from the key and returns the extension that makes up a shortfall, so the
// key is never short after the Sync. Once a key has shown how dates are kept, new keys'
// Period is counted that way (license.Key.WholeDays) and no read is needed.
func (r *run) checkNewKey(ctx context.Context, d license.Desired, key string) ([]license.Action, error) {
	if r.s.opts.DryRun || r.s.days.Load() != daysUnknown {
		return nil, nil
	}
	k, err := r.s.crypto.GetKey(ctx, d.ProductID, key)
	if err != nil {
		return nil, fmt.Errorf("read the new key back: %w", err)
	}
	created := toKey(k)
	r.s.learnDays(created)
	var out []license.Action
	for _, a := range license.Actions(d, created, license.State{}, r.now) {
		if a.Kind == license.Extend {
			a.Reason = "the new key fell short of the target: Cryptolens keeps whole days"
			out = append(out, a)
		}
	}
	return out, nil
}

// perform performs one action and audits it. It returns the key's new string: the new
// key's for a create, and an SKGL key's new one when a change gave it one ("" when the
// string stays).
func (r *run) perform(ctx context.Context, sub *stripe.Subscription, d license.Desired, key license.Key, a license.Action) (string, error) {
	s := r.s
	product := d.ProductID
	row := AuditRow{Action: string(a.Kind), LicenseKey: key.Key, ProductID: product, Params: map[string]any{}}
	switch a.Kind {
	case license.CreateKey:
		// The expiry's basis (entitled-through) and, beside it, what is paid.
		row.Params = map[string]any{"period": a.Days, "expires": a.NewExpires, "features": a.Features, "machines": a.Machines,
			"entitled_through": d.Through, "paid_through": r.row.PaidThrough}
	case license.Extend:
		row.Params = map[string]any{"days": a.Days, "old_expires": a.OldExpires, "new_expires": a.NewExpires,
			"entitled_through": d.Through, "paid_through": r.row.PaidThrough}
		if a.Reason != "" {
			row.Params["reason"] = a.Reason
		}
	case license.AddFeature, license.RemoveFeature:
		row.Params = map[string]any{"feature": a.Feature}
	case license.MachineLimit:
		row.Params = map[string]any{"machines": a.Machines, "old_machines": key.MaxMachines}
	case license.Block, license.Unblock:
		row.Params = map[string]any{"reason": a.Reason}
	}
	if s.opts.DryRun {
		row.Outcome = OutcomeDryRun
		r.audit(row)
		return "", nil
	}
	if a.Kind == license.Block && !r.row.BlockedByKeysync {
		// The intent is recorded before the call: if BlockKey succeeds and its answer is
		// lost, keysync still knows the block is its own and can lift it later.
		r.row.BlockedByKeysync = true
		if err := r.lock.SaveSync(ctx, r.row, nil); err != nil {
			return "", fmt.Errorf("record block intent: %w", err)
		}
	}
	start := time.Now()
	var created, renamed string
	var msg string
	var err error
	switch a.Kind {
	case license.CreateKey:
		p := cryptolens.CreateKeyParams{ProductID: product, Period: a.Days, Features: a.Features, Notes: Marker(sub.ID), MaxNoOfMachines: a.Machines}
		if sub.Customer != nil {
			if c, cerr := s.stripe.GetCustomer(ctx, sub.Customer.ID); cerr == nil && c.Email != "" {
				p.AddOrUseExistingCustomer, p.Name, p.Email = true, c.Name, c.Email
			} else if cerr != nil && !errors.Is(cerr, stripeapi.ErrNotFound) {
				return "", fmt.Errorf("read customer: %w", cerr)
			}
		}
		var k cryptolens.CreatedKey
		if k, err = s.crypto.CreateKey(ctx, p); err == nil {
			created = k.Key
			row.LicenseKey = k.Key
			r.row.LicenseKey, r.row.ProductID = &created, &product
			r.row.KeyID = nil
		}
	case license.Extend:
		renamed, err = s.crypto.ExtendLicense(ctx, product, key.Key, a.Days)
	case license.Block:
		var changed bool
		if changed, err = s.crypto.BlockKey(ctx, product, key.Key); err == nil && !changed {
			msg = "Not changed"
		}
	case license.Unblock:
		var changed bool
		if changed, err = s.crypto.UnblockKey(ctx, product, key.Key); err == nil {
			r.row.BlockedByKeysync, r.row.ExpiryBlockSeen = false, false
			if !changed {
				msg = "Not changed"
			}
		}
	case license.AddFeature:
		renamed, err = s.crypto.AddFeature(ctx, product, key.Key, a.Feature)
	case license.RemoveFeature:
		renamed, err = s.crypto.RemoveFeature(ctx, product, key.Key, a.Feature)
	case license.MachineLimit:
		err = s.crypto.MachineLockLimit(ctx, product, key.Key, a.Machines)
	}
	row.Duration = time.Since(start)
	if err != nil {
		row.Outcome, row.Message = OutcomeFailed, err.Error()
		r.audit(row)
		if a.Kind == license.Block && failure.IsPermanent(err) {
			r.row.BlockedByKeysync = false // the block certainly did not happen
		}
		r.log.Warn().Err(err).Str("action", string(a.Kind)).Str("license_key", key.Key).Msg("action failed")
		return created, fmt.Errorf("%s: %w", a.Kind, err)
	}
	row.Outcome, row.Message = OutcomeApplied, msg
	r.audit(row)
	r.log.Info().Str("action", string(a.Kind)).Str("license_key", row.LicenseKey).Interface("params", row.Params).Msg("key changed")
	switch {
	case a.Kind == license.CreateKey:
		// Record the new key at once: a crash before the end of this Sync must not lead
		// the next one to create another (the Notes marker would also find it).
		if err := r.lock.SaveSync(ctx, r.row, r.audits); err != nil {
			return created, fmt.Errorf("record new key: %w", err)
		}
		r.audits = nil
		if s.opts.KeyCreated != nil {
			s.opts.KeyCreated(ctx)
		}
		return created, nil
	case renamed != "":
		return renamed, r.rename(ctx, product, key.Key, renamed, a.Kind)
	}
	return "", nil
}

// rename follows an SKGL key to the new string a change gave it: Cryptolens documents
// that ExtendLicense on an SKGL product changes the key string "if necessary" and
// answers the new key in message, and the old string names no key any more. keysync
// records the new string at once (a crash must not leave it looking for the old one),
// audits the change, and names the new key in Stripe's metadata at the end of the Sync.
// The customer's copy of the old string goes stale: SKM15 products avoid this.
func (r *run) rename(ctx context.Context, product int, old, renamed string, by license.ActionKind) error {
	r.row.LicenseKey, r.row.ProductID = &renamed, &product
	r.audit(AuditRow{Action: "adopt_key", Outcome: OutcomeApplied, LicenseKey: renamed, ProductID: product,
		Params: map[string]any{"source": "skgl key change", "old_key": old, "new_key": renamed, "changed_by": string(by)}})
	r.log.Warn().Str("license_key", renamed).Str("old_license_key", old).Str("action", string(by)).
		Msg("Cryptolens gave the SKGL key a new string; keysync follows it, the customer's copy is stale")
	if err := r.lock.SaveSync(ctx, r.row, r.audits); err != nil {
		return fmt.Errorf("record the key's new string: %w", err)
	}
	r.audits = nil
	return nil
}

func (r *run) audit(a AuditRow) {
	if r.s.opts.ObserveAction != nil {
		r.s.opts.ObserveAction(a.Action, a.Outcome)
	}
	a.SubscriptionID, a.CustomerID = r.row.ID, r.row.CustomerID
	if a.LicenseKey == "" && r.row.LicenseKey != nil {
		a.LicenseKey = *r.row.LicenseKey
	}
	if a.ProductID == 0 && r.row.ProductID != nil {
		a.ProductID = *r.row.ProductID
	}
	a.Cause, a.CauseID = r.cause.Kind, r.cause.ID
	r.audits = append(r.audits, a)
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
	Desired         license.Desired
	Key             license.Key
	Actions         []license.Action
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
	p, err := s.plan(ctx, row, now, s.log.With().Str("subscription_id", subscription).Logger())
	if err != nil {
		return Preview{Row: row, Found: found}, err
	}
	return Preview{Row: row, Found: found, Status: p.stripe.Status, PaidThrough: p.stripe.PaidThrough,
		EntitledThrough: p.desired.Through, Desired: p.desired, Key: p.key, Actions: p.actions}, nil
}
