package stripesim

import (
	"errors"
	"fmt"
)

// Checkout Session modes and statuses.
const (
	ModeSubscription = "subscription"
	ModePayment      = "payment"

	SessionOpen     = "open"
	SessionComplete = "complete"
	SessionExpired  = "expired"
)

// PaymentParams describe a Checkout Session in payment mode: one-time prices, paid
// once (a Payment Link makes the same session).
type PaymentParams struct {
	// Customer is an existing customer; empty creates one from Email and Name, unless
	// Guest.
	Customer string
	Email    string
	Name     string
	// Guest pays without a customer object (customer_creation=if_required): the session
	// keeps the email and name in customer_details only.
	Guest bool
	Items []ItemParams
	// Async pays with a delayed payment method (a bank debit): the session completes
	// with payment_status unpaid, and SettleAsyncPayment decides the payment later.
	Async bool
	// CardDeclines declines the payment: the session stays open and completes never.
	CardDeclines bool
	// InvoiceCreation makes the session create a paid invoice once the payment
	// succeeds (Checkout's post-payment invoices).
	InvoiceCreation   bool
	ClientReferenceID string
	Metadata          map[string]string
}

// PaymentResult names what a payment-mode checkout created.
type PaymentResult struct {
	Session, Customer, PaymentIntent, Charge string
	// Invoice is the post-payment invoice, once the payment succeeded (InvoiceCreation).
	Invoice string
	// Completed is false when the payment was declined: the session stays open.
	Completed bool
}

// oneTimeOnly is Stripe's answer to a recurring price in a payment-mode session (a
// guess at the wording: docs/fidelity.md).
var oneTimeOnly = "You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices. (line_items[%d])"

// CheckoutPayment plays a Checkout Session in payment mode and emits Stripe's events in
// Stripe's order: the charge, the post-payment invoice if asked for, then
// checkout.session.completed (with payment_status paid, or unpaid for a delayed payment
// method). A declined card completes nothing. It returns an error for no items, an
// unknown price or customer, or a recurring price.
func (s *Sim) CheckoutPayment(p PaymentParams) (PaymentResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(p.Items) == 0 {
		return PaymentResult{}, errors.New("a payment needs at least one line item")
	}
	for i, it := range p.Items {
		pr, ok := s.prices[it.Price]
		if !ok {
			return PaymentResult{}, errNotFound("price", it.Price)
		}
		if !pr.OneTime {
			return PaymentResult{}, fmt.Errorf(oneTimeOnly, i)
		}
	}
	sess := &CheckoutSession{ID: s.id("cs_test"), Mode: ModePayment, Status: SessionOpen, PaymentStatus: "unpaid",
		ClientReferenceID: p.ClientReferenceID, Metadata: cloneMap(p.Metadata), Created: s.unix(), Email: p.Email, Name: p.Name,
		Lines: s.sessionLines(p.Items), InvoiceCreation: p.InvoiceCreation, seq: s.next()}
	if !p.Guest {
		cust, err := s.customerFor(p.Customer, p.Email, p.Name, p.CardDeclines)
		if err != nil {
			return PaymentResult{}, err
		}
		sess.Customer, sess.Email, sess.Name = cust.ID, cust.Email, cust.Name
	}
	s.sessions[sess.ID] = sess
	res := PaymentResult{Session: sess.ID, Customer: sess.Customer}

	// A purchase made free by a discount asks for no payment.
	if sess.Total() == 0 {
		sess.Status, sess.PaymentStatus = SessionComplete, "no_payment_required"
		res.Completed = true
		s.emit("checkout.session.completed", s.renderSession(sess), nil)
		return res, nil
	}
	sess.PaymentIntent = s.id("pi")
	ch := &Charge{ID: s.id("ch"), Amount: sess.Total(), Currency: "usd", Customer: sess.Customer, PaymentIntent: sess.PaymentIntent,
		Created: s.unix(), seq: s.next()}
	s.charges[ch.ID] = ch
	sess.Charge = ch.ID
	res.PaymentIntent, res.Charge = sess.PaymentIntent, ch.ID
	cust := s.customers[sess.Customer]
	switch {
	case p.CardDeclines || (cust != nil && (cust.CardDeclines || cust.failNext)):
		if cust != nil {
			cust.failNext = false
		}
		ch.Status, ch.FailureCode, ch.FailureMessage = "failed", "card_declined", "Your card was declined."
		s.emit("charge.failed", s.renderCharge(ch), nil)
		return res, nil
	case p.Async:
		ch.Status = "pending"
		s.emit("charge.pending", s.renderCharge(ch), nil)
		sess.Status = SessionComplete
		res.Completed = true
		s.emit("checkout.session.completed", s.renderSession(sess), nil)
		return res, nil
	}
	ch.Status, ch.Paid = "succeeded", true
	s.emit("charge.succeeded", s.renderCharge(ch), nil)
	sess.Status, sess.PaymentStatus = SessionComplete, "paid"
	res.Invoice, res.Completed = s.postPaymentInvoice(sess), true
	s.emit("checkout.session.completed", s.renderSession(sess), nil)
	return res, nil
}

// SettleAsyncPayment decides a delayed payment of a completed payment-mode session:
// succeeded, the charge succeeds, the post-payment invoice is made if asked for, and
// checkout.session.async_payment_succeeded follows; failed, the charge fails and
// checkout.session.async_payment_failed follows. It returns an error for an unknown
// session or one with no payment waiting.
func (s *Sim) SettleAsyncPayment(session string, succeeded bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[session]
	if !ok {
		return errNotFound("checkout session", session)
	}
	ch := s.charges[sess.Charge]
	if sess.Mode != ModePayment || sess.Status != SessionComplete || ch == nil || ch.Status != "pending" {
		return fmt.Errorf("checkout session %s has no payment waiting", session)
	}
	if !succeeded {
		ch.Status, ch.FailureCode, ch.FailureMessage = "failed", "insufficient_funds", "The bank account has insufficient funds."
		s.emit("charge.failed", s.renderCharge(ch), nil)
		s.emit("checkout.session.async_payment_failed", s.renderSession(sess), nil)
		return nil
	}
	ch.Status, ch.Paid = "succeeded", true
	s.emit("charge.succeeded", s.renderCharge(ch), nil)
	sess.PaymentStatus = "paid"
	s.postPaymentInvoice(sess)
	s.emit("checkout.session.async_payment_succeeded", s.renderSession(sess), nil)
	return nil
}

// postPaymentInvoice makes the paid invoice of a session that asked for one
// (InvoiceCreation), with the session's lines, and returns its id ("" for none). Stripe
// emits invoice.paid "as soon as the payment tied to the Checkout Session succeeds".
func (s *Sim) postPaymentInvoice(sess *CheckoutSession) string {
	if !sess.InvoiceCreation || sess.Customer == "" {
		return ""
	}
	lines := make([]*LineItem, 0, len(sess.Lines))
	for _, l := range sess.Lines {
		lines = append(lines, s.invoiceItemLine(l.Price, l.Quantity))
	}
	inv := s.oneOffInvoice(s.customers[sess.Customer], lines, ChargeAutomatically, 0)
	s.emitInvoice("invoice.created", inv)
	inv.Status, inv.FinalizedAt = "open", s.unix()
	s.emitInvoice("invoice.finalized", inv)
	s.markPaid(nil, inv, false) // paid by the session's payment: no charge of its own
	sess.Invoice = inv.ID
	return inv.ID
}

// InvoiceParams create an invoice that belongs to no subscription: one-time prices,
// billed once.
type InvoiceParams struct {
	// Customer is an existing customer; empty creates one from Email and Name.
	Customer string
	Email    string
	Name     string
	Items    []ItemParams
	// CollectionMethod is charge_automatically (default: the card is charged at once) or
	// send_invoice (the invoice stays open until paid: PayInvoice, PayOutOfBand).
	CollectionMethod string
	// DaysUntilDue is how many days a sent invoice gives; required with send_invoice.
	DaysUntilDue int
	// CardDeclines gives the customer a card that declines every payment.
	CardDeclines bool
}

// InvoiceResult names what CreateInvoice created.
type InvoiceResult struct {
	Invoice, Customer string
}

// CreateInvoice creates an invoice of one-time prices for a customer, finalizes it and
// collects it, emitting Stripe's events (invoice.created, invoice.finalized, the charge,
// invoice.paid and invoice.payment_succeeded, or invoice.payment_failed). A declined
// payment leaves it open, with no retries. It returns an error for bad parameters.
func (s *Sim) CreateInvoice(p InvoiceParams) (InvoiceResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case p.CollectionMethod == "":
		p.CollectionMethod = ChargeAutomatically
	case p.CollectionMethod != ChargeAutomatically && p.CollectionMethod != SendInvoice:
		return InvoiceResult{}, fmt.Errorf("collection method %q: want charge_automatically or send_invoice", p.CollectionMethod)
	}
	if (p.CollectionMethod == SendInvoice) != (p.DaysUntilDue > 0) {
		return InvoiceResult{}, errors.New("days_until_due is required with send_invoice, and valid only with it")
	}
	if len(p.Items) == 0 {
		return InvoiceResult{}, errors.New("an invoice needs at least one item")
	}
	lines := make([]*LineItem, 0, len(p.Items))
	for _, it := range p.Items {
		pr, ok := s.prices[it.Price]
		if !ok {
			return InvoiceResult{}, errNotFound("price", it.Price)
		}
		if !pr.OneTime {
			return InvoiceResult{}, fmt.Errorf("price %s is recurring: an invoice item takes one-time prices", it.Price)
		}
		lines = append(lines, s.invoiceItemLine(it.Price, max(it.Quantity, 1)))
	}
	cust, err := s.customerFor(p.Customer, p.Email, p.Name, p.CardDeclines)
	if err != nil {
		return InvoiceResult{}, err
	}
	inv := s.oneOffInvoice(cust, lines, p.CollectionMethod, int64(p.DaysUntilDue))
	s.emitInvoice("invoice.created", inv)
	s.finalize(inv)
	s.collect(nil, inv)
	return InvoiceResult{Invoice: inv.ID, Customer: cust.ID}, nil
}

// oneOffInvoice makes a draft invoice of no subscription.
func (s *Sim) oneOffInvoice(cust *Customer, lines []*LineItem, collection string, daysUntilDue int64) *Invoice {
	inv := &Invoice{ID: s.id("in"), Customer: cust.ID, Status: "draft", BillingReason: "manual", Lines: lines, Currency: "usd",
		Created: s.unix(), PeriodStart: s.unix(), PeriodEnd: s.unix(), CollectionMethod: collection, daysUntilDue: daysUntilDue,
		seq: s.next()}
	s.invoices[inv.ID] = inv
	return inv
}

// invoiceItemLine is an invoice line for quantity of a one-time price, its period the
// instant it was added.
func (s *Sim) invoiceItemLine(price string, quantity int64) *LineItem {
	pr := s.prices[price]
	return &LineItem{ID: s.id("il"), Type: "invoiceitem", Price: price, Quantity: quantity, Amount: pr.UnitAmount * quantity,
		PeriodStart: s.unix(), PeriodEnd: s.unix(), Description: fmt.Sprintf("%d × %s", quantity, s.products[pr.Product].Name)}
}

// sessionLines are a Checkout Session's line items for items (a metered price has no
// quantity).
func (s *Sim) sessionLines(items []ItemParams) []*SessionLine {
	out := make([]*SessionLine, 0, len(items))
	for _, it := range items {
		pr := s.prices[it.Price]
		q := it.Quantity
		if q == 0 && !pr.metered() {
			q = 1
		}
		out = append(out, &SessionLine{ID: s.id("li"), Price: it.Price, Quantity: q, Amount: pr.UnitAmount * q})
	}
	return out
}
