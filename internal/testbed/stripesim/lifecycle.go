package stripesim

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// CreateProduct creates a product and returns its id.
func (s *Sim) CreateProduct(name string, metadata map[string]string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &Product{ID: s.id("prod"), Name: name, Metadata: cloneMap(metadata), Created: s.unix()}
	s.products[p.ID] = p
	s.emit("product.created", s.renderProduct(p), nil)
	return p.ID
}

// PriceParams create a price: recurring, or one-time.
type PriceParams struct {
	Product    string
	UnitAmount int64
	Currency   string // default usd
	// OneTime makes a price of type one_time, for Checkout in payment mode and one-off
	// invoices; it takes no interval or usage type.
	OneTime       bool
	Interval      string // day, week, month (default), year
	IntervalCount int64  // default 1
	UsageType     string // licensed (default) or metered
	Nickname      string
	Metadata      map[string]string
}

// CreatePrice creates a price and returns its id. It returns an error for an unknown
// product or usage type, and for a one-time price given an interval or usage type.
func (s *Sim) CreatePrice(p PriceParams) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.products[p.Product]; !ok {
		return "", errNotFound("product", p.Product)
	}
	if p.Currency == "" {
		p.Currency = "usd"
	}
	if p.OneTime {
		if p.Interval != "" || p.IntervalCount != 0 || p.UsageType != "" {
			return "", errors.New("a one-time price has no interval and no usage type")
		}
		pr := &Price{ID: s.id("price"), Product: p.Product, UnitAmount: p.UnitAmount, Currency: p.Currency, OneTime: true,
			Nickname: p.Nickname, Metadata: cloneMap(p.Metadata), Created: s.unix()}
		s.prices[pr.ID] = pr
		s.emit("price.created", s.renderPrice(pr, nil), nil)
		return pr.ID, nil
	}
	if p.Interval == "" {
		p.Interval = "month"
	}
	if p.IntervalCount == 0 {
		p.IntervalCount = 1
	}
	switch p.UsageType {
	case "":
		p.UsageType = UsageLicensed
	case UsageLicensed, UsageMetered:
	default:
		return "", fmt.Errorf("usage type %q: want licensed or metered", p.UsageType)
	}
	pr := &Price{ID: s.id("price"), Product: p.Product, UnitAmount: p.UnitAmount, Currency: p.Currency,
		Interval: p.Interval, IntervalCount: p.IntervalCount, UsageType: p.UsageType, Nickname: p.Nickname,
		Metadata: cloneMap(p.Metadata), Created: s.unix()}
	s.prices[pr.ID] = pr
	s.emit("price.created", s.renderPrice(pr, nil), nil)
	return pr.ID, nil
}

// ItemParams is one price and quantity of a subscription.
type ItemParams struct {
	Price    string
	Quantity int64 // default 1; none for a metered price
}

// CheckoutParams describe a Checkout Session in subscription mode.
type CheckoutParams struct {
	// Customer is an existing customer; empty creates one from Email and Name.
	Customer string
	Email    string
	Name     string
	Items    []ItemParams
	// TrialDays starts the subscription with a trial (no charge until it ends).
	TrialDays int
	// CardDeclines gives the customer a card that declines every payment.
	CardDeclines         bool
	ClientReferenceID    string
	Metadata             map[string]string // the session's
	SubscriptionMetadata map[string]string
}

// CheckoutResult names what a checkout created.
type CheckoutResult struct {
	Session, Subscription, Customer, Invoice string
	// Completed is false when the first payment failed: the session stays open and the
	// subscription incomplete.
	Completed bool
}

// Checkout plays a completed Checkout Session in subscription mode and emits Stripe's
// events in Stripe's order. It returns an error for no items, an unknown price or
// customer, items of different billing intervals, or a quantity on a metered price.
func (s *Sim) Checkout(p CheckoutParams) (CheckoutResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Checkout's own wording (Stripe's answer to a Checkout line item with a quantity).
	quantityErr := "Quantity should not be specified where usage_type is `metered`. Remove quantity from `line_items[%d]`"
	first, err := s.checkItems(p.Items, quantityErr)
	if err != nil {
		return CheckoutResult{}, err
	}
	cust, err := s.customerFor(p.Customer, p.Email, p.Name, p.CardDeclines)
	if err != nil {
		return CheckoutResult{}, err
	}
	sub := s.newSubscription(cust, first, p.Items, p.SubscriptionMetadata, ChargeAutomatically, 0)
	sess := &CheckoutSession{ID: s.id("cs_test"), Mode: ModeSubscription, Status: SessionOpen, Customer: cust.ID, Subscription: sub.ID,
		ClientReferenceID: p.ClientReferenceID, Metadata: cloneMap(p.Metadata), Created: sub.Created, Email: cust.Email, Name: cust.Name,
		PaymentStatus: "unpaid", Lines: s.sessionLines(p.Items), seq: s.next()}
	s.sessions[sess.ID] = sess

	inv := s.begin(sub, first, p.TrialDays)
	res := CheckoutResult{Session: sess.ID, Subscription: sub.ID, Customer: cust.ID, Invoice: inv.ID, Completed: inv.Paid}
	if inv.Paid {
		sess.Invoice, sess.PaymentStatus, sess.Status = inv.ID, "paid", SessionComplete
		if inv.Total() == 0 { // a trial, or metered prices only
			sess.PaymentStatus = "no_payment_required"
		}
		s.emit("checkout.session.completed", s.renderSession(sess), nil)
	} else {
		// The card was declined: the customer is still on Checkout's page.
		sess.Status, sess.PaymentStatus = "open", "unpaid"
	}
	return res, nil
}

// SubscriptionParams create a subscription through the API (POST /v1/subscriptions)
// rather than Checkout: the way to invoice a customer instead of charging a card.
type SubscriptionParams struct {
	// Customer is an existing customer; empty creates one from Email and Name.
	Customer string
	Email    string
	Name     string
	Items    []ItemParams
	// TrialDays starts the subscription with a trial.
	TrialDays int
	// CollectionMethod is charge_automatically (default) or send_invoice.
	CollectionMethod string
	// DaysUntilDue is how many days a sent invoice gives the customer to pay; required
	// with send_invoice, refused otherwise.
	DaysUntilDue int
	// CardDeclines gives the customer a card that declines every payment.
	CardDeclines bool
	Metadata     map[string]string
}

// SubscriptionResult names what CreateSubscription created.
type SubscriptionResult struct {
	Subscription, Customer, Invoice string
}

// CreateSubscription creates a subscription as POST /v1/subscriptions does and emits
// Stripe's events. With send_invoice the subscription is active at once and its first
// invoice is open until paid. It returns an error for bad parameters, as CheckoutParams.
func (s *Sim) CreateSubscription(p SubscriptionParams) (SubscriptionResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case p.CollectionMethod == "":
		p.CollectionMethod = ChargeAutomatically
	case p.CollectionMethod != ChargeAutomatically && p.CollectionMethod != SendInvoice:
		return SubscriptionResult{}, fmt.Errorf("collection method %q: want charge_automatically or send_invoice", p.CollectionMethod)
	}
	if p.CollectionMethod == SendInvoice && p.DaysUntilDue <= 0 {
		return SubscriptionResult{}, errors.New("days_until_due is required when collection_method is send_invoice")
	}
	if p.CollectionMethod == ChargeAutomatically && p.DaysUntilDue != 0 {
		return SubscriptionResult{}, errors.New("days_until_due is valid only when collection_method is send_invoice")
	}
	// The Subscriptions API's wording for the same mistake.
	first, err := s.checkItems(p.Items, "You cannot set the quantity for metered plans. (items[%d])")
	if err != nil {
		return SubscriptionResult{}, err
	}
	cust, err := s.customerFor(p.Customer, p.Email, p.Name, p.CardDeclines)
	if err != nil {
		return SubscriptionResult{}, err
	}
	sub := s.newSubscription(cust, first, p.Items, p.Metadata, p.CollectionMethod, int64(p.DaysUntilDue))
	inv := s.begin(sub, first, p.TrialDays)
	return SubscriptionResult{Subscription: sub.ID, Customer: cust.ID, Invoice: inv.ID}, nil
}

// oneTimeOnSubscription is Stripe's answer to a one-time price among a subscription's
// items (a guess at the wording: docs/fidelity.md).
var oneTimeOnSubscription = "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`. (items[%d])"

// checkItems returns the first item's price after checking every item: a known price,
// one billing interval for all, no quantity on a metered price (quantityErr, with the
// item's index).
func (s *Sim) checkItems(items []ItemParams, quantityErr string) (*Price, error) {
	if len(items) == 0 {
		return nil, errors.New("a subscription needs at least one item")
	}
	var first *Price
	for i, it := range items {
		pr, ok := s.prices[it.Price]
		if !ok {
			return nil, errNotFound("price", it.Price)
		}
		if pr.OneTime {
			return nil, fmt.Errorf(oneTimeOnSubscription, i)
		}
		if pr.metered() && it.Quantity != 0 {
			return nil, fmt.Errorf(quantityErr, i)
		}
		if first == nil {
			first = pr
		} else if pr.Interval != first.Interval || pr.IntervalCount != first.IntervalCount {
			return nil, errors.New("all items of a subscription must share one billing interval")
		}
	}
	return first, nil
}

// customerFor returns the customer with id, or a new one from email and name.
func (s *Sim) customerFor(id, email, name string, cardDeclines bool) (*Customer, error) {
	cust, ok := s.customers[id]
	if id != "" && !ok {
		return nil, errNotFound("customer", id)
	}
	if cust == nil {
		cust = &Customer{ID: s.id("cus"), Email: email, Name: name, Metadata: map[string]string{}, Created: s.unix()}
		s.customers[cust.ID] = cust
		s.emit("customer.created", s.renderCustomer(cust), nil)
	}
	cust.CardDeclines = cust.CardDeclines || cardDeclines
	return cust, nil
}

func (s *Sim) newSubscription(cust *Customer, first *Price, items []ItemParams, metadata map[string]string, collection string, daysUntilDue int64) *Subscription {
	now := s.unix()
	sub := &Subscription{ID: s.id("sub"), Customer: cust.ID, Currency: first.Currency, Created: now, StartDate: now,
		Metadata: cloneMap(metadata), CollectionMethod: collection, DaysUntilDue: daysUntilDue, seq: s.next()}
	for _, it := range items {
		q := it.Quantity
		if q == 0 && !s.prices[it.Price].metered() {
			q = 1
		}
		sub.Items = append(sub.Items, &SubscriptionItem{ID: s.id("si"), Price: it.Price, Quantity: q, Created: now})
	}
	s.subs[sub.ID] = sub
	return sub
}

// begin starts a new subscription's first period (or trial), makes its first invoice and
// collects it: a trial's $0 invoice is paid; a card is charged (a decline leaves the
// subscription incomplete); a sent invoice stays open and the subscription is active
// regardless ("Subscriptions with collection_method=send_invoice are automatically
// activated regardless of the first Invoice status").
func (s *Sim) begin(sub *Subscription, first *Price, trialDays int) *Invoice {
	now := s.unix()
	if trialDays > 0 {
		sub.Status = StatusTrialing
		sub.TrialStart, sub.TrialEnd = now, now+int64(trialDays)*86400
		sub.CurrentPeriodStart, sub.CurrentPeriodEnd, sub.BillingCycleAnchor = now, sub.TrialEnd, sub.TrialEnd
	} else {
		sub.Status = StatusIncomplete
		if sub.CollectionMethod == SendInvoice {
			sub.Status = StatusActive
		}
		sub.CurrentPeriodStart, sub.BillingCycleAnchor = now, now
		sub.CurrentPeriodEnd = advancePeriod(now, first)
	}
	inv := s.newInvoice(sub, "subscription_create", s.subscriptionLines(sub, sub.CurrentPeriodStart, sub.CurrentPeriodEnd, trialDays > 0))
	s.emitSub("customer.subscription.created", sub, nil)
	s.emitInvoice("invoice.created", inv)
	s.finalize(inv)
	s.collect(sub, inv)
	return inv
}

// subscriptionLines bills every item for [start, end]; a trial bills nothing, and nor
// does a metered item, whose usage in the period is billed when it ends.
func (s *Sim) subscriptionLines(sub *Subscription, start, end int64, trial bool) []*LineItem {
	var lines []*LineItem
	for _, it := range sub.Items {
		pr := s.prices[it.Price]
		amount, desc := pr.UnitAmount*it.Quantity, fmt.Sprintf("%d × %s", it.Quantity, s.products[pr.Product].Name)
		if trial {
			amount, desc = 0, "Trial period for "+s.products[pr.Product].Name
		}
		lines = append(lines, &LineItem{ID: s.id("il"), Type: "subscription", Price: it.Price, Quantity: it.Quantity,
			Amount: amount, PeriodStart: start, PeriodEnd: end, Description: desc, SubscriptionItem: it.ID})
	}
	return lines
}

// renewalLines bills a new period [start, end]: licensed items in advance for it, and
// metered items in arrears for the usage of the period that just ended, [prevStart,
// start] ("metered usage from the previous billing period is charged alongside the fixed
// rate for the new billing period"). Usage restarts from zero.
func (s *Sim) renewalLines(sub *Subscription, prevStart, start, end int64, wasTrial bool) []*LineItem {
	var licensed, metered []*LineItem
	for _, it := range sub.Items {
		pr := s.prices[it.Price]
		name := s.products[pr.Product].Name
		if !pr.metered() {
			licensed = append(licensed, &LineItem{ID: s.id("il"), Type: "subscription", Price: it.Price, Quantity: it.Quantity,
				Amount: pr.UnitAmount * it.Quantity, PeriodStart: start, PeriodEnd: end,
				Description: fmt.Sprintf("%d × %s", it.Quantity, name), SubscriptionItem: it.ID})
			continue
		}
		amount := pr.UnitAmount * it.Usage
		if wasTrial {
			amount = 0 // usage during a trial is free
		}
		metered = append(metered, &LineItem{ID: s.id("il"), Type: "subscription", Price: it.Price, Quantity: it.Usage,
			Amount: amount, PeriodStart: prevStart, PeriodEnd: start,
			Description: fmt.Sprintf("%d × %s (usage)", it.Usage, name), SubscriptionItem: it.ID})
		it.Usage = 0
	}
	return append(licensed, metered...)
}

func (s *Sim) newInvoice(sub *Subscription, reason string, lines []*LineItem) *Invoice {
	// Stripe sorts pending items (prorations) before subscription lines.
	lines = append(sub.pending, lines...)
	sub.pending = nil
	inv := &Invoice{ID: s.id("in"), Customer: sub.Customer, Subscription: sub.ID, Status: "draft", BillingReason: reason,
		Lines: lines, Currency: sub.Currency, Created: s.unix(), PeriodStart: s.unix(), PeriodEnd: s.unix(),
		CollectionMethod: sub.CollectionMethod, coversThrough: sub.CurrentPeriodEnd, seq: s.next()}
	if sub.PauseCollection != nil {
		inv.pause = sub.PauseCollection.Behavior
	}
	s.invoices[inv.ID] = inv
	sub.LatestInvoice = inv.ID
	return inv
}

// finalize opens an invoice; a sent one is due days_until_due days later.
func (s *Sim) finalize(inv *Invoice) {
	inv.Status, inv.FinalizedAt = "open", s.unix()
	if sub := s.subs[inv.Subscription]; inv.CollectionMethod == SendInvoice && sub != nil {
		inv.DueDate = inv.FinalizedAt + sub.DaysUntilDue*86400
	} else if inv.CollectionMethod == SendInvoice {
		inv.DueDate = inv.FinalizedAt + inv.daysUntilDue*86400
	}
	s.emitInvoice("invoice.finalized", inv)
}

// collect takes payment of a just-finalized invoice: a card is charged; a sent invoice
// waits for the customer (unless it is for nothing, which Stripe marks paid at once).
func (s *Sim) collect(sub *Subscription, inv *Invoice) {
	if inv.CollectionMethod == SendInvoice && inv.Total() > 0 {
		return
	}
	s.pay(sub, inv)
}

// pay attempts to collect an open invoice and moves the subscription accordingly.
func (s *Sim) pay(sub *Subscription, inv *Invoice) {
	total := inv.Total()
	if total <= 0 {
		s.markPaid(sub, inv, false)
		return
	}
	cust := s.customers[inv.Customer]
	declined := cust.CardDeclines || cust.failNext
	cust.failNext = false
	ch := &Charge{ID: s.id("ch"), Amount: total, Currency: inv.Currency, Customer: inv.Customer, Invoice: inv.ID, Created: s.unix(), seq: s.next()}
	s.charges[ch.ID] = ch
	inv.AttemptCount++
	inv.Attempted = true
	inv.Charge = ch.ID
	if !declined {
		ch.Status, ch.Paid = "succeeded", true
		s.emit("charge.succeeded", s.renderCharge(ch), nil)
		s.markPaid(sub, inv, false)
		return
	}
	ch.Status, ch.FailureCode, ch.FailureMessage = "failed", "card_declined", "Your card was declined."
	s.emit("charge.failed", s.renderCharge(ch), nil)
	if inv.CollectionMethod == SendInvoice || sub == nil {
		// The customer's own attempt on a sent invoice: Stripe does not retry it, and the
		// due date, not the decline, decides the subscription's status.
		inv.NextPaymentAttempt = 0
		s.emitInvoice("invoice.payment_failed", inv)
		return
	}
	if sub.firstFailure == 0 {
		sub.firstFailure, sub.retryIndex = s.unix(), 0
	}
	if sub.Status != StatusIncomplete && sub.retryIndex < len(s.opts.Dunning.Retries) {
		inv.NextPaymentAttempt = sub.firstFailure + int64(s.opts.Dunning.Retries[sub.retryIndex]/time.Second)
	} else {
		inv.NextPaymentAttempt = 0
	}
	s.emitInvoice("invoice.payment_failed", inv)
	switch {
	case sub.Status == StatusIncomplete:
		// The first payment: Checkout keeps asking; the subscription expires after 23 hours.
	case inv.NextPaymentAttempt == 0:
		s.endDunning(sub, inv, s.opts.Dunning.Final)
	case sub.Status != StatusPastDue:
		prev := obj{"status": sub.Status}
		sub.Status = StatusPastDue
		s.emitSub("customer.subscription.updated", sub, prev)
	}
}

func (s *Sim) markPaid(sub *Subscription, inv *Invoice, outOfBand bool) {
	inv.Status, inv.Paid, inv.PaidOutOfBand, inv.PaidAt = "paid", true, outOfBand, s.unix()
	inv.AmountPaid, inv.NextPaymentAttempt = inv.Total(), 0
	if outOfBand {
		inv.AmountPaid = 0
	}
	s.emitInvoice("invoice.paid", inv)
	if !outOfBand {
		s.emitInvoice("invoice.payment_succeeded", inv)
	}
	if sub == nil {
		return // an invoice of no subscription
	}
	sub.firstFailure, sub.retryIndex = 0, 0
	switch sub.Status {
	case StatusIncomplete, StatusPastDue, StatusUnpaid:
		prev := obj{"status": sub.Status}
		sub.Status = StatusActive
		s.emitSub("customer.subscription.updated", sub, prev)
	}
}

// endDunning applies the account's final dunning action.
func (s *Sim) endDunning(sub *Subscription, inv *Invoice, final string) {
	inv.NextPaymentAttempt = 0
	if final == StatusUnpaid {
		prev := obj{"status": sub.Status}
		sub.Status = StatusUnpaid
		s.emitSub("customer.subscription.updated", sub, prev)
		return
	}
	s.cancel(sub, "payment_failed")
}

func (s *Sim) cancel(sub *Subscription, reason string) {
	now := s.unix()
	if sub.CanceledAt == 0 {
		sub.CanceledAt = now
	}
	sub.Status, sub.EndedAt, sub.CancelReason = StatusCanceled, now, reason
	sub.draft, sub.finalizeAt = "", 0
	s.emitSub("customer.subscription.deleted", sub, nil)
}

// Advance moves the test clock forward by d, running everything that falls due on the
// way in time order: trial ends, renewals, invoice finalization and payment, dunning
// retries, cancellations at period end, expiry of unpaid first invoices.
func (s *Sim) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	target := s.now.Add(d)
	for {
		at, run := s.nextDue()
		if run == nil || at.After(target) {
			break
		}
		if at.After(s.now) {
			s.now = at
		}
		run()
	}
	s.now = target
}

// nextDue returns the earliest pending piece of work.
func (s *Sim) nextDue() (time.Time, func()) {
	var best int64 = math.MaxInt64
	var run func()
	consider := func(at int64, f func()) {
		if at > 0 && at < best {
			best, run = at, f
		}
	}
	for _, sub := range s.sortedSubsOldestFirst() {
		sub := sub
		switch sub.Status {
		case StatusTrialing, StatusActive, StatusPastDue:
			if sub.draft != "" {
				consider(sub.finalizeAt, func() { s.finalizeDraft(sub) })
			}
			consider(sub.CurrentPeriodEnd, func() { s.periodEnd(sub) })
			if inv := s.invoices[sub.LatestInvoice]; inv != nil && inv.Status == "open" && inv.NextPaymentAttempt > 0 {
				consider(inv.NextPaymentAttempt, func() { s.retry(sub, inv) })
			}
			if inv := s.invoices[sub.LatestInvoice]; inv != nil && inv.Status == "open" && inv.DueDate > 0 {
				switch {
				case sub.Status == StatusActive:
					consider(inv.DueDate, func() { s.overdue(sub) })
				case sub.Status == StatusPastDue && s.opts.Dunning.InvoiceGrace > 0:
					consider(inv.DueDate+int64(s.opts.Dunning.InvoiceGrace/time.Second), func() { s.endDunning(sub, inv, s.opts.Dunning.Final) })
				}
			}
			if pc := sub.PauseCollection; pc != nil && pc.ResumesAt > 0 {
				consider(pc.ResumesAt, func() { s.setPause(sub, nil) })
			}
		case StatusIncomplete:
			consider(sub.Created+23*3600, func() { s.expireIncomplete(sub) })
		}
	}
	if run == nil {
		return time.Time{}, nil
	}
	return time.Unix(best, 0).UTC(), run
}

func (s *Sim) sortedSubsOldestFirst() []*Subscription {
	subs := s.sortedSubs()
	for i, j := 0, len(subs)-1; i < j; i, j = i+1, j-1 {
		subs[i], subs[j] = subs[j], subs[i]
	}
	return subs
}

// periodEnd starts the next period (creating its invoice as a draft) or ends the
// subscription if it was set to cancel at period end.
func (s *Sim) periodEnd(sub *Subscription) {
	if sub.CancelAtPeriodEnd {
		s.cancel(sub, "cancellation_requested")
		return
	}
	price := s.prices[sub.Items[0].Price]
	prev := obj{"current_period_start": sub.CurrentPeriodStart, "current_period_end": sub.CurrentPeriodEnd,
		"latest_invoice": nullStr(sub.LatestInvoice)}
	if sub.Status == StatusTrialing {
		prev["status"] = StatusTrialing
		sub.Status = StatusActive
	}
	prevStart, start := sub.CurrentPeriodStart, sub.CurrentPeriodEnd
	sub.CurrentPeriodStart, sub.CurrentPeriodEnd = start, advancePeriod(start, price)
	inv := s.newInvoice(sub, "subscription_cycle", s.renewalLines(sub, prevStart, sub.CurrentPeriodStart, sub.CurrentPeriodEnd, prev["status"] == StatusTrialing))
	// The period moves now, before anything is paid: keysync must not take
	// current_period_end as paid-through.
	s.emitSub("customer.subscription.updated", sub, prev)
	s.emitInvoice("invoice.created", inv)
	if inv.pause == PauseKeepAsDraft {
		return // left a draft (auto_advance false) until someone finalizes it
	}
	sub.draft, sub.finalizeAt = inv.ID, s.unix()+int64(s.opts.FinalizeDelay/time.Second)
}

func (s *Sim) finalizeDraft(sub *Subscription) {
	inv := s.invoices[sub.draft]
	sub.draft, sub.finalizeAt = "", 0
	if inv == nil || inv.Status != "draft" {
		return
	}
	s.finalize(inv)
	switch inv.pause {
	case PauseMarkUncollectible:
		inv.Status, inv.MarkedUncollectibleAt = "uncollectible", s.unix()
		s.emitInvoice("invoice.marked_uncollectible", inv)
	case PauseVoid:
		inv.Status, inv.VoidedAt = "void", s.unix()
		s.emitInvoice("invoice.voided", inv)
	default:
		s.collect(sub, inv)
	}
}

// overdue moves a subscription that sends invoices to past_due when its invoice's due
// date passes unpaid.
func (s *Sim) overdue(sub *Subscription) {
	prev := obj{"status": sub.Status}
	sub.Status = StatusPastDue
	s.emitSub("customer.subscription.updated", sub, prev)
}

func (s *Sim) retry(sub *Subscription, inv *Invoice) {
	sub.retryIndex++
	s.pay(sub, inv)
}

func (s *Sim) expireIncomplete(sub *Subscription) {
	if inv := s.invoices[sub.LatestInvoice]; inv != nil && inv.Status == "open" {
		inv.Status, inv.VoidedAt = "void", s.unix()
		s.emitInvoice("invoice.voided", inv)
	}
	for _, cs := range s.sessions {
		if cs.Subscription == sub.ID && cs.Status == SessionOpen {
			cs.Status = SessionExpired // no checkout.session.expired event is emitted
		}
	}
	prev := obj{"status": sub.Status}
	sub.Status, sub.EndedAt = StatusIncompleteExpired, s.unix()
	// UNCONFIRMED: which event Stripe sends here; an ended subscription gets .deleted.
	s.emitSub("customer.subscription.deleted", sub, prev)
}

func (s *Sim) sub(id string) (*Subscription, error) {
	sub, ok := s.subs[id]
	if !ok {
		return nil, errNotFound("subscription", id)
	}
	return sub, nil
}

// SetCardDeclines makes every payment of the customer fail (true) or succeed (false).
func (s *Sim) SetCardDeclines(customer string, declines bool) error {
	return s.withCustomer(customer, func(c *Customer) { c.CardDeclines = declines })
}

// FailNextPayment makes only the customer's next payment attempt fail.
func (s *Sim) FailNextPayment(customer string) error {
	return s.withCustomer(customer, func(c *Customer) { c.failNext = true })
}

func (s *Sim) withCustomer(id string, fn func(*Customer)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.customers[id]
	if !ok {
		return errNotFound("customer", id)
	}
	fn(c)
	return nil
}

// openInvoice returns an invoice that is open, or an error saying why not.
func (s *Sim) openInvoice(id string) (*Invoice, error) {
	inv, ok := s.invoices[id]
	if !ok {
		return nil, errNotFound("invoice", id)
	}
	if inv.Status != "open" {
		return nil, fmt.Errorf("invoice %s is %s, not open", id, inv.Status)
	}
	return inv, nil
}

// PayInvoice attempts payment of an open invoice now (the customer fixed the card and
// clicked "pay" on the hosted invoice page).
func (s *Sim) PayInvoice(invoice string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	inv, err := s.openInvoice(invoice)
	if err != nil {
		return err
	}
	sub := s.subs[inv.Subscription]
	first := sub != nil && sub.Status == StatusIncomplete // pay makes it active
	s.pay(sub, inv)
	if first && inv.Paid {
		for _, cs := range s.sessions {
			if cs.Subscription == sub.ID && cs.Invoice == "" {
				cs.Invoice, cs.PaymentStatus, cs.Status = inv.ID, "paid", SessionComplete
				s.emit("checkout.session.completed", s.renderSession(cs), nil)
			}
		}
	}
	return nil
}

// PayOutOfBand marks an open invoice paid outside Stripe (invoice.paid, no charge).
func (s *Sim) PayOutOfBand(invoice string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	inv, err := s.openInvoice(invoice)
	if err != nil {
		return err
	}
	s.markPaid(s.subs[inv.Subscription], inv, true)
	return nil
}

// ExhaustDunning fails every remaining retry of the subscription's open invoice now and
// applies the final action: final is "canceled" or "unpaid" ("" for the configured one).
func (s *Sim) ExhaustDunning(subscription, final string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	inv := s.invoices[sub.LatestInvoice]
	if sub.Status != StatusPastDue || inv == nil || inv.Status != "open" {
		return fmt.Errorf("subscription %s is %s with no open invoice in dunning", subscription, sub.Status)
	}
	if final != "" {
		saved := s.opts.Dunning.Final
		s.opts.Dunning.Final = final
		defer func() { s.opts.Dunning.Final = saved }()
	}
	if sub.CollectionMethod == SendInvoice {
		// No retries to fail: the deadline after the due date passes now.
		s.endDunning(sub, inv, s.opts.Dunning.Final)
		return nil
	}
	cust := s.customers[sub.Customer]
	declines := cust.CardDeclines
	cust.CardDeclines = true
	defer func() { cust.CardDeclines = declines }()
	// Each remaining retry fails as it would have on its day; the last one applies the
	// final action.
	for sub.Status == StatusPastDue && inv.Status == "open" {
		sub.retryIndex++
		s.pay(sub, inv)
	}
	return nil
}

// CancelNow cancels the subscription immediately.
func (s *Sim) CancelNow(subscription string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	if sub.Status == StatusCanceled || sub.Status == StatusIncompleteExpired {
		return fmt.Errorf("subscription %s has ended", subscription)
	}
	s.cancel(sub, "cancellation_requested")
	return nil
}

// CancelAtPeriodEnd sets or clears cancel_at_period_end.
func (s *Sim) CancelAtPeriodEnd(subscription string, on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	prev := obj{"cancel_at_period_end": sub.CancelAtPeriodEnd, "cancel_at": nullable(sub.CancelAt), "canceled_at": nullable(sub.CanceledAt)}
	sub.CancelAtPeriodEnd = on
	if on {
		sub.CancelAt, sub.CanceledAt = sub.CurrentPeriodEnd, s.unix()
	} else {
		sub.CancelAt, sub.CanceledAt = 0, 0
	}
	s.emitSub("customer.subscription.updated", sub, prev)
	return nil
}

// ChangeOptions say how a plan change is billed.
type ChangeOptions struct {
	// InvoiceNow bills the proration at once (proration_behavior=always_invoice);
	// otherwise it waits for the next renewal invoice.
	InvoiceNow bool
}

// ChangePrice moves the subscription's first item to another price. A price with another
// billing interval resets the billing cycle: a new period starts now and is invoiced now.
func (s *Sim) ChangePrice(subscription, price string, o ChangeOptions) error {
	return s.changeItem(subscription, price, 0, o)
}

// ChangeQuantity sets the first item's quantity (seats).
func (s *Sim) ChangeQuantity(subscription string, quantity int64, o ChangeOptions) error {
	return s.changeItem(subscription, "", quantity, o)
}

func (s *Sim) changeItem(subscription, price string, quantity int64, o ChangeOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	if sub.Status != StatusActive && sub.Status != StatusTrialing && sub.Status != StatusPastDue {
		return fmt.Errorf("subscription %s is %s", subscription, sub.Status)
	}
	it := sub.Items[0]
	oldPrice, oldQty := s.prices[it.Price], it.Quantity
	newPrice, newQty := oldPrice, oldQty
	if price != "" {
		p, ok := s.prices[price]
		if !ok {
			return errNotFound("price", price)
		}
		newPrice = p
	}
	if quantity > 0 {
		newQty = quantity
	}
	prevItems := s.renderSubscription(sub, nil)["items"]
	it.Price, it.Quantity = newPrice.ID, newQty
	now := s.unix()
	resetCycle := newPrice.Interval != oldPrice.Interval || newPrice.IntervalCount != oldPrice.IntervalCount
	if sub.Status == StatusTrialing {
		s.emitSub("customer.subscription.updated", sub, obj{"items": prevItems})
		return nil
	}
	frac := float64(sub.CurrentPeriodEnd-now) / float64(max(sub.CurrentPeriodEnd-sub.CurrentPeriodStart, 1))
	credit := &LineItem{ID: s.id("il"), Type: "invoiceitem", Price: oldPrice.ID, Quantity: oldQty, Proration: true,
		Amount: -int64(math.Round(float64(oldPrice.UnitAmount*oldQty) * frac)), PeriodStart: now, PeriodEnd: sub.CurrentPeriodEnd,
		Description: "Unused time on " + s.products[oldPrice.Product].Name, SubscriptionItem: it.ID}
	if resetCycle {
		prev := obj{"items": prevItems, "current_period_start": sub.CurrentPeriodStart, "current_period_end": sub.CurrentPeriodEnd,
			"billing_cycle_anchor": sub.BillingCycleAnchor, "latest_invoice": nullStr(sub.LatestInvoice)}
		sub.CurrentPeriodStart, sub.CurrentPeriodEnd, sub.BillingCycleAnchor = now, advancePeriod(now, newPrice), now
		sub.pending = append(sub.pending, credit)
		inv := s.newInvoice(sub, "subscription_update", s.subscriptionLines(sub, sub.CurrentPeriodStart, sub.CurrentPeriodEnd, false))
		s.emitSub("customer.subscription.updated", sub, prev)
		s.emitInvoice("invoice.created", inv)
		s.finalize(inv)
		s.pay(sub, inv)
		return nil
	}
	charge := &LineItem{ID: s.id("il"), Type: "invoiceitem", Price: newPrice.ID, Quantity: newQty, Proration: true,
		Amount: int64(math.Round(float64(newPrice.UnitAmount*newQty) * frac)), PeriodStart: now, PeriodEnd: sub.CurrentPeriodEnd,
		Description: "Remaining time on " + s.products[newPrice.Product].Name, SubscriptionItem: it.ID}
	sub.pending = append(sub.pending, credit, charge)
	if !o.InvoiceNow {
		s.emitSub("customer.subscription.updated", sub, obj{"items": prevItems})
		return nil
	}
	prev := obj{"items": prevItems, "latest_invoice": nullStr(sub.LatestInvoice)}
	inv := s.newInvoice(sub, "subscription_update", nil)
	s.emitSub("customer.subscription.updated", sub, prev)
	s.emitInvoice("invoice.created", inv)
	s.finalize(inv)
	s.pay(sub, inv)
	return nil
}

// Pause moves the subscription to status paused (as when a trial ends without a payment
// method and the trial settings say pause).
func (s *Sim) Pause(subscription string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	if sub.Status != StatusTrialing && sub.Status != StatusActive {
		return fmt.Errorf("subscription %s is %s", subscription, sub.Status)
	}
	prev := obj{"status": sub.Status}
	sub.Status, sub.draft, sub.finalizeAt = StatusPaused, "", 0
	s.emitSub("customer.subscription.updated", sub, prev)
	s.emitSub("customer.subscription.paused", sub, nil)
	return nil
}

// Resume resumes a paused subscription: a new period starts now and is invoiced now.
func (s *Sim) Resume(subscription string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	if sub.Status != StatusPaused {
		return fmt.Errorf("subscription %s is %s, not paused", subscription, sub.Status)
	}
	now := s.unix()
	prev := obj{"status": StatusPaused, "current_period_start": sub.CurrentPeriodStart, "current_period_end": sub.CurrentPeriodEnd}
	sub.Status = StatusActive
	sub.CurrentPeriodStart, sub.CurrentPeriodEnd, sub.BillingCycleAnchor = now, advancePeriod(now, s.prices[sub.Items[0].Price]), now
	inv := s.newInvoice(sub, "subscription_cycle", s.subscriptionLines(sub, sub.CurrentPeriodStart, sub.CurrentPeriodEnd, false))
	s.emitSub("customer.subscription.resumed", sub, nil)
	s.emitSub("customer.subscription.updated", sub, prev)
	s.emitInvoice("invoice.created", inv)
	s.finalize(inv)
	s.pay(sub, inv)
	return nil
}

// Refund refunds amount of a charge (0: what is left of it) and returns the refund id.
func (s *Sim) Refund(charge string, amount int64) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.charges[charge]
	if !ok {
		return "", errNotFound("charge", charge)
	}
	left := ch.Amount - ch.AmountRefunded
	if ch.Status != "succeeded" || left <= 0 {
		return "", fmt.Errorf("charge %s has nothing to refund", charge)
	}
	if amount <= 0 || amount > left {
		amount = left
	}
	r := &Refund{ID: s.id("re"), Charge: ch.ID, Amount: amount, Created: s.unix()}
	s.refunds[r.ID] = r
	ch.AmountRefunded += amount
	ch.Refunded = ch.AmountRefunded >= ch.Amount
	s.emit("charge.refunded", s.renderCharge(ch), obj{"amount_refunded": ch.AmountRefunded - amount, "refunded": false})
	return r.ID, nil
}

// Dispute opens a dispute on a charge and returns its id.
func (s *Sim) Dispute(charge, reason string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.charges[charge]
	if !ok {
		return "", errNotFound("charge", charge)
	}
	if reason == "" {
		reason = "fraudulent"
	}
	d := &Dispute{ID: s.id("dp"), Charge: ch.ID, Amount: ch.Amount, Status: "needs_response", Reason: reason, Created: s.unix()}
	s.disputes[d.ID] = d
	ch.Disputed = true
	s.emit("charge.dispute.created", s.renderDispute(d), nil)
	return d.ID, nil
}

// CloseDispute closes a dispute as won or lost.
func (s *Sim) CloseDispute(dispute string, won bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.disputes[dispute]
	if !ok {
		return errNotFound("dispute", dispute)
	}
	prev := obj{"status": d.Status}
	d.Status = "lost"
	if won {
		d.Status = "won"
	}
	s.emit("charge.dispute.closed", s.renderDispute(d), prev)
	return nil
}

// SetSubscriptionMetadata changes metadata as the dashboard would (a "" value deletes).
// It returns an error for an unknown subscription, and for a canceled one unless
// Options.CanceledMetadata allows it, as the API does.
func (s *Sim) SetSubscriptionMetadata(subscription string, kv map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	if msg := s.refuseUpdate(sub, true); msg != "" {
		return errors.New(msg)
	}
	s.updateMetadata(sub, kv)
	return nil
}

// refuseUpdate returns Stripe's message when sub cannot take an update (of its metadata
// when metadata is true), or "". Stripe answered "A canceled subscription can only update
// its cancellation_details." in 2023–24 and "... cancellation_details and metadata." in
// 2026: Options.CanceledMetadata picks the newer rule.
func (s *Sim) refuseUpdate(sub *Subscription, metadata bool) string {
	switch {
	case sub.Status != StatusCanceled:
		return ""
	case !s.opts.CanceledMetadata:
		return "A canceled subscription can only update its cancellation_details."
	case !metadata:
		return "A canceled subscription can only update its cancellation_details and metadata."
	}
	return ""
}

func (s *Sim) updateMetadata(sub *Subscription, kv map[string]string) {
	prev := obj{"metadata": meta(sub.Metadata)}
	for k, v := range kv {
		if v == "" {
			delete(sub.Metadata, k)
		} else {
			sub.Metadata[k] = v
		}
	}
	s.emitSub("customer.subscription.updated", sub, prev)
}

// cancellationFeedback lists the values Stripe takes for cancellation_details[feedback].
var cancellationFeedback = []string{"customer_service", "low_quality", "missing_features", "other", "switched_service",
	"too_complex", "too_expensive", "unused"}

// updateCancellationDetails sets what the customer said on leaving (any subscription,
// canceled ones included).
func (s *Sim) updateCancellationDetails(sub *Subscription, comment, feedback *string) {
	prev := obj{"cancellation_details": s.renderSubscription(sub, nil)["cancellation_details"]}
	if comment != nil {
		sub.CancelComment = *comment
	}
	if feedback != nil {
		sub.CancelFeedback = *feedback
	}
	s.emitSub("customer.subscription.updated", sub, prev)
}
