package syncer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/stripeapi"
)

// One-time purchases (DESIGN §2.1): a Checkout Session in payment mode, or an invoice
// that belongs to no subscription, buys one perpetual key per Cryptolens product. Their
// Sync is a subscription's with a purchase's inputs: the same lock, the same key
// machinery (keys.go), the same audit.

// IsPurchase reports whether id names a one-time purchase: a Checkout Session (cs_) or
// an invoice (in_), rather than a subscription (sub_).
func IsPurchase(id string) bool { return strings.HasPrefix(id, "cs_") || strings.HasPrefix(id, "in_") }

// The statuses of a purchase (PurchaseRow.Status); an invoice's draft, void and
// uncollectible are kept as Stripe names them.
const (
	// PurchasePaid: paid (or free), its keys are due.
	PurchasePaid = "paid"
	// PurchaseProcessing: the Checkout Session completed with a delayed payment method
	// whose payment has not settled yet (checkout.session.async_payment_succeeded or
	// _failed will tell).
	PurchaseProcessing = "processing"
	// PurchasePaymentFailed: that delayed payment failed.
	PurchasePaymentFailed = "payment_failed"
	// PurchaseOpen: the customer has not paid yet (an open session, an open invoice).
	PurchaseOpen = "open"
	// PurchaseExpired: the Checkout Session expired unpaid.
	PurchaseExpired = "expired"
)

// SyncPurchase brings a one-time purchase's keys to the state the policy wants: one
// perpetual key per Cryptolens product its items map to, once it is paid, blocked after
// a full refund or during a dispute as the policy says. id is a Checkout Session in
// payment mode or an invoice of no subscription; an invoice that a Checkout Session made
// (its post-payment invoice) syncs that session. Like Sync it holds the purchase's lock
// on every replica, records a new key at once and every intent before its call, so that
// duplicates, crashes and replicas never create a second key. It returns an error of
// class failure.ErrPermanent when a retry cannot help (not a purchase, a contradictory
// mapping), and another error when it may.
func (s *Syncer) SyncPurchase(ctx context.Context, id string, cause Cause) (Result, error) {
	if !IsPurchase(id) {
		return Result{}, fmt.Errorf("%w: %q names no purchase (a Checkout Session cs_... or an invoice in_...)", ErrPermanent, id)
	}
	res, session, err := s.syncPurchase(ctx, id, cause)
	if session != "" {
		// The invoice is a Checkout Session's receipt: the purchase is the session's.
		s.log.Debug().Str("purchase_id", id).Str("checkout_session", session).Msg("invoice made by a Checkout Session: syncing the session")
		res, _, err = s.syncPurchase(ctx, session, cause)
	}
	return res, err
}

// syncPurchase is SyncPurchase of one id under its lock. It returns the Checkout Session
// to sync instead when id is an invoice that session made (nothing is written then).
func (s *Syncer) syncPurchase(ctx context.Context, id string, cause Cause) (Result, string, error) {
	// 1. Hold the purchase's lock and read keysync's row: one Sync of a purchase at a
	// time, on any replica.
	lock, err := s.store.LockPurchase(ctx, id)
	if err != nil {
		return Result{}, "", err
	}
	defer lock.Release()
	now := s.opts.Now().UTC()
	row, found, session, err := readPurchase(ctx, lock, id)
	if err != nil || session != "" {
		return Result{}, session, err
	}
	pr := &purchaseRun{row: row}
	r := &run{s: s, cause: cause, purchase: id, customer: row.CustomerID,
		log: s.log.With().Str("purchase_id", id).Str("cause", string(cause.Kind)).Str("cause_id", cause.ID).Logger()}
	for i := range row.Keys {
		r.recs = append(r.recs, &row.Keys[i])
	}
	r.save = func(ctx context.Context, audits []AuditRow) error { return lock.SavePurchase(ctx, pr.fold(r), audits) }
	pr.run = r

	// 2. Plan, keeping what was read even when planning failed part way.
	p, err := s.planPurchase(ctx, row, found, &r.recs, now, r.log)
	switch {
	case p.session != "":
		return Result{}, p.session, nil
	case p.guestReceipt:
		r.log.Info().Msg("an invoice of no customer whose Checkout Session Stripe does not name: a guest's post-payment " +
			"invoice, part of its session's purchase; no key of its own")
		return Result{}, "", nil
	}
	r.now = p.now
	pr.learn(p)

	// 3. Apply the plan.
	var res Result
	if err == nil {
		res, err = pr.apply(ctx, p)
	}

	// 4. Record the outcome, as Sync does.
	r.recordOutcome(err, &pr.row.LastError)
	res.Status = pr.row.Status
	if pr.row.Created.IsZero() {
		// Never read from Stripe (the purchase does not exist there): keep no row.
		return res, "", err
	}
	if err == nil {
		synced := r.now
		pr.row.LastSyncedAt = &synced
	}
	if saveErr := r.save(ctx, r.audits); saveErr != nil {
		return res, "", errors.Join(err, saveErr)
	}
	r.recorded(ctx)
	return res, "", err
}

// readPurchase returns keysync's row for the locked purchase and whether one was
// stored. For an invoice keysync has no row for it returns instead the Checkout Session
// whose post-payment invoice keysync recorded it to be: the purchase to sync.
func readPurchase(ctx context.Context, lock PurchaseLock, id string) (row PurchaseRow, found bool, session string, err error) {
	row, err = lock.GetPurchase(ctx)
	switch {
	case errors.Is(err, ErrNotFound) && strings.HasPrefix(id, "in_"):
		if session, err = lock.InvoiceSession(ctx); err != nil || session != "" {
			return PurchaseRow{}, false, session, err
		}
		return PurchaseRow{ID: id}, false, "", nil
	case errors.Is(err, ErrNotFound):
		return PurchaseRow{ID: id}, false, "", nil
	case err != nil:
		return PurchaseRow{}, false, "", err
	}
	return row, true, "", nil
}

// purchaseRun is a purchase's part of a run: its row.
type purchaseRun struct {
	run *run
	row PurchaseRow
}

// fold returns the row with the run's records of keys that exist in it.
func (pr *purchaseRun) fold(r *run) PurchaseRow {
	row := pr.row
	row.Keys = nil
	for _, rec := range r.recs {
		if rec.LicenseKey != nil {
			row.Keys = append(row.Keys, *rec)
		}
	}
	return row
}

// purchasePlan is what a purchase's Sync found and decided before changing anything.
type purchasePlan struct {
	now time.Time
	// read says Stripe's view was read; purchase, status and the rest are it.
	read                bool
	purchase            license.Purchase
	status              string
	invoiceID           string
	created             time.Time
	customerName, email string
	// session is the Checkout Session that made the invoice being synced: the
	// purchase to sync instead. guestReceipt says the invoice is a guest's
	// post-payment invoice whose session Stripe does not name: no purchase of its own.
	session      string
	guestReceipt bool
	// desired is the policy's wish, once decided: one perpetual key per product,
	// nothing for an unmapped purchase.
	desired []license.Desired
	decided bool
	keys    []*keyPlan
}

// planPurchase reads the purchase from Stripe and its keys from Cryptolens and asks the
// policy what to do. It writes nothing anywhere.
func (s *Syncer) planPurchase(ctx context.Context, row PurchaseRow, found bool, recs *[]*KeyRow, now time.Time, log zerolog.Logger) (*purchasePlan, error) {
	p := &purchasePlan{now: now}

	// 1. Stripe's view: the session and its line items, or the invoice and its lines;
	// the payment's refund and disputes when the policy blocks on them.
	var err error
	if strings.HasPrefix(row.ID, "cs_") {
		err = s.readSession(ctx, p, row.ID)
	} else {
		err = s.readInvoice(ctx, p, row.ID, found)
	}
	if err != nil || p.session != "" || p.guestReceipt {
		return p, err
	}
	p.read = true

	// 2. The policy's wish: a perpetual key per product, once paid.
	if p.desired, err = license.DesirePurchase(p.purchase, s.mapping, s.opts.Policy); err != nil {
		return p, fmt.Errorf("%w: plan mapping: %v", ErrPermanent, err)
	}
	p.decided = true

	// 3. Each key as it is, and its actions. An unpaid purchase has no key to look for:
	// none is made before the payment succeeds.
	o := owner{id: row.ID, customer: func(context.Context) (string, string, error) { return p.customerName, p.email, nil }}
	for _, d := range p.desired {
		kp := &keyPlan{desired: d, rec: recordFor(recs, d.ProductID)}
		p.keys = append(p.keys, kp)
		if !d.NeedKey && !d.Block && kp.rec.LicenseKey == nil {
			continue
		}
		if p.now, err = s.planKey(ctx, kp, o, log); err != nil {
			return p, err
		}
	}
	return p, nil
}

// readSession reads a Checkout Session in payment mode into p: its line items (their own
// list call: Stripe does not embed them) and, when it matters, its payment's charges.
func (s *Syncer) readSession(ctx context.Context, p *purchasePlan, id string) error {
	sess, err := s.stripe.GetCheckoutSession(ctx, id)
	if err != nil {
		return fmt.Errorf("read checkout session: %w", err)
	}
	if sess.Mode != stripe.CheckoutSessionModePayment {
		return fmt.Errorf("%w: checkout session %s is in %s mode: no one-time purchase (a subscription is synced by its own id)", ErrPermanent, id, sess.Mode)
	}
	items, err := s.stripe.SessionLineItems(ctx, id)
	if err != nil {
		return fmt.Errorf("read line items: %w", err)
	}
	p.purchase = stripeapi.SessionPurchase(sess, items)
	p.created = time.Unix(sess.Created, 0).UTC()
	if sess.CustomerDetails != nil {
		p.customerName, p.email = sess.CustomerDetails.Name, sess.CustomerDetails.Email
	}
	if sess.Invoice != nil {
		p.invoiceID = sess.Invoice.ID
	}

	// Checkout's status, and of a completed session whose payment is not paid, the
	// charge's: a delayed payment still pending, or failed.
	unpaid := sess.Status == stripe.CheckoutSessionStatusComplete && !p.purchase.Paid
	var charges []*stripe.Charge
	if sess.PaymentIntent != nil && (unpaid || (p.purchase.Paid && s.blocksOnPayment())) {
		if charges, err = s.stripe.PaymentCharges(ctx, sess.PaymentIntent.ID); err != nil {
			return fmt.Errorf("read the payment's charges: %w", err)
		}
	}
	switch {
	case sess.Status == stripe.CheckoutSessionStatusExpired:
		p.status = PurchaseExpired
	case sess.Status == stripe.CheckoutSessionStatusOpen:
		p.status = PurchaseOpen
	case p.purchase.Paid:
		p.status = PurchasePaid
	case len(charges) > 0 && charges[0].Status == stripe.ChargeStatusFailed:
		p.status = PurchasePaymentFailed // the list is newest first
	default:
		p.status = PurchaseProcessing
	}
	if p.purchase.Paid && s.blocksOnPayment() {
		p.purchase.Refunded, p.purchase.Disputed, err = s.paymentState(ctx, charges)
	}
	return err
}

// readInvoice reads an invoice of no subscription into p, with all its lines and its
// charge. An invoice a Checkout Session made sets p.session (or p.guestReceipt)
// instead; that is looked up only for an invoice keysync has no row for (known says it
// has), and after keysync's own record of sessions' invoices (readPurchase).
func (s *Syncer) readInvoice(ctx context.Context, p *purchasePlan, id string, known bool) error {
	inv, err := s.stripe.PurchaseInvoice(ctx, id)
	if err != nil {
		return fmt.Errorf("read invoice: %w", err)
	}
	if inv.Subscription != nil {
		return fmt.Errorf("%w: invoice %s belongs to subscription %s: it is synced with its subscription", ErrPermanent, id, inv.Subscription.ID)
	}
	if !known {
		if p.session, p.guestReceipt, err = s.checkoutReceipt(ctx, inv); err != nil || p.session != "" || p.guestReceipt {
			return err
		}
	}
	p.purchase = stripeapi.InvoicePurchase(inv)
	p.status, p.created = string(inv.Status), time.Unix(inv.Created, 0).UTC()
	p.customerName, p.email = inv.CustomerName, inv.CustomerEmail
	if p.purchase.Paid && s.blocksOnPayment() && inv.Charge != nil && inv.Charge.ID != "" {
		ch := inv.Charge
		if ch.Object != "charge" { // not expanded
			if ch, err = s.stripe.GetCharge(ctx, ch.ID); err != nil {
				return fmt.Errorf("read charge: %w", err)
			}
		}
		p.purchase.Refunded, p.purchase.Disputed, err = s.paymentState(ctx, []*stripe.Charge{ch})
	}
	return err
}

// checkoutReceipt finds the Checkout Session whose post-payment invoice inv is: the
// session of the invoice's PaymentIntent, else the customer's session that names the
// invoice. An invoice with no customer and no session found is a guest's receipt
// (guest true): Stripe's invoices API makes no invoice without a customer, so only
// Checkout, for a guest, can have made it, and its session's Sync makes the key. Never
// a key of its own: a second key for one payment is worse than a receipt left alone.
func (s *Syncer) checkoutReceipt(ctx context.Context, inv *stripe.Invoice) (session string, guest bool, err error) {
	if inv.PaymentIntent != nil && inv.PaymentIntent.ID != "" {
		sess, err := s.stripe.PaymentSession(ctx, inv.PaymentIntent.ID)
		if err != nil {
			return "", false, fmt.Errorf("find the invoice's checkout session: %w", err)
		}
		if sess != nil && sess.Mode == stripe.CheckoutSessionModePayment && (sess.Invoice == nil || sess.Invoice.ID == inv.ID) {
			return sess.ID, false, nil
		}
	}
	if inv.Customer == nil || inv.Customer.ID == "" {
		return "", true, nil
	}
	if session, err = s.stripe.InvoiceSession(ctx, inv.Customer.ID, inv.ID); err != nil {
		return "", false, fmt.Errorf("find the invoice's checkout session: %w", err)
	}
	return session, false, nil
}

// blocksOnPayment says the policy blocks keys on refunds or disputes: only then are a
// purchase's charges read.
func (s *Syncer) blocksOnPayment() bool {
	return s.opts.Policy.BlockOnRefund || s.opts.Policy.BlockOnDispute
}

// paymentState reads a purchase's payment from its charges: refunded when a charge that
// succeeded was refunded in full, disputed when a dispute on one is open or was lost (a
// won dispute no longer counts, so keysync's block lifts).
func (s *Syncer) paymentState(ctx context.Context, charges []*stripe.Charge) (refunded, disputed bool, err error) {
	for _, ch := range charges {
		if ch.Status == stripe.ChargeStatusSucceeded && ch.Refunded {
			refunded = true
		}
		if !ch.Disputed || !s.opts.Policy.BlockOnDispute {
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
	return refunded, disputed, nil
}

// learn folds what the plan read into the row and the key records.
func (pr *purchaseRun) learn(p *purchasePlan) {
	if !p.read {
		return
	}
	r := pr.run
	pr.row.CustomerID, pr.row.Status, pr.row.Created = p.purchase.CustomerID, p.status, p.created
	pr.row.Refunded, pr.row.Disputed = p.purchase.Refunded, p.purchase.Disputed
	if p.email != "" {
		pr.row.CustomerEmail, pr.row.CustomerName = p.email, p.customerName
	}
	if p.invoiceID != "" {
		inv := p.invoiceID
		pr.row.InvoiceID = &inv
	}
	r.customer = pr.row.CustomerID
	if !p.decided || len(p.desired) == 0 {
		return // an unmapped purchase is recorded by apply, once
	}
	pr.row.UnmappedAt = nil
	for _, kp := range p.keys {
		r.learnKey(kp)
	}
}

// apply records an unmapped purchase (once), or performs each key's actions.
func (pr *purchaseRun) apply(ctx context.Context, p *purchasePlan) (Result, error) {
	r := pr.run
	if len(p.desired) == 0 {
		if pr.row.UnmappedAt == nil {
			at := r.now
			pr.row.UnmappedAt = &at
			prices := make([]string, 0, len(p.purchase.Items))
			for _, it := range p.purchase.Items {
				prices = append(prices, it.PriceID)
			}
			r.audit(AuditRow{Action: string(license.SkipUnmapped), Outcome: OutcomeApplied,
				Params: map[string]any{"prices": prices}, Message: "no plan maps these prices: no license"})
			r.log.Info().Strs("prices", prices).Msg("purchase maps to no plan: no key")
		}
		return Result{Unmapped: true}, nil
	}
	return r.applyKeys(ctx, p.keys, owner{id: pr.row.ID,
		customer: func(context.Context) (string, string, error) { return p.customerName, p.email, nil }})
}

// PurchasePreview is what a SyncPurchase would see and do now.
type PurchasePreview struct {
	// Row is keysync's row as stored (Found false: none yet).
	Row   PurchaseRow
	Found bool
	// Status is the purchase's payment status as Stripe has it now; Session is the
	// Checkout Session that made the invoice previewed (its purchase), "" otherwise.
	Status  string
	Session string
	// CustomerID, Email and Created are Stripe's: the purchase's customer ("" for a
	// guest's Checkout payment), the e-mail it was paid with, and when it was made.
	CustomerID, Email string
	Created           time.Time
	// PaymentChecked says the payment's charges were read, as a Sync reads them only
	// for a paid purchase when the policy blocks on refunds or disputes: only then do
	// Refunded (in full) and Disputed (open or lost) say anything.
	PaymentChecked     bool
	Refunded, Disputed bool
	// Keys are the keys the policy wants, one per product: none for an unmapped
	// purchase.
	Keys []KeyPreview
}

// PreviewPurchase reads the purchase and its keys as SyncPurchase does and returns what
// it would do now, without doing it or writing anything. It returns SyncPurchase's
// errors.
func (s *Syncer) PreviewPurchase(ctx context.Context, id string) (PurchasePreview, error) {
	if !IsPurchase(id) {
		return PurchasePreview{}, fmt.Errorf("%w: %q names no purchase (a Checkout Session cs_... or an invoice in_...)", ErrPermanent, id)
	}
	lock, err := s.store.LockPurchase(ctx, id)
	if err != nil {
		return PurchasePreview{}, err
	}
	defer lock.Release()
	row, found, session, err := readPurchase(ctx, lock, id)
	if err != nil || session != "" {
		return PurchasePreview{Row: row, Session: session}, err
	}
	recs := make([]*KeyRow, 0, len(row.Keys))
	for i := range row.Keys {
		recs = append(recs, &row.Keys[i])
	}
	p, err := s.planPurchase(ctx, row, found, &recs, s.opts.Now().UTC(), s.log.With().Str("purchase_id", id).Logger())
	out := PurchasePreview{Row: row, Found: found, Status: p.status, Session: p.session, CustomerID: p.purchase.CustomerID, Email: p.email,
		Created: p.created, PaymentChecked: p.read && p.purchase.Paid && s.blocksOnPayment(), Refunded: p.purchase.Refunded,
		Disputed: p.purchase.Disputed, Keys: keyPreviews(p.keys)}
	return out, err
}
