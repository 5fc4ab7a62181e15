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

// CreatedKey is a key keysync created, as its create_key audit row records it.
type CreatedKey struct {
	AuditID    int64
	ProductID  int
	Key        string
	CustomerID string
	// Owner is what the key was sold with (ID "" when the row names none).
	Owner Owner
	// Cause and CauseID are the create_key row's: the e-mail's audit row carries them.
	Cause   syncer.CauseKind
	CauseID string
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
	// KeysToEmail returns, oldest first and at most limit, the applied create_key audit
	// rows of the last window whose key has no e-mail row, or one still pending.
	KeysToEmail(ctx context.Context, window time.Duration, limit int) ([]int64, error)
	// CreatedKey returns a create_key audit row; syncer.ErrNotFound (wrapped) when id
	// is no applied create_key row.
	CreatedKey(ctx context.Context, id int64) (CreatedKey, error)
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

// Outbox returns the create_key audit rows whose key is still to be mailed: the jobs
// that mail them are queued from it, after each new key and periodically, so a crash
// between a key's creation and its job's insertion never loses the e-mail.
func (e *Emailer) Outbox(ctx context.Context) ([]int64, error) {
	return e.store.KeysToEmail(ctx, e.opts.Window, outboxBatch)
}

// SendKey e-mails the key created in audit row id to its customer, once: whoever
// claims the key's e-mail row sends it, and a retry, another replica or a replay finds
// it claimed. A failure that provably sent nothing gives the claim back and returns an
// error matching failure.ErrRetryable (the job retries). A message whose outcome is
// unknown (the connection broke after the whole message went out) stays claimed and
// is not sent again: at most once, rather than twice. Other failures are recorded and
// audited, and return nil.
func (e *Emailer) SendKey(ctx context.Context, id int64) error {
	k, err := e.store.CreatedKey(ctx, id)
	if errors.Is(err, syncer.ErrNotFound) {
		e.log.Warn().Int64("audit_id", id).Msg("no applied create_key audit row of this id: nothing to e-mail")
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

	// 1. The customer's address, from Stripe.
	c, err := e.customers.GetCustomer(ctx, k.CustomerID)
	switch {
	case errors.Is(err, stripeapi.ErrNotFound) || (err == nil && c.Deleted):
		return fail("the Stripe customer does not exist")
	case err != nil:
		return retry(fmt.Errorf("read customer: %w", err))
	case strings.TrimSpace(c.Email) == "":
		return fail("the Stripe customer has no e-mail address")
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
	msg, err := e.opts.Templates.render(EmailData{Name: c.Name, Licenses: lics, PortalURL: e.opts.PortalURL})
	if err != nil {
		return fail("template: " + err.Error())
	}
	sum := sha256.Sum256([]byte(strconv.Itoa(k.ProductID) + ":" + k.Key))
	out := KeyEmail{Recipient: c.Email, MessageID: "keysync.key." + hex.EncodeToString(sum[:12]) + "@" + e.opts.Domain}
	err = e.sender.Send(ctx, Mail{To: c.Email, ToName: c.Name, Subject: msg.Subject, Text: msg.Text, HTML: msg.HTML, MessageID: out.MessageID})
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
// the address to that customer: the lost-keys form. An address no customer has, or
// whose customers have no key, gets nothing, and the caller learns nothing of it.
// It returns an error matching failure.ErrRetryable when a retry may succeed; sends
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

	// 2. Each customer's keys, one message to each.
	sent := 0
	for _, c := range custs {
		n, err := e.resendTo(ctx, c)
		if err != nil {
			return err
		}
		sent += n
	}
	e.log.Info().Int("customers", len(custs)).Int("keys", sent).Msg("lost-keys request handled")
	return nil
}

// resendTo mails customer c its keys and returns how many it mailed.
func (e *Emailer) resendTo(ctx context.Context, c *stripe.Customer) (int, error) {
	log := e.log.With().Str("customer_id", c.ID).Logger()
	refs, err := e.licenses.Store.CustomerKeys(ctx, c.ID)
	if err != nil {
		return 0, fmt.Errorf("read keys: %w", err)
	}
	all, err := e.licenses.read(ctx, refs)
	if err != nil {
		return 0, err
	}
	lics := slices.DeleteFunc(all, func(l License) bool { return l.Blocked })
	if len(lics) == 0 {
		return 0, nil
	}
	msg, err := e.opts.Templates.render(EmailData{Name: c.Name, Licenses: lics, PortalURL: e.opts.PortalURL, Resend: true})
	if err != nil {
		return 0, err
	}
	began := time.Now()
	err = e.sender.Send(ctx, Mail{To: c.Email, ToName: c.Name, Subject: msg.Subject, Text: msg.Text, HTML: msg.HTML})
	if err != nil && !failure.IsPermanent(err) {
		log.Warn().Str("error", scrub(err, keysOf(lics)...)).Msg("lost-keys e-mail not sent; trying again later")
		return 0, err
	}
	rows := make([]syncer.AuditRow, 0, len(lics))
	for _, l := range lics {
		row := syncer.AuditRow{CustomerID: c.ID, ProductID: l.ProductID, LicenseKey: l.Key, Action: "email_key",
			Outcome: syncer.OutcomeApplied, Cause: syncer.CauseCustomer, CauseID: "resend",
			Params: map[string]any{"to": c.Email, "reason": "lost-keys form"}, Duration: time.Since(began)}
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
