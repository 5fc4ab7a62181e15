// Package delivery gets license keys to the customers who paid for them: the license
// page that Stripe Checkout's success_url points at (HTML and JSON), the e-mail of each
// new key, and the lost-keys form that mails a customer's keys again.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/syncer"
)

// OwnerKind says what a key was sold with.
type OwnerKind string

// The kinds of owner.
const (
	// OwnerSubscription is a Stripe subscription; its keys follow its payments.
	OwnerSubscription OwnerKind = "subscription"
	// OwnerPurchase is a one-time purchase (a Checkout Session in payment mode, or an
	// invoice without a subscription); its keys are perpetual.
	OwnerPurchase OwnerKind = "purchase"
)

// Owner names what a key belongs to: a subscription or a purchase, by its Stripe id.
type Owner struct {
	Kind OwnerKind
	ID   string
}

// ErrNotSupported is what an adapter returns for an owner kind it cannot serve yet.
var ErrNotSupported = failure.NewPermanent("not supported yet")

// Checkout reads Checkout Sessions (stripeapi.Client).
type Checkout interface {
	// GetCheckoutSession returns the session; an error matching stripeapi.ErrNotFound
	// when the account has none of that id.
	GetCheckoutSession(ctx context.Context, id string) (*stripe.CheckoutSession, error)
}

// Syncer runs the Sync of what a Checkout sold, at once, under the usual lock: the
// customer does not wait for the webhook.
type Syncer interface {
	SyncSubscription(ctx context.Context, id string, cause syncer.Cause) (Synced, error)
	SyncPurchase(ctx context.Context, id string, cause syncer.Cause) (Synced, error)
}

// Synced is what the license page needs to know of a Sync.
type Synced struct {
	// Unmapped is true when nothing sold maps to a plan: there is no key to show.
	Unmapped bool
}

// KeyRef is a key keysync recorded for an owner.
type KeyRef struct {
	Owner     Owner
	ProductID int
	Key       string
	// ProductName is what the customer bought, for the page and the e-mail ("" when
	// unknown: the page names the Cryptolens product).
	ProductName string
	// Perpetual marks a key sold once (a purchase): its expiry means nothing.
	Perpetual bool
}

// KeyStore reads the keys keysync recorded.
type KeyStore interface {
	// OwnerKeys returns the keys of a subscription or purchase (none yet: empty).
	OwnerKeys(ctx context.Context, o Owner) ([]KeyRef, error)
	// CustomerKeys returns the keys of every subscription and purchase of a Stripe
	// customer.
	CustomerKeys(ctx context.Context, customer string) ([]KeyRef, error)
}

// KeyReader reads a key's current state from Cryptolens (cryptolens.Client).
type KeyReader interface {
	GetKey(ctx context.Context, productID int, key string) (cryptolens.Key, error)
}

// License is a key as the customer sees it, on the page, in its JSON and in e-mails.
type License struct {
	Key       string `json:"key"`
	ProductID int    `json:"product_id"`
	// Product is the product's name ("Product <id>" when no name is known).
	Product string `json:"product"`
	// Expires is when the key stops working; nil for a perpetual key.
	Expires   *time.Time `json:"expires"`
	Perpetual bool       `json:"perpetual"`
	// Machines is how many machines may use the key; 0: no limit.
	Machines int `json:"machines"`
	// Blocked is true while the key does not work (a canceled subscription, a dispute).
	Blocked bool `json:"blocked"`
}

// ExpiresOn is the expiry as a date for people ("" for a perpetual key).
func (l License) ExpiresOn() string {
	if l.Expires == nil {
		return ""
	}
	return l.Expires.UTC().Format("2 January 2006")
}

// Licenses turns recorded keys into what customers see, reading each key's expiry,
// machine limit and block from Cryptolens.
type Licenses struct {
	Store      KeyStore
	Cryptolens KeyReader
	// TimeLimitedFeature is CRYPTOLENS_TIME_LIMITED_FEATURE: a key without it on never
	// expires in Cryptolens, so it is shown as perpetual (0: only purchases are).
	TimeLimitedFeature int
}

// Of returns the licenses of an owner, in the order the store lists them.
func (l Licenses) Of(ctx context.Context, o Owner) ([]License, error) {
	refs, err := l.Store.OwnerKeys(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	return l.read(ctx, refs)
}

// read reads each key from Cryptolens. A key Cryptolens no longer has is left out.
func (l Licenses) read(ctx context.Context, refs []KeyRef) ([]License, error) {
	out := make([]License, 0, len(refs))
	for _, ref := range refs {
		k, err := l.Cryptolens.GetKey(ctx, ref.ProductID, ref.Key)
		if errors.Is(err, cryptolens.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read key: %w", err)
		}
		out = append(out, l.license(ref, k))
	}
	return out, nil
}

func (l Licenses) license(ref KeyRef, k cryptolens.Key) License {
	lic := License{Key: k.Key, ProductID: ref.ProductID, Product: ref.ProductName, Machines: k.MaxNoOfMachines, Blocked: k.Block,
		Perpetual: ref.Perpetual}
	if lic.Product == "" {
		lic.Product = fmt.Sprintf("Product %d", ref.ProductID)
	}
	if f := l.TimeLimitedFeature; f > 0 && !k.Features[f-1] {
		lic.Perpetual = true
	}
	if !lic.Perpetual && !k.Expires.IsZero() {
		exp := k.Expires.UTC()
		lic.Expires = &exp
	}
	return lic
}
