package stripesim

import (
	"slices"
	"strconv"
	"strings"
)

// Objects are rendered as API 2023-10-16 JSON: every field the spec marks required, and
// the optional ones keysync reads. A fidelity test validates each rendering against the
// spec that stripe-mock v0.183.0 embeds, with unknown fields refused.

type obj = map[string]any

func nullable(v int64) any {
	if v == 0 {
		return nil
	}
	return v
}

func nullStr(v string) any {
	if v == "" {
		return nil
	}
	return v
}

func meta(m map[string]string) obj {
	out := obj{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func list(url string, data []any, hasMore bool) obj {
	if data == nil {
		data = []any{}
	}
	return obj{"object": "list", "data": data, "has_more": hasMore, "url": url}
}

// expansion says which references to expand, as "latest_invoice", "customer",
// "items.data.price.product" (a prefix "data." is stripped by list endpoints).
type expansion []string

func (e expansion) has(path string) bool { return slices.Contains(e, path) }

func (e expansion) under(prefix string) expansion {
	var out expansion
	for _, p := range e {
		if rest, ok := strings.CutPrefix(p, prefix+"."); ok {
			out = append(out, rest)
		}
	}
	return out
}

func (s *Sim) renderProduct(p *Product) obj {
	return obj{
		"id": p.ID, "object": "product", "active": true, "created": p.Created, "updated": p.Created,
		"description": nil, "features": []any{}, "images": []any{}, "livemode": false,
		"metadata": meta(p.Metadata), "name": p.Name, "url": nil,
	}
}

func (s *Sim) renderPrice(p *Price, exp expansion) obj {
	var product any = p.Product
	if exp.has("product") {
		if prod, ok := s.products[p.Product]; ok {
			product = s.renderProduct(prod)
		}
	}
	typ, recurring := "recurring", any(obj{"aggregate_usage": aggregateUsage(p), "interval": p.Interval,
		"interval_count": max(p.IntervalCount, 1), "usage_type": usageType(p)})
	if p.OneTime {
		typ, recurring = "one_time", nil
	}
	return obj{
		"id": p.ID, "object": "price", "active": true, "billing_scheme": "per_unit", "created": p.Created,
		"currency": p.Currency, "livemode": false, "lookup_key": nil, "metadata": meta(p.Metadata),
		"nickname": nullStr(p.Nickname), "product": product, "type": typ, "recurring": recurring,
		"tax_behavior": "unspecified", "tiers_mode": nil, "transform_quantity": nil,
		"unit_amount": p.UnitAmount, "unit_amount_decimal": strconv.FormatInt(p.UnitAmount, 10),
	}
}

// aggregateUsage is how a metered price sums its usage records: "sum", Stripe's default.
func aggregateUsage(p *Price) any {
	if p.metered() {
		return "sum"
	}
	return nil
}

func usageType(p *Price) string {
	if p.UsageType == "" {
		return UsageLicensed
	}
	return p.UsageType
}

func (s *Sim) renderCustomer(c *Customer) obj {
	return obj{
		"id": c.ID, "object": "customer", "address": nil, "balance": 0, "created": c.Created, "currency": "usd",
		"default_source": nil, "delinquent": false, "description": nil, "discount": nil, "email": nullStr(c.Email),
		"invoice_prefix": strings.ToUpper(c.ID[4:12]), "livemode": false, "metadata": meta(c.Metadata),
		"name": nullStr(c.Name), "phone": nil, "preferred_locales": []any{}, "shipping": nil, "tax_exempt": "none",
		"test_clock":       nil,
		"invoice_settings": obj{"custom_fields": nil, "default_payment_method": nil, "footer": nil, "rendering_options": nil},
	}
}

func (s *Sim) renderItem(sub *Subscription, it *SubscriptionItem, exp expansion) obj {
	price := s.prices[it.Price]
	item := obj{
		"id": it.ID, "object": "subscription_item", "billing_thresholds": nil, "created": it.Created,
		"metadata": obj{}, "price": s.renderPrice(price, exp.under("price")),
		"quantity": it.Quantity, "subscription": sub.ID, "tax_rates": []any{},
	}
	if price.metered() {
		delete(item, "quantity") // a metered item has no quantity, only usage
	}
	return item
}

// EmbeddedItems is how many items a subscription carries in its own items list; the
// rest are read from GET /v1/subscription_items (a guess: see docs/fidelity.md).
const EmbeddedItems = 20

func renderPause(pc *PauseCollection) any {
	if pc == nil {
		return nil
	}
	return obj{"behavior": pc.Behavior, "resumes_at": nullable(pc.ResumesAt)}
}

func collectionMethod(m string) string {
	if m == "" {
		return ChargeAutomatically
	}
	return m
}

func (s *Sim) renderSubscription(sub *Subscription, exp expansion) obj {
	items := make([]any, 0, min(len(sub.Items), EmbeddedItems))
	for _, it := range sub.Items[:min(len(sub.Items), EmbeddedItems)] {
		items = append(items, s.renderItem(sub, it, exp.under("items.data")))
	}
	var customer any = sub.Customer
	if exp.has("customer") {
		customer = s.renderCustomer(s.customers[sub.Customer])
	}
	var latest any = nullStr(sub.LatestInvoice)
	if exp.has("latest_invoice") && sub.LatestInvoice != "" {
		latest = s.renderInvoice(s.invoices[sub.LatestInvoice], exp.under("latest_invoice"))
	}
	details := obj{"comment": nullStr(sub.CancelComment), "feedback": nullStr(sub.CancelFeedback), "reason": nullStr(sub.CancelReason)}
	var daysUntilDue any
	if sub.CollectionMethod == SendInvoice {
		daysUntilDue = sub.DaysUntilDue
	}
	return obj{
		"id": sub.ID, "object": "subscription", "application": nil, "application_fee_percent": nil,
		"automatic_tax": obj{"enabled": false}, "billing_cycle_anchor": sub.BillingCycleAnchor,
		"billing_thresholds": nil, "cancel_at": nullable(sub.CancelAt), "cancel_at_period_end": sub.CancelAtPeriodEnd,
		"canceled_at": nullable(sub.CanceledAt), "cancellation_details": details,
		"collection_method": collectionMethod(sub.CollectionMethod), "created": sub.Created, "currency": sub.Currency,
		"current_period_end": sub.CurrentPeriodEnd, "current_period_start": sub.CurrentPeriodStart,
		"customer": customer, "days_until_due": daysUntilDue, "default_payment_method": nil, "default_source": nil,
		"default_tax_rates": []any{}, "description": nil, "discount": nil, "ended_at": nullable(sub.EndedAt),
		"items":          list("/v1/subscription_items?subscription="+sub.ID, items, len(sub.Items) > EmbeddedItems),
		"latest_invoice": latest, "livemode": false, "metadata": meta(sub.Metadata), "next_pending_invoice_item_invoice": nil,
		"on_behalf_of": nil, "pause_collection": renderPause(sub.PauseCollection), "payment_settings": obj{"payment_method_options": nil,
			"payment_method_types": nil, "save_default_payment_method": "off"},
		"pending_invoice_item_interval": nil, "pending_setup_intent": nil, "pending_update": nil,
		"schedule": nil, "start_date": sub.StartDate, "status": sub.Status, "test_clock": nil,
		"transfer_data": nil, "trial_end": nullable(sub.TrialEnd), "trial_start": nullable(sub.TrialStart),
		"trial_settings": obj{"end_behavior": obj{"missing_payment_method": "create_invoice"}},
	}
}

func (s *Sim) renderLine(inv *Invoice, l *LineItem, exp expansion) obj {
	price := s.prices[l.Price]
	line := obj{
		"id": l.ID, "object": "line_item", "amount": l.Amount, "amount_excluding_tax": l.Amount,
		"currency": inv.Currency, "description": l.Description, "discount_amounts": []any{}, "discountable": true,
		"discounts": []any{}, "invoice": inv.ID, "livemode": false, "metadata": obj{},
		"period": obj{"end": l.PeriodEnd, "start": l.PeriodStart}, "price": s.renderPrice(price, exp.under("price")),
		"proration": l.Proration, "proration_details": obj{"credited_items": nil}, "quantity": l.Quantity,
		"tax_amounts": []any{}, "tax_rates": []any{}, "type": l.Type,
		"unit_amount_excluding_tax": strconv.FormatInt(price.UnitAmount, 10),
	}
	// These references are not nullable in 2023-10-16: absent rather than null.
	if inv.Subscription != "" {
		line["subscription"] = inv.Subscription
	}
	if l.SubscriptionItem != "" {
		line["subscription_item"] = l.SubscriptionItem
	}
	if l.Type == "invoiceitem" {
		line["invoice_item"] = "ii_" + l.ID[3:]
	}
	return line
}

// EmbeddedLines is how many lines an invoice carries in its own lines list; the rest
// are read from GET /v1/invoices/{id}/lines, as Stripe's invoices embed 10.
const EmbeddedLines = 10

func (s *Sim) renderInvoice(inv *Invoice, exp expansion) obj {
	lines := make([]any, 0, min(len(inv.Lines), EmbeddedLines))
	for _, l := range inv.Lines[:min(len(inv.Lines), EmbeddedLines)] {
		lines = append(lines, s.renderLine(inv, l, exp.under("lines.data")))
	}
	total := inv.Total()
	remaining := total - inv.AmountPaid
	if inv.Status == "paid" || inv.Status == "void" || inv.Status == "uncollectible" {
		remaining = 0
	}
	var subscription any = nullStr(inv.Subscription)
	if exp.has("subscription") && inv.Subscription != "" {
		subscription = s.renderSubscription(s.subs[inv.Subscription], nil)
	}
	var charge any = nullStr(inv.Charge)
	if c, ok := s.charges[inv.Charge]; ok && exp.has("charge") {
		charge = s.renderCharge(c)
	}
	var subDetails any
	if sub, ok := s.subs[inv.Subscription]; ok {
		subDetails = obj{"metadata": meta(sub.Metadata)}
	}
	cust := s.customers[inv.Customer]
	return obj{
		"id": inv.ID, "object": "invoice", "account_country": "US", "account_name": "keysync sandbox",
		"account_tax_ids": nil, "amount_due": total, "amount_paid": inv.AmountPaid, "amount_remaining": remaining,
		"amount_shipping": 0, "application": nil, "application_fee_amount": nil, "attempt_count": inv.AttemptCount,
		"attempted": inv.Attempted, "auto_advance": (inv.Status == "draft" && inv.pause != PauseKeepAsDraft) || inv.Status == "open",
		"automatic_tax": obj{"enabled": false, "status": nil}, "billing_reason": inv.BillingReason,
		"charge": charge, "collection_method": collectionMethod(inv.CollectionMethod), "created": inv.Created,
		"currency": inv.Currency, "custom_fields": nil, "customer": inv.Customer, "customer_address": nil,
		"customer_email": nullStr(cust.Email), "customer_name": nullStr(cust.Name), "customer_phone": nil,
		"customer_shipping": nil, "customer_tax_exempt": "none", "customer_tax_ids": []any{},
		"default_payment_method": nil, "default_source": nil, "default_tax_rates": []any{}, "description": nil,
		"discount": nil, "discounts": []any{}, "due_date": nullable(inv.DueDate), "effective_at": nullable(inv.FinalizedAt),
		"ending_balance": endingBalance(inv), "footer": nil, "from_invoice": nil,
		"hosted_invoice_url": hostedURL(inv), "invoice_pdf": pdfURL(inv), "issuer": obj{"type": "self"},
		"last_finalization_error": nil, "latest_revision": nil,
		"lines":    list("/v1/invoices/"+inv.ID+"/lines", lines, len(inv.Lines) > EmbeddedLines),
		"livemode": false, "metadata": obj{}, "next_payment_attempt": nullable(inv.NextPaymentAttempt),
		"number": invoiceNumber(inv), "on_behalf_of": nil, "paid": inv.Paid, "paid_out_of_band": inv.PaidOutOfBand,
		"payment_intent": nil, "payment_settings": obj{"default_mandate": nil, "payment_method_options": nil,
			"payment_method_types": nil},
		"period_end": inv.PeriodEnd, "period_start": inv.PeriodStart, "post_payment_credit_notes_amount": 0,
		"pre_payment_credit_notes_amount": 0, "quote": nil, "receipt_number": nil, "rendering": nil,
		"shipping_cost": nil, "shipping_details": nil, "starting_balance": 0, "statement_descriptor": nil,
		"status":               inv.Status,
		"status_transitions":   obj{"finalized_at": nullable(inv.FinalizedAt), "marked_uncollectible_at": nullable(inv.MarkedUncollectibleAt), "paid_at": nullable(inv.PaidAt), "voided_at": nullable(inv.VoidedAt)},
		"subscription":         subscription,
		"subscription_details": subDetails,
		"subtotal":             total, "subtotal_excluding_tax": total, "tax": nil, "test_clock": nil,
		"total": total, "total_discount_amounts": []any{}, "total_excluding_tax": total, "total_tax_amounts": []any{},
		"transfer_data": nil, "webhooks_delivered_at": nullable(inv.Created),
	}
}

func endingBalance(inv *Invoice) any {
	if inv.Status == "draft" {
		return nil
	}
	return 0
}

func hostedURL(inv *Invoice) any {
	if inv.Status == "draft" {
		return nil
	}
	return "https://invoice.stripe.com/i/sandbox/" + inv.ID
}

func pdfURL(inv *Invoice) any {
	if inv.Status == "draft" {
		return nil
	}
	return "https://pay.stripe.com/invoice/sandbox/" + inv.ID + "/pdf"
}

func invoiceNumber(inv *Invoice) any {
	if inv.Status == "draft" {
		return nil
	}
	return strings.ToUpper(inv.ID[3:11]) + "-0001"
}

func (s *Sim) renderCharge(c *Charge) obj {
	refunds := []any{}
	for _, r := range s.sortedRefunds(c.ID) {
		refunds = append(refunds, s.renderRefund(r))
	}
	var outcome any
	switch c.Status {
	case "succeeded":
		outcome = obj{"network_status": "approved_by_network", "reason": nil, "risk_level": "normal",
			"seller_message": "Payment complete.", "type": "authorized"}
	case "pending":
		outcome = nil // an asynchronous payment has no outcome until it settles
	default:
		outcome = obj{"network_status": "declined_by_network", "reason": "generic_decline", "risk_level": "normal",
			"seller_message": "The bank did not return any further details with this decline.", "type": "issuer_declined"}
	}
	return obj{
		"id": c.ID, "object": "charge", "amount": c.Amount, "amount_captured": captured(c), "amount_refunded": c.AmountRefunded,
		"application": nil, "application_fee": nil, "application_fee_amount": nil, "balance_transaction": nil,
		"billing_details": obj{"address": nil, "email": nil, "name": nil, "phone": nil}, "calculated_statement_descriptor": "KEYSYNC SANDBOX",
		"captured": c.Status != "failed", "created": c.Created, "currency": c.Currency, "customer": nullStr(c.Customer),
		"description": chargeDescription(c), "disputed": c.Disputed, "failure_balance_transaction": nil,
		"failure_code": nullStr(c.FailureCode), "failure_message": nullStr(c.FailureMessage), "fraud_details": obj{},
		"invoice": nullStr(c.Invoice), "livemode": false, "metadata": obj{}, "on_behalf_of": nil, "outcome": outcome,
		"paid": c.Paid, "payment_intent": nullStr(c.PaymentIntent), "payment_method": nil, "receipt_email": nil, "receipt_number": nil,
		"receipt_url": nil, "refunded": c.Refunded, "refunds": list("/v1/charges/"+c.ID+"/refunds", refunds, false),
		"review": nil, "shipping": nil, "source_transfer": nil, "statement_descriptor": nil,
		"statement_descriptor_suffix": nil, "status": c.Status, "transfer_data": nil, "transfer_group": nil,
	}
}

func chargeDescription(c *Charge) any {
	if c.Invoice != "" {
		return "Subscription update"
	}
	return nil
}

func captured(c *Charge) int64 {
	if c.Status == "succeeded" {
		return c.Amount
	}
	return 0
}

func (s *Sim) sortedRefunds(chargeID string) []*Refund {
	var out []*Refund
	for _, r := range s.refunds {
		if r.Charge == chargeID {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *Refund) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (s *Sim) renderRefund(r *Refund) obj {
	return obj{
		"id": r.ID, "object": "refund", "amount": r.Amount, "balance_transaction": nil, "charge": r.Charge,
		"created": r.Created, "currency": "usd", "metadata": obj{}, "payment_intent": nil, "reason": "requested_by_customer",
		"receipt_number": nil, "source_transfer_reversal": nil, "status": "succeeded", "transfer_reversal": nil,
	}
}

func (s *Sim) renderDispute(d *Dispute) obj {
	return obj{
		"id": d.ID, "object": "dispute", "amount": d.Amount, "balance_transactions": []any{}, "charge": d.Charge,
		"created": d.Created, "currency": "usd", "evidence": obj{"customer_email_address": nil, "uncategorized_text": nil},
		"evidence_details":     obj{"due_by": d.Created + int64(7*day/1e9), "has_evidence": false, "past_due": false, "submission_count": 0},
		"is_charge_refundable": false, "livemode": false, "metadata": obj{}, "payment_intent": nil,
		"reason": d.Reason, "status": d.Status,
	}
}

func (s *Sim) renderSession(cs *CheckoutSession) obj {
	var amountSubtotal, amountTotal, paymentIntent, invoiceCreation any
	customerCreation := "always"
	if cs.Mode == ModePayment {
		amountSubtotal, amountTotal, paymentIntent = cs.Total(), cs.Total(), nullStr(cs.PaymentIntent)
		invoiceCreation = obj{"enabled": cs.InvoiceCreation, "invoice_data": obj{"account_tax_ids": nil, "custom_fields": nil,
			"description": nil, "footer": nil, "metadata": obj{}, "rendering_options": nil}}
		if cs.Customer == "" {
			customerCreation = "if_required"
		}
	}
	return obj{
		"id": cs.ID, "object": "checkout.session", "after_expiration": nil, "allow_promotion_codes": nil,
		"amount_subtotal": amountSubtotal, "amount_total": amountTotal, "automatic_tax": obj{"enabled": false, "status": nil},
		"billing_address_collection": nil, "cancel_url": "https://example.com/cancel",
		"client_reference_id": nullStr(cs.ClientReferenceID), "consent": nil, "consent_collection": nil,
		"created": cs.Created, "currency": "usd", "custom_fields": []any{},
		"custom_text": obj{"after_submit": nil, "shipping_address": nil, "submit": nil, "terms_of_service_acceptance": nil},
		"customer":    nullStr(cs.Customer), "customer_creation": customerCreation,
		"customer_details": obj{"address": nil, "email": nullStr(cs.Email), "name": nullStr(cs.Name), "phone": nil, "tax_exempt": "none", "tax_ids": []any{}},
		"customer_email":   nil, "expires_at": cs.Created + 86400, "invoice": nullStr(cs.Invoice), "invoice_creation": invoiceCreation,
		"livemode": false, "locale": nil, "metadata": meta(cs.Metadata), "mode": sessionMode(cs), "payment_intent": paymentIntent,
		"payment_link": nil, "payment_method_collection": "always", "payment_method_types": []any{"card"},
		"payment_status": cs.PaymentStatus, "recovered_from": nil, "setup_intent": nil, "shipping_address_collection": nil,
		"shipping_cost": nil, "shipping_details": nil, "shipping_options": []any{}, "status": sessionStatus(cs),
		"submit_type": nil, "subscription": nullStr(cs.Subscription), "success_url": "https://example.com/success", "total_details": nil,
		"ui_mode": "hosted", "url": nil,
	}
}

func sessionMode(cs *CheckoutSession) string {
	if cs.Mode == "" {
		return ModeSubscription
	}
	return cs.Mode
}

func sessionStatus(cs *CheckoutSession) string {
	if cs.Status == "" {
		return SessionComplete
	}
	return cs.Status
}

// renderSessionLine renders a Checkout Session's line item (the spec's "item").
func (s *Sim) renderSessionLine(l *SessionLine, exp expansion) obj {
	price := s.prices[l.Price]
	return obj{
		"id": l.ID, "object": "item", "amount_discount": 0, "amount_subtotal": l.Amount, "amount_tax": 0,
		"amount_total": l.Amount, "currency": price.Currency, "description": s.products[price.Product].Name,
		"price": s.renderPrice(price, exp.under("price")), "quantity": nullable(l.Quantity),
	}
}
