// Package reconcile finds what webhooks missed: a periodic sweep compares every
// subscription in Stripe with every key in Cryptolens and enqueues a Sync for each one
// that drifted, and one for each recent one-time purchase keysync has not settled; a
// catch-up reads the Events API for events that never arrived.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
)

// The kinds of run, as sync_runs records them: the kinds of cause their Syncs carry, so
// that a sweep's audit rows (cause sweep, cause_id the run's id) name their run.
const (
	runSweep   = string(syncer.CauseSweep)
	runCatchUp = string(syncer.CauseCatchUp)
)

// SweepStripe is what the sweep reads from Stripe.
type SweepStripe interface {
	Subscriptions(ctx context.Context) iter.Seq2[*stripe.Subscription, error]
	GetProduct(ctx context.Context, id string) (*stripe.Product, error)
	CompleteLines(ctx context.Context, inv *stripe.Invoice) error
	CompleteSessions(ctx context.Context, since time.Time) iter.Seq2[*stripe.CheckoutSession, error]
	PaidInvoicesSince(ctx context.Context, since time.Time) iter.Seq2[*stripe.Invoice, error]
}

// SweepCryptolens is what the sweep reads from Cryptolens.
type SweepCryptolens interface {
	AllKeys(ctx context.Context, productID int, search string) iter.Seq2[cryptolens.Key, error]
}

// SweepStore is what the sweep reads and records.
type SweepStore interface {
	StartRun(ctx context.Context, kind string) (int64, error)
	FinishRun(ctx context.Context, id int64, sum postgres.RunSummary) error
	SubscriptionIndex(ctx context.Context) (map[string]postgres.SubscriptionBrief, error)
	TryLockRun(ctx context.Context, kind string) (*postgres.RunLock, bool, error)
	SweepCursor(ctx context.Context) (time.Time, bool, error)
	PurchaseIndex(ctx context.Context, since time.Time) (map[string]postgres.PurchaseBrief, error)
}

// Enqueue schedules Syncs of the drifted subscriptions and purchases (syncer.IsPurchase
// tells them apart), caused by sweep run runID.
type Enqueue func(ctx context.Context, ids []string, runID int64) error

// Sweeper runs sweeps.
type Sweeper struct {
	stripe  SweepStripe
	crypto  SweepCryptolens
	store   SweepStore
	mapping *license.Mapping
	policy  license.Options
	enqueue Enqueue
	now     func() time.Time
	log     zerolog.Logger
	// OnRun, if set, is told each run's summary (for metrics).
	OnRun func(Summary)
}

// SweeperOptions configures a Sweeper.
type SweeperOptions struct {
	// Mapping maps prices to Cryptolens products and features (required).
	Mapping *license.Mapping
	// Policy is the license policy's settings, as the sync engine has them.
	Policy license.Options
	// Enqueue schedules the Syncs of the subscriptions a sweep finds drifted (required).
	Enqueue Enqueue
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// NewSweeper returns a Sweeper.
func NewSweeper(st SweepStripe, cl SweepCryptolens, store SweepStore, opts SweeperOptions, log zerolog.Logger) *Sweeper {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Sweeper{stripe: st, crypto: cl, store: store, mapping: opts.Mapping, policy: opts.Policy, enqueue: opts.Enqueue,
		now: opts.Now, log: log}
}

// Summary is what a sweep found.
type Summary struct {
	// Skipped is true when another sweep was running (on any replica): this one did
	// nothing.
	Skipped bool
	RunID   int64
	// Scanned counts subscriptions; Purchases the one-time purchases of the window.
	Scanned   int
	Purchases int
	Drifted   []Drift
	Orphans   []string
	Failed    int
	Took      time.Duration
	// Cursor is how far this sweep looked for purchases (Stripe's creation time): the
	// next one lists from a day before it.
	Cursor time.Time
}

// Drift is one subscription whose key is not what the policy wants, or one purchase
// keysync has not settled (Purchase set instead).
type Drift struct {
	Subscription string
	Purchase     string
	Reason       string
}

// ID is the drifted subscription's or purchase's id.
func (d Drift) ID() string {
	if d.Purchase != "" {
		return d.Purchase
	}
	return d.Subscription
}

// purchaseLag is how far before the cursor a sweep lists purchases: a Checkout Session
// completes up to 24 hours after it was created (its expires_at is at most 24 hours
// after creation; stripe-go v76 CheckoutSessionParams.ExpiresAt), and an invoice is
// listed when paid within a day of its creation (later payments come by webhook and the
// catch-up).
const purchaseLag = 24 * time.Hour

// pending is what a sweep keeps of one subscription until the keys are read: a few
// dozen bytes, so that a sweep of 100,000 subscriptions stays well under 150 MB.
type pending struct {
	id string
	// desired is the wish for the first product's key, more for a bundle's others.
	desired     desire
	more        []desire
	metaKey     string
	mapped      bool
	linesUnread bool
	err         string
}

// markerKey names a key by its Notes marker's id and its product: a bundle's keys all
// carry their subscription's marker, each in its own product.
type markerKey struct {
	id      string
	product int32
}

// desire is a license.Desired without what drift detection does not read (sources,
// reasons), its features and machine limit packed.
type desire struct {
	expires             int64 // UnixNano, 0 when not extending
	product             int32
	machines            int32 // -1 when no plan manages it
	featOn, featManaged uint8
	needKey, block      bool
}

func packDesire(d license.Desired) desire {
	p := desire{product: int32(d.ProductID), machines: -1, needKey: d.NeedKey, block: d.Block}
	if !d.Expires.IsZero() {
		p.expires = d.Expires.UnixNano()
	}
	if d.Machines != nil {
		p.machines = int32(*d.Machines)
	}
	for f, on := range d.Features {
		if f >= 1 && f <= 8 {
			p.featManaged |= 1 << (f - 1)
			if on {
				p.featOn |= 1 << (f - 1)
			}
		}
	}
	return p
}

func (p desire) unpack() license.Desired {
	d := license.Desired{Mapped: true, ProductID: int(p.product), NeedKey: p.needKey, Block: p.block, Features: map[int]bool{}}
	if p.expires != 0 {
		d.Expires = time.Unix(0, p.expires).UTC()
	}
	if p.machines >= 0 {
		m := int(p.machines)
		d.Machines = &m
	}
	for f := 1; f <= 8; f++ {
		if p.featManaged&(1<<(f-1)) != 0 {
			d.Features[f] = p.featOn&(1<<(f-1)) != 0
		}
	}
	return d
}

// keyBrief is what a sweep keeps of one Cryptolens key.
type keyBrief struct {
	key      string
	expires  int64 // UnixNano
	product  int32
	machines int32
	features uint8
	block    bool
}

func briefKey(k cryptolens.Key) keyBrief {
	b := keyBrief{key: k.Key, expires: k.Expires.UnixNano(), machines: int32(k.MaxNoOfMachines), block: k.Block}
	for i, on := range k.Features {
		if on {
			b.features |= 1 << i
		}
	}
	return b
}

func (b keyBrief) license() license.Key {
	k := license.Key{Exists: true, Key: b.key, Expires: time.Unix(0, b.expires).UTC(), Blocked: b.block, MaxMachines: int(b.machines)}
	for i := range k.Features {
		k.Features[i] = b.features&(1<<i) != 0
	}
	return k
}

// RunOnce sweeps once: it lists every subscription and every key of the mapped
// products, page by page, compares each subscription's key with the policy (without a
// GetKey per key), and enqueues a Sync for each drifted one. Failures of one
// subscription are counted and do not stop the run. It returns the run's summary and
// an error only when the run could not complete.
func (s *Sweeper) RunOnce(ctx context.Context) (Summary, error) {
	start := time.Now()
	lock, ok, err := s.store.TryLockRun(ctx, runSweep)
	if err != nil {
		return Summary{}, err
	}
	if !ok {
		s.log.Info().Msg("sweep skipped: another sweep is running")
		return Summary{Skipped: true}, nil
	}
	defer lock.Release()
	runID, err := s.store.StartRun(ctx, runSweep)
	if err != nil {
		return Summary{}, err
	}
	sum := Summary{RunID: runID}
	err = s.sweep(ctx, &sum)
	sum.Took = time.Since(start)
	rs := postgres.RunSummary{Scanned: sum.Scanned + sum.Purchases, Drifted: len(sum.Drifted), Failed: sum.Failed, Orphans: len(sum.Orphans)}
	if err != nil {
		rs.Error = err.Error()
	} else if !sum.Cursor.IsZero() {
		rs.Cursor = strconv.FormatInt(sum.Cursor.Unix(), 10)
	}
	if ferr := s.store.FinishRun(ctx, runID, rs); ferr != nil {
		err = errors.Join(err, ferr)
	}
	ev := s.log.Info()
	if err != nil {
		ev = s.log.Error().Err(err)
	}
	if s.OnRun != nil {
		s.OnRun(sum)
	}
	ev.Int64("run_id", runID).Int("scanned", sum.Scanned).Int("purchases", sum.Purchases).Int("drifted", len(sum.Drifted)).Int("orphans", len(sum.Orphans)).
		Int("failed", sum.Failed).Dur("took", sum.Took).Msg("sweep finished")
	return sum, err
}

func (s *Sweeper) sweep(ctx context.Context, sum *Summary) error {
	// One-time purchases first: their window ends where the sweep starts. A failure to
	// list them (an API key without read access to Checkout Sessions, say) must not stop
	// the subscriptions' sweep: it is reported when the subscriptions are done, and the
	// purchases' cursor stays where it was, so the next sweep looks again.
	perr := s.sweepPurchases(ctx, sum)
	if perr != nil {
		if ctx.Err() != nil {
			return perr
		}
		sum.Cursor = time.Time{}
		s.log.Error().Err(perr).Msg("one-time purchases not swept; sweeping the subscriptions all the same")
		perr = fmt.Errorf("sweep one-time purchases: %w", perr)
	}
	if err := s.sweepSubscriptions(ctx, sum); err != nil {
		return errors.Join(err, perr)
	}
	return perr
}

// sweepSubscriptions compares every subscription with its keys and queues a Sync for
// each that drifted, and for the purchases sweepPurchases found.
func (s *Sweeper) sweepSubscriptions(ctx context.Context, sum *Summary) error {
	rows, err := s.store.SubscriptionIndex(ctx)
	if err != nil {
		return err
	}
	productMeta := map[string]map[string]string{} // Stripe product -> metadata, read once a sweep
	var subs []pending
	inStripe := map[string]struct{}{}
	products := map[int]bool{}
	for _, p := range s.mapping.Products() {
		products[p] = true
	}
	for _, b := range rows {
		for _, k := range b.Keys() {
			products[k.ProductID] = true
		}
	}
	for sub, err := range s.stripe.Subscriptions(ctx) {
		if err != nil {
			return fmt.Errorf("list subscriptions: %w", err)
		}
		sum.Scanned++
		inStripe[sub.ID] = struct{}{}
		p := pending{id: sub.ID, metaKey: sub.Metadata[syncer.KeyMetadata]}
		if inv := sub.LatestInvoice; inv != nil && inv.Status == stripe.InvoiceStatusPaid && inv.Lines != nil && inv.Lines.HasMore {
			// Prorations come first: the subscription line may be past the embedded page.
			if err := s.stripe.CompleteLines(ctx, inv); err != nil {
				s.log.Warn().Err(err).Str("subscription_id", sub.ID).Msg("could not read the latest invoice's lines; a Sync will")
				p.linesUnread = true
			}
		}

		// The policy's inputs, read as a Sync reads them (stripeapi.Subscription), from
		// the latest invoice instead of all paid ones: what earlier invoices paid for,
		// keysync's row remembers (paid-through and entitled-through only move forward).
		ls := stripeapi.Subscription(sub, sub.LatestInvoice)
		row := rows[sub.ID]
		if row.PaidThrough.After(ls.PaidThrough) {
			ls.PaidThrough = row.PaidThrough
		}
		ls.StoredThrough = row.EntitledThrough
		for i := range ls.Items {
			// The list does not expand products: their metadata is read once a sweep.
			id := ls.Items[i].ProductID
			if id == "" {
				continue
			}
			md, ok := productMeta[id]
			if !ok {
				prod, err := s.stripe.GetProduct(ctx, id)
				if err != nil {
					return fmt.Errorf("read product %s: %w", id, err)
				}
				md = prod.Metadata
				productMeta[id] = md
			}
			ls.Items[i].ProductMetadata = md
		}
		ds, err := license.Desire(ls, s.mapping, s.policy)
		if err != nil {
			p.err = err.Error()
		}
		for i, d := range ds {
			if i == 0 {
				p.desired, p.mapped = packDesire(d), true
			} else {
				p.more = append(p.more, packDesire(d))
			}
			products[d.ProductID] = true
		}
		subs = append(subs, p)
	}

	// Every key of every product in play, indexed by name and by Notes marker.
	var keys []keyBrief
	byKey := map[string]int32{}
	byMarker := map[markerKey]int32{}
	for product := range products {
		for k, err := range s.crypto.AllKeys(ctx, product, "") {
			if err != nil {
				return fmt.Errorf("list keys of product %d: %w", product, err)
			}
			i := int32(len(keys))
			b := briefKey(k)
			b.product = int32(product)
			keys = append(keys, b)
			byKey[k.Key] = i
			for _, word := range strings.Fields(k.Notes) {
				if sub, ok := syncer.MarkedSubscription(word); ok && !syncer.IsPurchase(sub) {
					byMarker[markerKey{strings.Clone(sub), int32(product)}] = i
					if _, ok := inStripe[sub]; !ok {
						sum.Orphans = append(sum.Orphans, fmt.Sprintf("%s (notes name %s, which Stripe does not have)", k.Key, sub))
					}
				}
			}
		}
	}
	for sub, b := range rows {
		if _, ok := inStripe[sub]; ok {
			continue
		}
		for _, k := range b.Keys() {
			sum.Orphans = append(sum.Orphans, fmt.Sprintf("%s (mapped to %s, which Stripe does not have)", k.LicenseKey, sub))
		}
	}
	slices.Sort(sum.Orphans)
	sum.Orphans = slices.Compact(sum.Orphans)

	now := s.now().UTC() // after the keys were read: Cryptolens' clock is known (cryptolens.Client.Now)
	for _, p := range subs {
		row, hasRow := rows[p.id]
		var reason string
		switch {
		case p.err != "":
			reason = "mapping error"
		case p.linesUnread:
			reason = "latest invoice's lines unread"
		case !p.mapped:
			if !hasRow || !row.Unmapped {
				reason = "unmapped, not yet recorded"
			}
		default:
			// Each product's key, judged alone: a bundle drifts when any of its keys does.
			var reasons []string
			for _, want := range append([]desire{p.desired}, p.more...) {
				if r := judgeKey(p, want, row, hasRow, keys, byKey, byMarker, now); r != "" {
					if len(p.more) > 0 {
						r = fmt.Sprintf("product %d: %s", want.product, r)
					}
					reasons = append(reasons, r)
				}
			}
			reason = strings.Join(reasons, "; ")
		}
		if reason != "" {
			sum.Drifted = append(sum.Drifted, Drift{Subscription: p.id, Reason: reason})
		}
	}
	if len(sum.Drifted) == 0 {
		return nil
	}
	ids := make([]string, len(sum.Drifted))
	for i, d := range sum.Drifted {
		ids[i] = d.ID()
	}
	if err := s.enqueue(ctx, ids, sum.RunID); err != nil {
		return fmt.Errorf("enqueue syncs: %w", err)
	}
	return nil
}

// sweepPurchases finds the one-time purchases keysync has not settled: every complete
// Checkout Session in payment mode and every paid invoice of no subscription that
// Stripe created since a day before the stored cursor, unless keysync's last Sync of it
// succeeded with its payment settled; and every purchase keysync recorded unsettled (an
// asynchronous payment, an open invoice, a failed Sync), whenever it was made. Each is
// a Drift. The cursor moves to the sweep's start.
func (s *Sweeper) sweepPurchases(ctx context.Context, sum *Summary) error {
	now := s.now().UTC()
	cursor, ok, err := s.store.SweepCursor(ctx)
	if err != nil {
		return err
	}
	if !ok {
		cursor = now // the first sweep looks one day back
	}
	since := cursor.Add(-purchaseLag)
	known, err := s.store.PurchaseIndex(ctx, since)
	if err != nil {
		return err
	}
	// A session's post-payment invoice is part of the session's purchase.
	ofSession := map[string]bool{}
	for _, b := range known {
		if b.InvoiceID != "" {
			ofSession[b.InvoiceID] = true
		}
	}
	seen := map[string]bool{}
	drift := func(id, reason string) {
		if !seen[id] {
			seen[id] = true
			sum.Drifted = append(sum.Drifted, Drift{Purchase: id, Reason: reason})
		}
	}
	judge := func(id string) {
		sum.Purchases++
		switch b, ok := known[id]; {
		case !ok:
			drift(id, "purchase not recorded")
		case !b.Settled():
			drift(id, "purchase not settled")
		}
	}
	for sess, err := range s.stripe.CompleteSessions(ctx, since) {
		if err != nil {
			return fmt.Errorf("list checkout sessions: %w", err)
		}
		if sess.Mode == stripe.CheckoutSessionModePayment { // a subscription's is swept with it
			judge(sess.ID)
		}
	}
	for inv, err := range s.stripe.PaidInvoicesSince(ctx, since) {
		if err != nil {
			return fmt.Errorf("list paid invoices: %w", err)
		}
		if inv.Subscription == nil && !ofSession[inv.ID] {
			judge(inv.ID)
		}
	}
	ids := make([]string, 0, len(known))
	for id, b := range known {
		if !b.Settled() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		drift(id, "purchase not settled")
	}
	sum.Cursor = now
	return nil
}

// judgeKey returns why the key of one product of p is not what want says ("" when it
// is): the actions a Sync would take, or a key that exists without its mapping row. The
// key is the one keysync recorded for the product, else the one the subscription's
// cryptolens_key metadata names, else the one in the product whose Notes carry the
// subscription's marker.
func judgeKey(p pending, want desire, row postgres.SubscriptionBrief, hasRow bool, keys []keyBrief, byKey map[string]int32,
	byMarker map[markerKey]int32, now time.Time) string {
	rec, recorded := row.Key(int(want.product))
	i, found := byKey[rec.LicenseKey]
	found = found && recorded && keys[i].product == want.product
	if !found && p.metaKey != "" {
		i, found = byKey[p.metaKey]
		found = found && keys[i].product == want.product
	}
	if !found {
		i, found = byMarker[markerKey{p.id, want.product}]
	}
	key := license.Key{}
	if found {
		key = keys[i].license()
	}
	st := license.State{BlockedByKeysync: rec.BlockedByKeysync, ExpiryBlockSeen: rec.ExpiryBlockSeen}
	acts := license.Actions(want.unpack(), key, st, now)
	switch {
	case len(acts) > 0:
		kinds := make([]string, len(acts))
		for i, a := range acts {
			kinds[i] = string(a.Kind)
		}
		return strings.Join(kinds, ", ")
	case found && (!hasRow || !recorded || rec.LicenseKey != key.Key):
		return "missing mapping row"
	}
	return ""
}
