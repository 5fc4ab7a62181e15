package syncer

import (
	"context"
	"errors"
	"time"
)

// Store is what Sync keeps in the database: it locks the subscription (or the
// purchase), then reads and writes through the lock, on the lock's connection.
// postgres.Store implements it.
type Store interface {
	// LockSubscription waits until no other Sync of the subscription runs (on any
	// replica) and returns the held lock.
	LockSubscription(ctx context.Context, id string) (Lock, error)
	// LockPurchase waits until no other Sync of the purchase runs (on any replica) and
	// returns the held lock.
	LockPurchase(ctx context.Context, id string) (PurchaseLock, error)
}

// PurchaseLock is a held purchase lock: one SyncPurchase's reads and writes go through
// it, on one database connection.
type PurchaseLock interface {
	// GetPurchase returns the locked purchase's row with its keys, or ErrNotFound when
	// keysync has none yet.
	GetPurchase(ctx context.Context) (PurchaseRow, error)
	// SavePurchase writes the row, its keys and the audit rows in one transaction.
	SavePurchase(ctx context.Context, row PurchaseRow, audits []AuditRow) error
	// InvoiceSession returns the purchase (a Checkout Session) whose post-payment
	// invoice keysync recorded the locked id to be, "" when it recorded none.
	InvoiceSession(ctx context.Context) (string, error)
	// Release frees the lock.
	Release()
}

// Lock is a held subscription lock: one Sync's reads and writes go through it, so that
// a Sync needs one database connection whatever the pool's size.
type Lock interface {
	// GetSubscription returns the locked subscription's row, or ErrNotFound when
	// keysync has none yet.
	GetSubscription(ctx context.Context) (SubscriptionRow, error)
	// SaveSync writes the row and the audit rows in one transaction, so the audit never
	// tells a story the row does not, or the reverse.
	SaveSync(ctx context.Context, row SubscriptionRow, audits []AuditRow) error
	// Release frees the lock.
	Release()
}

// ErrNotFound means the store has no such row (a subscription, an event). It is the
// one not-found sentinel of keysync's store: postgres returns it (as
// postgres.ErrNotFound, the same value) wherever a query finds nothing, so callers test
// for it without knowing the driver.
var ErrNotFound = errors.New("not found")

// SubscriptionRow is keysync's mapping row for a subscription: what it knows of the
// subscription and its key between Syncs.
type SubscriptionRow struct {
	ID         string
	CustomerID string
	Status     string
	// ProductID, LicenseKey and KeyID name the subscription's key (nil: none yet).
	ProductID  *int
	LicenseKey *string
	KeyID      *int64
	// PaidThrough only moves forward.
	PaidThrough    *time.Time
	DesiredExpires *time.Time

	// EntitledThrough is the entitled-through date the last Sync computed, the basis of
	// the key's expiry (this + buffer days): the policy's StoredThrough. It only moves
	// forward.
	EntitledThrough *time.Time
	// ExpiryBlockSeen says keysync saw Cryptolens' expiry block on the key and has not
	// lifted it yet (license.State.ExpiryBlockSeen).
	ExpiryBlockSeen bool

	// BlockedByKeysync says the key's block is keysync's own, which it may lift.
	BlockedByKeysync  bool
	CheckoutSessionID *string
	// LastSyncedAt is when a Sync last brought the key to the policy's state.
	LastSyncedAt *time.Time
	// UnmappedAt is when the subscription was found to map to no plan (nil: it maps).
	UnmappedAt *time.Time
	// LastError is the last permanent failure (nil after a successful Sync).
	LastError *string

	// Bundle are the keys of a bundle's other Cryptolens products (its items map to
	// several; DESIGN §2, bundles): the fields above name the key of one product, the
	// first the subscription had.
	Bundle []KeyRow `db:"-"`
}

// PurchaseRow is keysync's row for a one-time purchase (a Checkout Session in payment
// mode, or an invoice of no subscription) and its keys, one per Cryptolens product.
type PurchaseRow struct {
	ID string
	// CustomerID is the Stripe customer; "" for a guest's Checkout payment, which
	// makes none (customer_creation=if_required).
	CustomerID string
	// CustomerEmail and CustomerName are what the purchase collected (a session's
	// customer_details, an invoice's customer_email and customer_name): a guest's only
	// address, to which the key is e-mailed.
	CustomerEmail, CustomerName string
	// Status is the payment's: paid, processing (an asynchronous payment under way),
	// payment_failed, open, expired; an invoice's draft, void or uncollectible.
	Status string
	// InvoiceID is a session's post-payment invoice, which is part of this purchase.
	InvoiceID *string
	// Refunded and Disputed are what the last Sync saw of the payment.
	Refunded, Disputed bool
	// Created is when Stripe created the session or invoice.
	Created time.Time
	// LastSyncedAt is when a Sync last brought the keys to the policy's state.
	LastSyncedAt *time.Time
	// UnmappedAt is when the purchase was found to map to no plan (nil: it maps).
	UnmappedAt *time.Time
	// LastError is the last permanent failure (nil after a successful Sync).
	LastError *string
	// Keys are the purchase's keys, one per Cryptolens product, in the order of its
	// items.
	Keys []KeyRow `db:"-"`
}

// KeyRow is what keysync records of one key of a purchase or of a subscription's bundle:
// the Cryptolens product it lives in, its name, and whose its block is.
type KeyRow struct {
	ProductID  int
	LicenseKey *string
	KeyID      *int64
	// BlockedByKeysync says the key's block is keysync's own, which it may lift.
	BlockedByKeysync bool
	// ExpiryBlockSeen says keysync saw Cryptolens' expiry block on the key and has not
	// lifted it yet (a subscription's keys only: a perpetual key has no expiry block).
	ExpiryBlockSeen bool
}

// AuditRow is one audit_log entry: one thing a Sync did, or would have done. It is
// about a subscription or a purchase: one of SubscriptionID and PurchaseID is set.
type AuditRow struct {
	SubscriptionID string
	PurchaseID     string
	CustomerID     string
	ProductID      int
	LicenseKey     string
	Action         string
	Params         map[string]any
	Outcome        Outcome
	Cause          CauseKind
	CauseID        string
	Message        string
	Duration       time.Duration
}

// Outcome is what became of an audited action.
type Outcome string

// The outcomes of an action, as audit rows record them.
const (
	// OutcomeApplied means the change was made (for adopt_key and skip_unmapped: recorded).
	OutcomeApplied Outcome = "applied"
	// OutcomeDryRun means the change was decided and not sent, as Options.DryRun asks.
	OutcomeDryRun Outcome = "dry_run"
	// OutcomeFailed means the change was tried and failed; the message says why.
	OutcomeFailed Outcome = "failed"
)
