package syncer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/stripeapi"
)

// The machinery every key goes through, a subscription's or a purchase's: find the key
// (recorded, named in metadata, or by its Notes marker), plan its actions, and perform
// them one by one, recording each intent before the call and each new key at once.

// owner is what a Sync keeps keys for: a subscription or a purchase.
type owner struct {
	// id names the owner in the Notes marker of its keys.
	id string
	// metadata is the subscription's Stripe metadata, which may name its key (nil for a
	// purchase).
	metadata map[string]string
	// customer returns the Stripe customer's name and email for a new key ("" when
	// unknown).
	customer func(ctx context.Context) (name, email string, err error)
}

// keyPlan is one key of a Sync: the policy's wish for one Cryptolens product, keysync's
// record of the key, the key as Cryptolens has it, and the actions between them.
type keyPlan struct {
	desired license.Desired
	// rec is keysync's record of the key: stored, or new for a product it has none for.
	rec *KeyRow
	// primary says metadata of Cryptolens' hosted Stripe module may name this key: the
	// module issued one key per subscription, and its ids are per product.
	primary bool
	// key is the key as Cryptolens has it (Exists false: none); read says it was looked
	// for (a plan that failed before may not judge the key).
	key  license.Key
	read bool
	// forget says the key keysync recorded no longer exists in Cryptolens.
	forget bool
	// adopted is a key keysync had not recorded, found the way adoptedFrom says;
	// byMarker says it was found by keysync's own Notes marker.
	adopted     *cryptolens.Key
	adoptedFrom string
	byMarker    bool
	// expiryBlocked says the key carries Cryptolens' expiry block (license.ExpiryBlocked);
	// newExpiryBlock that keysync's record does not say so yet.
	expiryBlocked, newExpiryBlock bool
	actions                       []license.Action
}

// recordFor returns keysync's record of the key of product among recs, or adds a new
// one (no key yet) to recs.
func recordFor(recs *[]*KeyRow, product int) *KeyRow {
	for _, r := range *recs {
		if r.ProductID == product {
			return r
		}
	}
	r := &KeyRow{ProductID: product}
	*recs = append(*recs, r)
	return r
}

// planKey finds kp's key and decides its actions. It writes nothing anywhere. now is
// returned as Cryptolens' clock once the key was read (see Options.Now).
func (s *Syncer) planKey(ctx context.Context, kp *keyPlan, o owner, log zerolog.Logger) (time.Time, error) {
	// 1. The key as it is. Its dates show how Cryptolens keeps dates; a new key's days
	// are counted the way the keys seen so far showed.
	if err := s.findKey(ctx, kp, o, log); err != nil {
		return time.Time{}, err
	}
	kp.read = true
	if kp.key.Exists {
		s.learnDays(kp.key)
	} else {
		kp.key.WholeDays = s.days.Load() == daysWhole
	}

	// 2. The actions between the wish and the key. The key was just read from
	// Cryptolens: its clock is known now. A perpetual key has no expiry block: a block
	// on it is keysync's or the vendor's.
	now := s.opts.Now().UTC()
	st := license.State{BlockedByKeysync: kp.rec.BlockedByKeysync, ExpiryBlockSeen: kp.rec.ExpiryBlockSeen}
	if !kp.desired.Perpetual {
		kp.expiryBlocked = license.ExpiryBlocked(kp.key, st, now)
		kp.newExpiryBlock = kp.expiryBlocked && !kp.rec.ExpiryBlockSeen
	}
	kp.actions = license.Actions(kp.desired, kp.key, st, now)
	return now, nil
}

// findKey finds kp's key: the one keysync recorded, else the one the subscription's
// metadata names (cryptolens_key, then, for the primary key, the hosted Stripe module's
// skm_key_id and skm_key_globalid), else the one in the product whose Notes carry the
// owner's marker. A key found any way but the first is to be adopted; none found means
// none exists.
func (s *Syncer) findKey(ctx context.Context, kp *keyPlan, o owner, log zerolog.Logger) error {
	product := kp.desired.ProductID
	if kp.rec.LicenseKey != nil {
		k, err := s.crypto.GetKey(ctx, product, *kp.rec.LicenseKey)
		if err == nil {
			kp.key = toKey(k)
			return nil
		}
		if !errors.Is(err, cryptolens.ErrKeyNotFound) {
			return fmt.Errorf("read key: %w", err)
		}
		log.Warn().Str("license_key", cryptolens.KeyFingerprint(*kp.rec.LicenseKey)).Int("product_id", product).Msg("recorded key no longer exists in Cryptolens")
		kp.forget = true
	}
	if name := o.metadata[KeyMetadata]; name != "" {
		k, err := s.crypto.GetKey(ctx, product, name)
		switch {
		case err == nil:
			kp.adopt(k, "subscription metadata "+KeyMetadata)
			return nil
		case !errors.Is(err, cryptolens.ErrKeyNotFound):
			return fmt.Errorf("read key from metadata: %w", err)
		}
	}
	for _, find := range []struct {
		metadata string
		find     func(ctx context.Context, product int, id int64) (cryptolens.Key, bool, error)
	}{{hostedKeyID, s.keyByID}, {hostedKeyGlobalID, s.keyByGlobalID}} {
		value := o.metadata[find.metadata]
		if value == "" || !kp.primary {
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
			kp.adopt(k, fmt.Sprintf("subscription metadata %s=%d", find.metadata, id))
			return nil
		}
		log.Warn().Str("metadata", find.metadata).Int64("id", id).Int("product_id", product).
			Msg("no key in the product has the id the hosted Stripe module recorded")
	}

	// The marker ties a key to its owner within the key's product: a bundle's keys all
	// carry their subscription's, each in its own product.
	marker := Marker(o.id)
	page, err := s.crypto.GetKeys(ctx, product, 1, fmt.Sprintf(`notes.contains(%q)`, marker))
	if err != nil {
		return fmt.Errorf("search key by marker: %w", err)
	}
	for _, k := range page.Keys {
		// contains() also matches longer ids (sub_1 in sub_12): the marker must be a
		// whole word of the notes.
		if slices.Contains(strings.Fields(k.Notes), marker) {
			kp.adopt(k, SourceMarker+" "+marker)
			kp.byMarker = true
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

func (kp *keyPlan) adopt(k cryptolens.Key, source string) {
	kp.key, kp.adopted, kp.adoptedFrom = toKey(k), &k, source
}

// learnKey folds what planning found of kp's key into its record: the key as found (an
// adopted key is audited), and the expiry block seen. It changes nothing outside
// keysync's own records.
func (r *run) learnKey(kp *keyPlan) {
	if kp.read {
		// Seen now, or seen before and not lifted yet; a key seen unblocked (or with
		// keysync's own block) clears it.
		kp.rec.ExpiryBlockSeen = kp.expiryBlocked
	}
	if kp.forget {
		kp.rec.LicenseKey, kp.rec.KeyID = nil, nil
	}
	if k := kp.adopted; k != nil {
		key, id := k.Key, k.ID
		kp.rec.LicenseKey, kp.rec.KeyID = &key, &id
		params := map[string]any{"source": kp.adoptedFrom, "expires": k.Expires}
		if !k.Created.IsZero() {
			// The key's age on Cryptolens' clock: a key found by keysync's marker that is
			// hours old is most likely one whose creation keysync failed to record (a
			// crash, a lost commit), and the e-mail outbox mails it as a new key
			// (KeyEmailSource).
			params["created"] = k.Created
			if !r.now.IsZero() {
				params["key_age_seconds"] = int64(max(r.now.Sub(k.Created), 0) / time.Second)
			}
		}
		r.audit(AuditRow{Action: "adopt_key", Outcome: OutcomeApplied, LicenseKey: k.Key, ProductID: kp.desired.ProductID, Params: params})
		r.adoptedByMarker = r.adoptedByMarker || kp.byMarker
	}
}

// applyKey performs kp's actions in order: each is audited, and a change that renames
// the key (SKGL) or creates it is followed at once. It returns the key's name after
// the actions ("" for none) and the actions taken, with any extension a new key needed.
func (r *run) applyKey(ctx context.Context, kp *keyPlan, o owner) (string, []license.Action, error) {
	key := kp.key
	actions := slices.Clone(kp.actions)
	if kp.newExpiryBlock && len(actions) > 0 && !r.s.opts.DryRun {
		// Recorded before any call: once the key is extended it no longer looks
		// expired, so a retry after "extended, then the unblock failed" knows the block
		// is Cryptolens' expiry block only from this record.
		if err := r.save(ctx, nil); err != nil {
			return key.Key, actions, fmt.Errorf("record expiry block: %w", err)
		}
	}
	for i := 0; i < len(actions); i++ {
		a := actions[i]
		// Each action names the key by its string as it is now: an SKGL key gets a new
		// one from a change (see perform).
		renamed, err := r.perform(ctx, kp, key, a, o)
		if renamed != "" {
			key.Key, key.Exists = renamed, true
		}
		if err != nil {
			return key.Key, actions, err
		}
		if a.Kind == license.CreateKey && !kp.desired.Perpetual {
			more, err := r.checkNewKey(ctx, kp.desired, key.Key)
			if err != nil {
				return key.Key, actions, err
			}
			actions = append(actions, more...)
		}
	}
	return key.Key, actions, nil
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

// perform performs one action on kp's key and audits it. It returns the key's new
// string: the new key's for a create, and an SKGL key's new one when a change gave it
// one ("" when the string stays).
func (r *run) perform(ctx context.Context, kp *keyPlan, key license.Key, a license.Action, o owner) (string, error) {
	s := r.s
	d := kp.desired
	product := d.ProductID
	row := AuditRow{Action: string(a.Kind), LicenseKey: key.Key, ProductID: product, Params: map[string]any{}}
	switch a.Kind {
	case license.CreateKey:
		row.Params = map[string]any{"period": a.Days, "expires": a.NewExpires, "features": a.Features, "machines": a.Machines}
		if d.Perpetual {
			// No expiry to reach: the time-limited feature is off.
			row.Params["perpetual"] = true
		} else {
			// The expiry's basis (entitled-through) and, beside it, what is paid.
			row.Params["entitled_through"], row.Params["paid_through"] = d.Through, r.paidThrough
		}
	case license.Extend:
		row.Params = map[string]any{"days": a.Days, "old_expires": a.OldExpires, "new_expires": a.NewExpires,
			"entitled_through": d.Through, "paid_through": r.paidThrough}
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
	if a.Kind == license.Block && !kp.rec.BlockedByKeysync {
		// The intent is recorded before the call: if BlockKey succeeds and its answer is
		// lost, keysync still knows the block is its own and can lift it later.
		kp.rec.BlockedByKeysync = true
		if err := r.save(ctx, nil); err != nil {
			return "", fmt.Errorf("record block intent: %w", err)
		}
	}
	start := time.Now()
	var created, renamed string
	var msg string
	var err error
	switch a.Kind {
	case license.CreateKey:
		p := cryptolens.CreateKeyParams{ProductID: product, Period: a.Days, Features: a.Features, Notes: Marker(o.id), MaxNoOfMachines: a.Machines}
		name, email, cerr := o.customer(ctx)
		if cerr != nil {
			return "", fmt.Errorf("read customer: %w", cerr)
		}
		if email != "" {
			p.AddOrUseExistingCustomer, p.Name, p.Email = true, name, email
		}
		var k cryptolens.CreatedKey
		if k, err = s.crypto.CreateKey(ctx, p); err == nil {
			created = k.Key
			row.LicenseKey = k.Key
			kp.rec.LicenseKey, kp.rec.KeyID = &created, nil
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
			kp.rec.BlockedByKeysync, kp.rec.ExpiryBlockSeen = false, false
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
			kp.rec.BlockedByKeysync = false // the block certainly did not happen
		}
		r.log.Warn().Err(err).Str("action", string(a.Kind)).Str("license_key", cryptolens.KeyFingerprint(key.Key)).Msg("action failed")
		return created, fmt.Errorf("%s: %w", a.Kind, err)
	}
	row.Outcome, row.Message = OutcomeApplied, msg
	r.audit(row)
	r.log.Info().Str("action", string(a.Kind)).Str("license_key", cryptolens.KeyFingerprint(row.LicenseKey)).Interface("params", row.Params).Msg("key changed")
	switch {
	case a.Kind == license.CreateKey:
		// Record the new key at once: a crash before the end of this Sync must not lead
		// the next one to create another (the Notes marker would also find it).
		if err := r.save(ctx, r.audits); err != nil {
			return created, fmt.Errorf("record new key: %w", err)
		}
		r.audits = nil
		if s.opts.KeyCreated != nil {
			s.opts.KeyCreated(ctx)
		}
		return created, nil
	case renamed != "":
		return renamed, r.rename(ctx, kp, key.Key, renamed, a.Kind)
	}
	return "", nil
}

// rename follows an SKGL key to the new string a change gave it: Cryptolens documents
// that ExtendLicense on an SKGL product changes the key string "if necessary" and
// answers the new key in message, and the old string names no key any more. keysync
// records the new string at once (a crash must not leave it looking for the old one),
// audits the change, and names the new key in Stripe's metadata at the end of the Sync.
// The customer's copy of the old string goes stale: SKM15 products avoid this.
func (r *run) rename(ctx context.Context, kp *keyPlan, old, renamed string, by license.ActionKind) error {
	kp.rec.LicenseKey = &renamed
	r.audit(AuditRow{Action: "adopt_key", Outcome: OutcomeApplied, LicenseKey: renamed, ProductID: kp.desired.ProductID,
		Params: map[string]any{"source": "skgl key change", "old_key": old, "new_key": renamed, "changed_by": string(by)}})
	r.log.Warn().Str("license_key", cryptolens.KeyFingerprint(renamed)).Str("old_license_key", cryptolens.KeyFingerprint(old)).Str("action", string(by)).
		Msg("Cryptolens gave the SKGL key a new string; keysync follows it, the customer's copy is stale")
	if err := r.save(ctx, r.audits); err != nil {
		return fmt.Errorf("record the key's new string: %w", err)
	}
	r.audits = nil
	return nil
}

// customerOf returns an owner's customer function for the Stripe customer id: its
// name and email, read when a key is created ("" for none, or a customer Stripe lost).
func (s *Syncer) customerOf(id string) func(ctx context.Context) (string, string, error) {
	return func(ctx context.Context) (string, string, error) {
		if id == "" {
			return "", "", nil
		}
		c, err := s.stripe.GetCustomer(ctx, id)
		switch {
		case errors.Is(err, stripeapi.ErrNotFound):
			return "", "", nil
		case err != nil:
			return "", "", err
		}
		return c.Name, c.Email, nil
	}
}
