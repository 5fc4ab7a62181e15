package stripesim

// Objects are kept and rendered in API version 2023-10-16; a newer version is a
// transform of that rendering, so both versions always tell the same story. The
// transform to 2025-03-31.basil follows stripe-go v82.0.0 (pinned to basil): every field
// its structs lost since v76.25.0 (pinned to 2023-10-16) is removed, and the fields they
// gained that the simulator can fill are added (docs/fidelity.md, "Newer event versions").

// convert renders v (an object as the renderers build it, or a list of them) in version.
// 2023-10-16 is returned as it is; any other version gets a converted deep copy.
func convert(version string, v any) any {
	if version != VersionBasil {
		return v
	}
	return toBasil(deepCopy(v))
}

// convertPrevious renders an event's previous_attributes in version. object is the
// event's object in 2023-10-16. In basil the billing period lives on the subscription's
// items, so a period change shows as the items with their old periods.
func convertPrevious(version string, object, previous obj) obj {
	if version != VersionBasil || previous == nil {
		return previous
	}
	prev := toBasil(deepCopy(previous)).(obj)
	if object["object"] != "subscription" {
		return prev
	}
	start, startMoved := prev["current_period_start"]
	end, endMoved := prev["current_period_end"]
	_, itemsChanged := prev["items"]
	if !startMoved && !endMoved && !itemsChanged {
		return prev
	}
	if !startMoved {
		start = object["current_period_start"]
	}
	if !endMoved {
		end = object["current_period_end"]
	}
	delete(prev, "current_period_start")
	delete(prev, "current_period_end")
	items, ok := prev["items"].(obj)
	if !ok {
		items = toBasil(deepCopy(object["items"])).(obj)
	}
	for _, it := range items["data"].([]any) {
		it.(obj)["current_period_start"], it.(obj)["current_period_end"] = start, end
	}
	prev["items"] = items
	return prev
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case obj:
		out := make(obj, len(x))
		for k, c := range x {
			out[k] = deepCopy(c)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, c := range x {
			out[i] = deepCopy(c)
		}
		return out
	default:
		return v
	}
}

// toBasil converts v in place, innermost objects first: an invoice's lines are
// converted before the invoice, a subscription's items before the subscription.
func toBasil(v any) any {
	switch x := v.(type) {
	case []any:
		for i := range x {
			x[i] = toBasil(x[i])
		}
	case obj:
		for k, c := range x {
			x[k] = toBasil(c)
		}
		switch x["object"] {
		case "invoice":
			basilInvoice(x)
		case "line_item":
			basilLine(x)
		case "subscription":
			basilSubscription(x)
		case "subscription_item":
			delete(x, "billing_thresholds")
		case "charge":
			// basil: "Removed the invoice field from the PaymentIntent and Charge objects."
			delete(x, "invoice")
		case "price":
			if r, ok := x["recurring"].(obj); ok {
				delete(r, "aggregate_usage")
				r["meter"] = nil
			}
		case "checkout.session":
			delete(x, "shipping_details")
		case "product":
			delete(x, "features")
			x["marketing_features"] = []any{}
		case "dispute":
			x["enhanced_eligibility_types"] = []any{}
		}
	}
	return v
}

// basilInvoice moves the subscription under parent.subscription_details and drops the
// payment fields basil removed (an invoice's payments are InvoicePayment objects there).
func basilInvoice(x obj) {
	var parent any
	if sub := x["subscription"]; sub != nil {
		metadata := any(obj{})
		if d, ok := x["subscription_details"].(obj); ok {
			metadata = d["metadata"]
		}
		parent = obj{"type": "subscription_details", "quote_details": nil,
			"subscription_details": obj{"metadata": metadata, "subscription": sub, "subscription_proration_date": nil}}
	}
	x["parent"] = parent
	for _, k := range []string{"application_fee_amount", "charge", "discount", "paid", "paid_out_of_band", "payment_intent",
		"quote", "rendering_options", "subscription", "subscription_details", "subscription_proration_date", "tax",
		"total_tax_amounts", "transfer_data"} {
		delete(x, k)
	}
	x["amount_overpaid"] = 0
	x["automatically_finalizes_at"] = nil
	x["confirmation_secret"] = nil
	x["total_pretax_credit_amounts"] = []any{}
	x["total_taxes"] = []any{}
}

// basilLine moves a line's origin under parent and its price under pricing.
func basilLine(x obj) {
	details := obj{"invoice_item": x["invoice_item"], "proration": x["proration"],
		"proration_details": x["proration_details"], "subscription": x["subscription"]}
	parent := obj{"type": "invoice_item_details", "invoice_item_details": details, "subscription_item_details": nil}
	if item, ok := x["subscription_item"]; ok {
		details["subscription_item"] = item
		parent = obj{"type": "subscription_item_details", "invoice_item_details": nil, "subscription_item_details": details}
	}
	x["parent"] = parent
	var pricing any
	if price, ok := x["price"].(obj); ok {
		product := price["product"]
		if p, ok := product.(obj); ok {
			product = p["id"]
		}
		pricing = obj{"type": "price_details", "price_details": obj{"price": price["id"], "product": product},
			"unit_amount_decimal": price["unit_amount_decimal"]}
	}
	x["pricing"] = pricing
	for _, k := range []string{"amount_excluding_tax", "invoice_item", "plan", "price", "proration", "proration_details",
		"subscription_item", "tax_amounts", "tax_rates", "type", "unit_amount_excluding_tax"} {
		delete(x, k)
	}
	x["pretax_credit_amounts"] = []any{}
	x["taxes"] = []any{}
}

// basilSubscription moves the billing period onto every item.
func basilSubscription(x obj) {
	start, end := x["current_period_start"], x["current_period_end"]
	if items, ok := x["items"].(obj); ok {
		for _, it := range items["data"].([]any) {
			it.(obj)["current_period_start"], it.(obj)["current_period_end"] = start, end
		}
	}
	for _, k := range []string{"billing_thresholds", "current_period_end", "current_period_start", "discount"} {
		delete(x, k)
	}
	x["invoice_settings"] = obj{"account_tax_ids": nil, "issuer": obj{"type": "self"}}
}

// setLivemode marks an object and everything in it as live-mode.
func setLivemode(v any) {
	switch x := v.(type) {
	case obj:
		if _, ok := x["livemode"]; ok {
			x["livemode"] = true
		}
		for _, c := range x {
			setLivemode(c)
		}
	case []any:
		for _, c := range x {
			setLivemode(c)
		}
	}
}
