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
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/cryptolens"
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
	Disputes(ctx context.Context, charge string) ([]*stripe.Dispute, error)
	SetSubscriptionMetadata(ctx context.Context, subscription, key, value string) error
}

// Cryptolens is what Sync does to keys.
type Cryptolens interface {
	CreateKey(ctx context.Context, p cryptolens.CreateKeyParams) (cryptolens.CreatedKey, error)
	GetKey(ctx context.Context, productID int, key string) (cryptolens.Key, error)
	GetKeys(ctx context.Context, productID, page int, search string) (cryptolens.KeysPage, error)
	ExtendLicense(ctx context.Context, productID int, key string, days int) error
	BlockKey(ctx context.Context, productID int, key string) (bool, error)
	UnblockKey(ctx context.Context, productID int, key string) (bool, error)
	AddFeature(ctx context.Context, productID int, key string, feature int) error
	RemoveFeature(ctx context.Context, productID int, key string, feature int) error
	MachineLockLimit(ctx context.Context, productID int, key string, machines int) error
}

// Cause says why a Sync runs; it is written on every audit row.
type Cause struct {
	Kind string // webhook | sweep | catch_up | operator
	ID   string // event id, sweep run id, operator name
}

// Options configure the Syncer.
type Options struct {
	Policy license.Options
	// DryRun runs everything and audits it as dry_run; no change reaches Cryptolens or Stripe.
	DryRun bool
	// WriteStripeMetadata writes cryptolens_key into the subscription's metadata after a
	// key is created or adopted (KEYSYNC_WRITE_STRIPE_METADATA).
	WriteStripeMetadata bool
	// Now is the clock days are counted with (default time.Now): Cryptolens' clock in
	// production (cryptolens.Client.Now).
	Now func() time.Time
	// ObserveAction, if set, is told each action's kind and outcome (for metrics).
	ObserveAction func(kind, outcome string)
}

// Syncer runs Syncs. It is safe for concurrent use; Syncs of one subscription queue.
type Syncer struct {
	stripe  Stripe
	crypto  Cryptolens
	store   Store
	mapping *license.Mapping
	opts    Options
	log     zerolog.Logger
}

// New returns a Syncer.
func New(st Stripe, cl Cryptolens, store Store, mapping *license.Mapping, opts Options, log zerolog.Logger) *Syncer {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Syncer{stripe: st, crypto: cl, store: store, mapping: mapping, opts: opts, log: log}
}

// ErrPermanent marks a failure that retrying will not fix (an unknown subscription, a
// wrong token, a contradictory mapping). Callers stop retrying and show it.
var ErrPermanent = errors.New("permanent failure")

// IsPermanent reports whether err will fail again the same way.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrPermanent) || errors.Is(err, cryptolens.ErrPermanent) ||
		errors.Is(err, stripeapi.ErrNotFound) || errors.Is(err, stripeapi.ErrAuth) || errors.Is(err, stripeapi.ErrInvalid)
}

// Result is what a Sync did.
type Result struct {
	Key     string
	Actions []license.Action
	// Unmapped is true when the subscription maps to no plan.
	Unmapped bool
}

// Marker is the Notes marker that ties a key to its subscription.
func Marker(subscription string) string { return "stripe:" + subscription }

// run carries one Sync's state.
type run struct {
	s       *Syncer
	lock    Lock
	preview *Preview // set: decide, do not act, save nothing
	cause   Cause
	row     SubscriptionRow
	audits  []AuditRow
	now     time.Time
	log     zerolog.Logger
}

// Sync brings the subscription's key to the state the policy wants. It returns an
// error matching ErrPermanent (see IsPermanent) when a retry cannot help, and another
// error when it may. A Sync that fails part way records what it did; running it again
// continues from the key's actual state and never repeats an applied change.
func (s *Syncer) Sync(ctx context.Context, subscription string, cause Cause) (Result, error) {
	lock, err := s.store.LockSubscription(ctx, subscription)
	if err != nil {
		return Result{}, err
	}
	defer lock.Release()
	r := &run{s: s, lock: lock, cause: cause, now: s.opts.Now().UTC(),
		log: s.log.With().Str("subscription_id", subscription).Str("cause", cause.Kind).Str("cause_id", cause.ID).Logger()}
	row, err := lock.GetSubscription(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		row = SubscriptionRow{ID: subscription}
	case err != nil:
		return Result{}, err
	}
	r.row = row
	res, err := r.sync(ctx)
	if err != nil && IsPermanent(err) {
		msg := err.Error()
		r.row.LastError = &msg
		r.audit(AuditRow{Action: "error", Outcome: "failed", Message: msg})
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

func (r *run) sync(ctx context.Context) (Result, error) {
	s := r.s
	sub, err := s.stripe.GetSubscription(ctx, r.row.ID)
	if err != nil {
		return Result{}, fmt.Errorf("read subscription: %w", err)
	}
	paid, err := s.stripe.PaidInvoices(ctx, sub.ID)
	if err != nil {
		return Result{}, fmt.Errorf("read paid invoices: %w", err)
	}
	ls := license.Subscription{ID: sub.ID, Status: string(sub.Status), PaidThrough: stripeapi.PaidThrough(paid...)}
	if sub.Customer != nil {
		ls.CustomerID = sub.Customer.ID
	}
	if r.row.PaidThrough != nil && r.row.PaidThrough.After(ls.PaidThrough) {
		ls.PaidThrough = *r.row.PaidThrough // keysync only moves it forward
	}
	for _, it := range sub.Items.Data {
		ls.Items = append(ls.Items, item(it))
	}
	if s.opts.Policy.BlockOnDispute || s.opts.Policy.BlockOnRefund {
		if ls.Disputed, ls.RefundedLatest, err = r.chargeState(ctx, paid); err != nil {
			return Result{}, err
		}
	}
	r.row.CustomerID, r.row.Status = ls.CustomerID, ls.Status
	if !ls.PaidThrough.IsZero() {
		pt := ls.PaidThrough
		r.row.PaidThrough = &pt
	}
	desired, err := license.Desire(ls, s.mapping, s.opts.Policy)
	if err != nil {
		return Result{}, fmt.Errorf("%w: plan mapping: %v", ErrPermanent, err)
	}
	if !desired.Mapped && r.preview != nil {
		r.preview.Status, r.preview.PaidThrough, r.preview.Desired = ls.Status, ls.PaidThrough, desired
		return Result{Unmapped: true}, nil
	}
	if !desired.Mapped {
		if r.row.UnmappedAt == nil {
			at := r.now
			r.row.UnmappedAt = &at
			prices := make([]string, 0, len(ls.Items))
			for _, it := range ls.Items {
				prices = append(prices, it.PriceID)
			}
			r.audit(AuditRow{Action: string(license.SkipUnmapped), Outcome: "applied",
				Params: map[string]any{"prices": prices}, Message: "no plan maps these prices: no license"})
			r.log.Info().Strs("prices", prices).Msg("subscription maps to no plan: no key")
		}
		return Result{Unmapped: true}, nil
	}
	r.row.UnmappedAt = nil
	if !desired.Expires.IsZero() {
		de := desired.Expires
		r.row.DesiredExpires = &de
	}
	key, err := r.findKey(ctx, sub, desired.ProductID)
	if err != nil {
		return Result{}, err
	}
	// The key was just read from Cryptolens: its clock is known now (see Options.Now).
	r.now = s.opts.Now().UTC()
	actions := license.Actions(desired, key, license.State{BlockedByKeysync: r.row.BlockedByKeysync}, r.now)
	res := Result{Key: key.Key, Actions: actions}
	if r.preview != nil {
		r.preview.Status, r.preview.PaidThrough, r.preview.Desired, r.preview.Key, r.preview.Actions = ls.Status, ls.PaidThrough, desired, key, actions
		return res, nil
	}
	for _, a := range actions {
		created, err := r.apply(ctx, sub, desired, key, a)
		if created != "" {
			res.Key, key.Key, key.Exists = created, created, true
		}
		if err != nil {
			return res, err
		}
	}
	if key.Exists && s.opts.WriteStripeMetadata && !s.opts.DryRun && sub.Metadata["cryptolens_key"] != key.Key {
		// So the vendor sees the key in Stripe, and the mapping survives losing the database.
		if err := s.stripe.SetSubscriptionMetadata(ctx, sub.ID, "cryptolens_key", key.Key); err != nil {
			r.log.Warn().Err(err).Msg("could not write cryptolens_key to the subscription's metadata; next sync retries")
		}
	}
	return res, nil
}

// findKey returns the subscription's key: the one keysync recorded, else the one the
// subscription's metadata names, else the one whose Notes carry the marker. A key found
// the second or third way is adopted (and audited); none found means none exists.
func (r *run) findKey(ctx context.Context, sub *stripe.Subscription, product int) (license.Key, error) {
	s := r.s
	if r.row.LicenseKey != nil && r.row.ProductID != nil && *r.row.ProductID == product {
		k, err := s.crypto.GetKey(ctx, product, *r.row.LicenseKey)
		if err == nil {
			return toKey(k), nil
		}
		if !errors.Is(err, cryptolens.ErrKeyNotFound) {
			return license.Key{}, fmt.Errorf("read key: %w", err)
		}
		r.log.Warn().Str("license_key", *r.row.LicenseKey).Msg("recorded key no longer exists in Cryptolens")
		r.row.LicenseKey, r.row.KeyID = nil, nil
	}
	if name := sub.Metadata["cryptolens_key"]; name != "" {
		k, err := s.crypto.GetKey(ctx, product, name)
		switch {
		case err == nil:
			r.adopt(k, product, "subscription metadata cryptolens_key")
			return toKey(k), nil
		case !errors.Is(err, cryptolens.ErrKeyNotFound):
			return license.Key{}, fmt.Errorf("read key from metadata: %w", err)
		}
	}
	marker := Marker(sub.ID)
	page, err := s.crypto.GetKeys(ctx, product, 1, fmt.Sprintf(`notes.contains(%q)`, marker))
	if err != nil {
		return license.Key{}, fmt.Errorf("search key by marker: %w", err)
	}
	for _, k := range page.Keys {
		// contains() also matches longer ids (sub_1 in sub_12): the marker must be a
		// whole word of the notes.
		if slices.Contains(strings.Fields(k.Notes), marker) {
			r.adopt(k, product, "notes marker "+marker)
			return toKey(k), nil
		}
	}
	return license.Key{}, nil
}

func (r *run) adopt(k cryptolens.Key, product int, source string) {
	r.row.LicenseKey, r.row.ProductID = &k.Key, &product
	id := k.ID
	r.row.KeyID = &id
	r.audit(AuditRow{Action: "adopt_key", Outcome: "applied", LicenseKey: k.Key, ProductID: product,
		Params: map[string]any{"source": source, "expires": k.Expires}})
}

// apply performs one action and audits it. It returns the new key's name for a create.
func (r *run) apply(ctx context.Context, sub *stripe.Subscription, d license.Desired, key license.Key, a license.Action) (string, error) {
	s := r.s
	product := d.ProductID
	row := AuditRow{Action: string(a.Kind), LicenseKey: key.Key, ProductID: product, Params: map[string]any{}}
	switch a.Kind {
	case license.CreateKey:
		row.Params = map[string]any{"period": a.Days, "expires": a.NewExpires, "features": a.Features, "machines": a.Machines}
	case license.Extend:
		row.Params = map[string]any{"days": a.Days, "old_expires": a.OldExpires, "new_expires": a.NewExpires}
	case license.AddFeature, license.RemoveFeature:
		row.Params = map[string]any{"feature": a.Feature}
	case license.MachineLimit:
		row.Params = map[string]any{"machines": a.Machines, "old_machines": key.MaxMachines}
	case license.Block, license.Unblock:
		row.Params = map[string]any{"reason": a.Reason}
	}
	if s.opts.DryRun {
		row.Outcome = "dry_run"
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
	var created string
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
		err = s.crypto.ExtendLicense(ctx, product, key.Key, a.Days)
	case license.Block:
		var changed bool
		if changed, err = s.crypto.BlockKey(ctx, product, key.Key); err == nil && !changed {
			msg = "Not changed"
		}
	case license.Unblock:
		var changed bool
		if changed, err = s.crypto.UnblockKey(ctx, product, key.Key); err == nil {
			r.row.BlockedByKeysync = false
			if !changed {
				msg = "Not changed"
			}
		}
	case license.AddFeature:
		err = s.crypto.AddFeature(ctx, product, key.Key, a.Feature)
	case license.RemoveFeature:
		err = s.crypto.RemoveFeature(ctx, product, key.Key, a.Feature)
	case license.MachineLimit:
		err = s.crypto.MachineLockLimit(ctx, product, key.Key, a.Machines)
	}
	row.Duration = time.Since(start)
	if err != nil {
		row.Outcome, row.Message = "failed", err.Error()
		r.audit(row)
		if a.Kind == license.Block && IsPermanent(err) {
			r.row.BlockedByKeysync = false // the block certainly did not happen
		}
		r.log.Warn().Err(err).Str("action", string(a.Kind)).Str("license_key", key.Key).Msg("action failed")
		return created, fmt.Errorf("%s: %w", a.Kind, err)
	}
	row.Outcome, row.Message = "applied", msg
	r.audit(row)
	r.log.Info().Str("action", string(a.Kind)).Str("license_key", row.LicenseKey).Interface("params", row.Params).Msg("key changed")
	if a.Kind == license.CreateKey {
		// Record the new key at once: a crash before the end of this Sync must not lead
		// the next one to create another (the Notes marker would also find it).
		if err := r.lock.SaveSync(ctx, r.row, r.audits); err != nil {
			return created, fmt.Errorf("record new key: %w", err)
		}
		r.audits = nil
	}
	return created, nil
}

func (r *run) audit(a AuditRow) {
	if r.s.opts.ObserveAction != nil && r.preview == nil {
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

// chargeState reads the latest paid invoice's charge: disputed (a dispute open or lost)
// and refunded in full.
func (r *run) chargeState(ctx context.Context, paid []*stripe.Invoice) (disputed, refunded bool, err error) {
	for _, inv := range paid { // newest first
		if inv.Charge == nil || inv.Charge.ID == "" {
			continue
		}
		ch, err := r.s.stripe.GetCharge(ctx, inv.Charge.ID)
		if err != nil {
			return false, false, fmt.Errorf("read charge: %w", err)
		}
		if ch.Disputed {
			ds, err := r.s.stripe.Disputes(ctx, ch.ID)
			if err != nil {
				return false, false, fmt.Errorf("read disputes: %w", err)
			}
			for _, d := range ds {
				if d.Status != stripe.DisputeStatusWon && d.Status != stripe.DisputeStatusWarningClosed {
					disputed = true
				}
			}
		}
		return disputed, ch.Refunded, nil
	}
	return false, false, nil
}

func item(it *stripe.SubscriptionItem) license.Item {
	out := license.Item{Quantity: it.Quantity}
	if it.Price != nil {
		out.PriceID, out.PriceMetadata = it.Price.ID, it.Price.Metadata
		if it.Price.Product != nil {
			out.ProductID, out.ProductMetadata = it.Price.Product.ID, it.Price.Product.Metadata
		}
	}
	return out
}

func toKey(k cryptolens.Key) license.Key {
	return license.Key{Exists: true, Key: k.Key, Expires: k.Expires, Blocked: k.Block, Features: k.Features, MaxMachines: k.MaxNoOfMachines}
}

// SubscriptionFor returns the subscription an event is about (see the package function).
func (s *Syncer) SubscriptionFor(ctx context.Context, typ string, payload []byte) (string, error) {
	return SubscriptionFor(ctx, s.stripe, typ, payload)
}

// Preview is what a Sync would see and do now.
type Preview struct {
	// Row is keysync's mapping row as stored (Found false: none yet).
	Row   SubscriptionRow
	Found bool
	// Status and PaidThrough are Stripe's, read now.
	Status      string
	PaidThrough time.Time
	Desired     license.Desired
	Key         license.Key
	Actions     []license.Action
}

// Preview reads the subscription and its key as Sync does and returns what Sync would
// do now, without doing it or writing anything. It returns Sync's errors.
func (s *Syncer) Preview(ctx context.Context, subscription string) (Preview, error) {
	lock, err := s.store.LockSubscription(ctx, subscription)
	if err != nil {
		return Preview{}, err
	}
	defer lock.Release()
	p := &Preview{}
	r := &run{s: s, lock: lock, preview: p, cause: Cause{Kind: "operator", ID: "status"}, now: s.opts.Now().UTC(), log: s.log}
	row, err := lock.GetSubscription(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		row = SubscriptionRow{ID: subscription}
	case err != nil:
		return Preview{}, err
	default:
		p.Found = true
	}
	p.Row, r.row = row, row
	_, err = r.sync(ctx)
	return *p, err
}
