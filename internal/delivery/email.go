package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
)

// Customers reads Stripe customers (stripeapi.Client).
type Customers interface {
	// GetCustomer returns a customer; an error matching stripeapi.ErrNotFound when
	// there is none.
	GetCustomer(ctx context.Context, id string) (*stripe.Customer, error)
	// CustomersByEmail returns the customers whose e-mail address is exactly email.
	CustomersByEmail(ctx context.Context, email string) ([]*stripe.Customer, error)
}

// CreatedKey is a key keysync created, as its audit row records it: its create_key
// row, or, when that was lost with a commit that never happened, the adopt_key row of
// the Sync that found the key again by keysync's Notes marker.
type CreatedKey struct {
	AuditID    int64
	ProductID  int
	Key        string
	CustomerID string
	// Owner is what the key was sold with (ID "" when the row names none).
	Owner Owner
	// Cause and CauseID are the audit row's: the e-mail's audit row carries them.
	Cause   syncer.CauseKind
	CauseID string
	// PurchaseEmail and PurchaseName are what the key's purchase collected (Checkout's
	// customer_details): the address of a guest, who has no Stripe customer.
	PurchaseEmail, PurchaseName string
}

// GuestPurchase is a purchase made without a Stripe customer (a guest's Checkout
// payment, customer_creation=if_required), with the address and name it collected.
type GuestPurchase struct {
	Purchase    string
	Email, Name string
}

// Key e-mail states, as key_emails.status records them.
const (
	EmailPending = "pending" // to send (again): nothing was delivered
	EmailSending = "sending" // claimed: being sent, or the outcome is unknown
	EmailSent    = "sent"
	EmailFailed  = "failed" // refused for good: not sent again
)

// KeyEmail is the outcome of one attempt to mail a key.
type KeyEmail struct {
	// Status is EmailPending (a retry may send it), EmailSent, EmailFailed, or
	// EmailSending (the outcome is unknown: it stays claimed, never sent again).
	Status    string
	Recipient string
	MessageID string
	Error     string
}

// EmailStore records the e-mails of new keys (postgres.Store). The create_key audit
// rows are the outbox: a key with no e-mail row is still to be mailed.
type EmailStore interface {
	// KeysToEmail returns, oldest first and at most limit, the audit rows of the keys
	// created in the last window (applied create_key rows, and the adopt_key rows that
	// stand for lost ones) whose key has no e-mail row, or one still pending.
	KeysToEmail(ctx context.Context, window time.Duration, limit int) ([]int64, error)
	// CreatedKey returns such an audit row; syncer.ErrNotFound (wrapped) when id is
	// none.
	CreatedKey(ctx context.Context, id int64) (CreatedKey, error)
	// GuestPurchases returns the purchases made without a Stripe customer whose
	// collected address is address, in any case, newest first.
	GuestPurchases(ctx context.Context, address string) ([]GuestPurchase, error)
	// ClaimKeyEmail records the key's e-mail unless it is recorded, and claims it if it
	// is pending: true when the caller is to send it now, false when it is being sent,
	// was sent, or failed for good. One caller at a time wins, on any replica.
	ClaimKeyEmail(ctx context.Context, k CreatedKey) (bool, error)
	// FinishKeyEmail records a claimed e-mail's outcome and, if audit is not nil, its
	// audit row, in one transaction.
	FinishKeyEmail(ctx context.Context, k CreatedKey, e KeyEmail, audit *syncer.AuditRow) error
	// SaveAudit writes audit rows.
	SaveAudit(ctx context.Context, rows []syncer.AuditRow) error
}

// EmailOptions configure an Emailer.
type EmailOptions struct {
	// Templates render the messages (default: DefaultEmailTemplates).
	Templates *EmailTemplates
	// PortalURL is the customer portal's address, in the messages.
	PortalURL string
	// Window bounds the outbox: keys created longer ago are not mailed by the outbox
	// (default 24 hours), so turning e-mail on does not mail every key ever made.
	Window time.Duration
	// Domain is the right-hand side of Message-IDs (the sender's domain).
	Domain string
}

// Emailer e-mails keys to customers: each new key once, and a customer's keys on
// request (the lost-keys form).
type Emailer struct {
	store     EmailStore
	customers Customers
	licenses  Licenses
	sender    Sender
	opts      EmailOptions
	log       zerolog.Logger
}

// NewEmailer returns an Emailer that records through store, reads customers and keys
// through customers and licenses, and sends through sender.
func NewEmailer(store EmailStore, customers Customers, licenses Licenses, sender Sender, opts EmailOptions, log zerolog.Logger) *Emailer {
	if opts.Templates == nil {
		opts.Templates = DefaultEmailTemplates()
	}
	if opts.Window <= 0 {
		opts.Window = 24 * time.Hour
	}
	if opts.Domain == "" {
		opts.Domain = "keysync.invalid"
	}
	return &Emailer{store: store, customers: customers, licenses: licenses, sender: sender, opts: opts, log: log}
}

// outboxBatch bounds the keys one outbox scan queues.
const outboxBatch = 500

// Outbox returns the audit rows of the new keys still to be mailed (create_key rows,
// and adopt_key rows that stand for lost ones): the jobs that mail them are queued from
// it, after each new key and periodically, so a crash between a key's creation and its
// job's insertion never loses the e-mail, nor does one between the key's creation and
// its record.
func (e *Emailer) Outbox(ctx context.Context) ([]int64, error) {
	return e.store.KeysToEmail(ctx, e.opts.Window, outboxBatch)
}

// SendKey e-mails the key created in audit row id to its customer (the Stripe
// customer's address, or a guest's, which the purchase collected), once: whoever
// claims the key's e-mail row sends it, and a retry, another replica or a replay finds
// it claimed. A failure that provably sent nothing gives the claim back and returns an
// error matching failure.ErrRetryable (the job retries). A message whose outcome is
// unknown (the connection broke after the whole message went out) stays claimed and
// is not sent again: at most once, rather than twice. Other failures are recorded and
// audited, and return nil.
func (e *Emailer) SendKey(ctx context.Context, id int64) error {
	k, err := e.store.CreatedKey(ctx, id)
	if errors.Is(err, syncer.ErrNotFound) {
		e.log.Warn().Int64("audit_id", id).Msg("no new key's audit row of this id: nothing to e-mail")
		return nil
	}
	if err != nil {
		return err
	}
	log := e.log.With().Int64("audit_id", id).Str("customer_id", k.CustomerID).Int("product_id", k.ProductID).Logger()
	claimed, err := e.store.ClaimKeyEmail(ctx, k)
	if err != nil || !claimed {
		return err
	}

	began := time.Now()
	out, sendErr := e.sendKey(ctx, k)
	audit := &syncer.AuditRow{SubscriptionID: ownerID(k.Owner, OwnerSubscription), PurchaseID: ownerID(k.Owner, OwnerPurchase),
		CustomerID: k.CustomerID, ProductID: k.ProductID,
		LicenseKey: k.Key, Action: "email_key", Outcome: syncer.OutcomeApplied, Cause: k.Cause, CauseID: k.CauseID,
		Params: map[string]any{"to": out.Recipient, "message_id": out.MessageID, "reason": "new key"}, Duration: time.Since(began)}
	switch out.Status {
	case EmailPending:
		audit = nil // tried again: the audit records what became of it
		log.Warn().Str("error", scrub(sendErr, k.Key)).Msg("the new key's e-mail was not sent; trying again later")
	case EmailSent:
		log.Info().Msg("new key e-mailed to the customer")
	default:
		audit.Outcome, audit.Message = syncer.OutcomeFailed, out.Error
		log.Warn().Str("status", out.Status).Str("reason", strings.ReplaceAll(out.Error, k.Key, "[redacted]")).Msg("the new key's e-mail failed; it is not sent again")
	}
	if err := e.store.FinishKeyEmail(ctx, k, out, audit); err != nil {
		return errors.Join(sendErr, err)
	}
	if out.Status == EmailPending {
		return sendErr
	}
	return nil
}

// sendKey renders and sends the e-mail of k. Its outcome is pending, with the error,
// when a retry may succeed.
func (e *Emailer) sendKey(ctx context.Context, k CreatedKey) (KeyEmail, error) {
	retry := func(err error) (KeyEmail, error) { return KeyEmail{Status: EmailPending, Error: err.Error()}, err }
	fail := func(why string) (KeyEmail, error) { return KeyEmail{Status: EmailFailed, Error: why}, nil }

	// 1. The customer's address: the Stripe customer's, else (a guest has none) the
	// one the purchase collected.
	to, name, why, err := e.recipient(ctx, k)
	switch {
	case err != nil:
		return retry(err)
	case to == "":
		return fail(why)
	}

	// 2. The key as it is now, with its product's name.
	ref := KeyRef{ProductID: k.ProductID, Key: k.Key, Perpetual: k.Owner.Kind == OwnerPurchase}
	if k.Owner.ID != "" {
		refs, err := e.licenses.Store.OwnerKeys(ctx, k.Owner)
		if err != nil && !errors.Is(err, ErrNotSupported) {
			return retry(fmt.Errorf("read keys: %w", err))
		}
		if i := slices.IndexFunc(refs, func(r KeyRef) bool { return r.ProductID == k.ProductID && r.Key == k.Key }); i >= 0 {
			ref = refs[i]
		}
	}
	lics, err := e.licenses.read(ctx, []KeyRef{ref})
	switch {
	case err != nil:
		return retry(err)
	case len(lics) == 0:
		return fail("the key no longer exists in Cryptolens")
	}

	// 3. The message, sent with a Message-ID made from the key: should it ever go out
	// twice, mail clients can fold the copies together.
	msg, err := e.opts.Templates.render(EmailData{Name: name, Licenses: lics, PortalURL: e.opts.PortalURL})
	if err != nil {
		return fail("template: " + err.Error())
	}
	sum := sha256.Sum256([]byte(strconv.Itoa(k.ProductID) + ":" + k.Key))
	out := KeyEmail{Recipient: to, MessageID: "keysync.key." + hex.EncodeToString(sum[:12]) + "@" + e.opts.Domain}
	err = e.sender.Send(ctx, Mail{To: to, ToName: name, Subject: msg.Subject, Text: msg.Text, HTML: msg.HTML, MessageID: out.MessageID})
	switch {
	case err == nil:
		out.Status = EmailSent
	case errors.Is(err, ErrOutcomeUnknown):
		out.Status, out.Error = EmailSending, err.Error()
	case failure.IsPermanent(err):
		out.Status, out.Error = EmailFailed, err.Error()
	default:
		out.Status, out.Error = EmailPending, err.Error()
		return out, err
	}
	return out, nil
}

// recipient returns the address and name k's e-mail goes to: the Stripe customer's,
// else the one k's purchase collected (a guest's Checkout makes no customer). With no
// address it returns "" and why; an error when Stripe did not answer.
func (e *Emailer) recipient(ctx context.Context, k CreatedKey) (to, name, why string, err error) {
	guest := strings.TrimSpace(k.PurchaseEmail)
	if k.CustomerID == "" {
		if guest == "" {
			return "", "", "the purchase has no Stripe customer and collected no e-mail address", nil
		}
		return guest, k.PurchaseName, "", nil
	}
	c, err := e.customers.GetCustomer(ctx, k.CustomerID)
	switch {
	case err != nil && !errors.Is(err, stripeapi.ErrNotFound):
		return "", "", "", fmt.Errorf("read customer: %w", err)
	case err == nil && !c.Deleted && strings.TrimSpace(c.Email) != "":
		return c.Email, c.Name, "", nil
	case guest != "":
		return guest, k.PurchaseName, "", nil // the customer lost its address; the purchase has one
	case err != nil || c.Deleted:
		return "", "", "the Stripe customer does not exist", nil
	}
	return "", "", "the Stripe customer has no e-mail address", nil
}

func keysOf(lics []License) []string {
	out := make([]string, len(lics))
	for i, l := range lics {
		out[i] = l.Key
	}
	return out
}

// ownerID is o's id when o is of kind, else "": an audit row names a subscription or a
// purchase.
func ownerID(o Owner, kind OwnerKind) string {
	if o.Kind == kind {
		return o.ID
	}
	return ""
}

// Resend e-mails the current keys (those not blocked) of every Stripe customer with
// the address to that customer, and those of the purchases a guest (no Stripe customer)
// made with the address to that address: the lost-keys form. An address no customer
// or guest has, or whose keys are none, gets nothing, and the caller learns nothing of
// it. It returns an error matching failure.ErrRetryable when a retry may succeed; sends
// that failed otherwise are audited.
func (e *Emailer) Resend(ctx context.Context, address string) error {
	// 1. The customers: Stripe's e-mail filter is case-sensitive, so the address as
	// typed and in lower case.
	var custs []*stripe.Customer
	for _, a := range slices.Compact([]string{address, strings.ToLower(address)}) {
		cs, err := e.customers.CustomersByEmail(ctx, a)
		if err != nil {
			return fmt.Errorf("find customers: %w", err)
		}
		for _, c := range cs {
			if !slices.ContainsFunc(custs, func(o *stripe.Customer) bool { return o.ID == c.ID }) {
				custs = append(custs, c)
			}
		}
	}

	// 2. Each customer's keys, to the customer.
	var to []keyRecipient
	for _, c := range custs {
		refs, err := e.licenses.Store.CustomerKeys(ctx, c.ID)
		if err != nil {
			return fmt.Errorf("read keys: %w", err)
		}
		to = append(to, keyRecipient{address: c.Email, name: c.Name, customer: c.ID, refs: refs})
	}

	// 3. A guest's purchases' keys: a guest's Checkout made no customer, and the
	// purchase keeps the address it collected. They go with a customer's keys to the
	// same address, else in a message of their own, to the address and name the
	// newest purchase collected.
	guests, err := e.store.GuestPurchases(ctx, address)
	if err != nil {
		return fmt.Errorf("find guest purchases: %w", err)
	}
	if len(guests) > 0 {
		var refs []KeyRef
		for _, g := range guests {
			rs, err := e.licenses.Store.OwnerKeys(ctx, Owner{Kind: OwnerPurchase, ID: g.Purchase})
			if err != nil {
				return fmt.Errorf("read keys: %w", err)
			}
			refs = append(refs, rs...)
		}
		if i := slices.IndexFunc(to, func(r keyRecipient) bool { return strings.EqualFold(r.address, guests[0].Email) }); i >= 0 {
			to[i].refs = append(to[i].refs, refs...)
		} else {
			to = append(to, keyRecipient{address: guests[0].Email, name: guests[0].Name, refs: refs})
		}
	}

	// 4. One message to each.
	sent := 0
	for _, r := range to {
		n, err := e.resendTo(ctx, r)
		if err != nil {
			return err
		}
		sent += n
	}
	e.log.Info().Int("customers", len(custs)).Int("guest_purchases", len(guests)).Int("keys", sent).Msg("lost-keys request handled")
	return nil
}

// keyRecipient is one message of the lost-keys form: the keys refs to address.
type keyRecipient struct {
	address, name string
	// customer is the Stripe customer ("" for a guest).
	customer string
	refs     []KeyRef
}

// resendTo mails r its keys that work and returns how many it mailed.
func (e *Emailer) resendTo(ctx context.Context, r keyRecipient) (int, error) {
	log := e.log.With().Str("customer_id", r.customer).Logger()
	all, err := e.licenses.read(ctx, r.refs)
	if err != nil {
		return 0, err
	}
	lics := slices.DeleteFunc(all, func(l License) bool { return l.Blocked })
	if len(lics) == 0 {
		return 0, nil
	}
	msg, err := e.opts.Templates.render(EmailData{Name: r.name, Licenses: lics, PortalURL: e.opts.PortalURL, Resend: true})
	if err != nil {
		return 0, err
	}
	began := time.Now()
	err = e.sender.Send(ctx, Mail{To: r.address, ToName: r.name, Subject: msg.Subject, Text: msg.Text, HTML: msg.HTML})
	if err != nil && !failure.IsPermanent(err) {
		log.Warn().Str("error", scrub(err, keysOf(lics)...)).Msg("lost-keys e-mail not sent; trying again later")
		return 0, err
	}
	rows := make([]syncer.AuditRow, 0, len(lics))
	for _, l := range lics {
		o := ownerOf(r.refs, l)
		row := syncer.AuditRow{SubscriptionID: ownerID(o, OwnerSubscription), PurchaseID: ownerID(o, OwnerPurchase), CustomerID: r.customer,
			ProductID: l.ProductID, LicenseKey: l.Key, Action: "email_key", Outcome: syncer.OutcomeApplied, Cause: syncer.CauseCustomer,
			CauseID: "resend", Params: map[string]any{"to": r.address, "reason": "lost-keys form"}, Duration: time.Since(began)}
		if err != nil {
			row.Outcome, row.Message = syncer.OutcomeFailed, err.Error()
		}
		rows = append(rows, row)
	}
	if serr := e.store.SaveAudit(ctx, rows); serr != nil {
		return 0, serr
	}
	if err != nil {
		log.Warn().Str("error", scrub(err, keysOf(lics)...)).Msg("lost-keys e-mail failed")
		return 0, nil
	}
	log.Info().Int("keys", len(lics)).Msg("lost-keys e-mail sent")
	return len(lics), nil
}

// ownerOf returns the owner of license l among refs (none: the zero Owner).
func ownerOf(refs []KeyRef, l License) Owner {
	for _, r := range refs {
		if r.ProductID == l.ProductID && r.Key == l.Key {
			return r.Owner
		}
	}
	return Owner{}
}
