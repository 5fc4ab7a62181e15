package stripeapi

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stripe/stripe-mock/embedded"
)

// stripe-mock does not validate expansions, so each path keysync expands is checked
// against the 2023-10-16 spec's x-expandableFields here, with Stripe's depth limit of 4.
func TestExpansionsExistInSpec(t *testing.T) {
	t.Parallel()
	var spec struct {
		Components struct {
			Schemas map[string]json.RawMessage `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(embedded.OpenAPISpec, &spec); err != nil {
		t.Fatal(err)
	}
	type schema struct {
		Ref        string                     `json:"$ref"`
		AnyOf      []schema                   `json:"anyOf"`
		Items      *schema                    `json:"items"`
		Properties map[string]json.RawMessage `json:"properties"`
		Expandable []string                   `json:"x-expandableFields"`
	}
	load := func(raw json.RawMessage) schema {
		var s schema
		_ = json.Unmarshal(raw, &s)
		return s
	}
	var resolve func(s schema) schema
	resolve = func(s schema) schema {
		if s.Ref != "" {
			return resolve(load(spec.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]))
		}
		for _, a := range s.AnyOf { // an expandable reference: anyOf [id string, object]
			if a.Ref != "" {
				return resolve(a)
			}
		}
		return s
	}
	check := func(root, path string) error {
		segs := strings.Split(path, ".")
		if len(segs) > 4 {
			return fmt.Errorf("%s.%s: deeper than Stripe's 4 levels", root, path)
		}
		cur := resolve(load(spec.Components.Schemas[root]))
		for i, seg := range segs {
			if seg == "data" && cur.Items == nil { // a list object: step into its items
				cur = resolve(load(cur.Properties["data"]))
			}
			if seg == "data" {
				cur = resolve(*cur.Items)
				continue
			}
			if i == len(segs)-1 && !contains(cur.Expandable, seg) {
				return fmt.Errorf("%s: %q is not expandable in 2023-10-16", path, seg)
			}
			raw, ok := cur.Properties[seg]
			if !ok {
				return fmt.Errorf("%s: no field %q in 2023-10-16", path, seg)
			}
			cur = resolve(load(raw))
		}
		return nil
	}
	// The sweep's data.latest_invoice; GetPrice; PaidInvoices' data.charge.
	ours := [][2]string{{"subscription", "latest_invoice"}, {"price", "product"}, {"invoice", "charge"}}
	for _, p := range subscriptionExpand {
		ours = append(ours, [2]string{"subscription", *p})
	}
	for _, p := range itemsExpand { // a list of subscription items
		ours = append(ours, [2]string{"subscription_item", strings.TrimPrefix(*p, "data.")})
	}
	// A purchase's invoice, and its lines and a session's line items as lists.
	for _, p := range purchaseInvoiceExpand {
		ours = append(ours, [2]string{"invoice", *p})
	}
	for _, p := range purchaseLinesExpand {
		ours = append(ours, [2]string{"line_item", strings.TrimPrefix(*p, "data.")}, [2]string{"item", strings.TrimPrefix(*p, "data.")})
	}
	for _, o := range ours {
		if err := check(o[0], o[1]); err != nil {
			t.Error(err)
		}
	}
	// The check must be able to fail.
	for _, bad := range []string{"items.data.price.not_a_field", "plan", "items.data.price.product.default_price.product"} {
		if check("subscription", bad) == nil {
			t.Errorf("%s: got nil error, want a refusal", bad)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
