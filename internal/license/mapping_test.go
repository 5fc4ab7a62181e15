package license_test

import (
	"strings"
	"testing"

	"github.com/keysync/keysync/internal/license"
)

func TestParsePlansErrorsNameTheLine(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		yaml string
		want string
	}{
		"feature 9":       {"plans:\n  - price: price_a\n    features: [1, 9]\n", "plans.yaml:3: feature 9 does not exist"},
		"unknown setting": {"plans:\n  - price: price_a\n    feature: [1]\n", `plans.yaml:3: unknown setting "feature"`},
		"not a price id":  {"plans:\n  - price: prod_a\n", `plans.yaml:2: price "prod_a" is not a Stripe price id`},
		"two keys":        {"plans:\n  - price: price_a\n    product: prod_a\n", "plans.yaml:2: a plan names exactly one of"},
		"no product":      {"plans:\n  - price: price_a\n", "set cryptolens_product or CRYPTOLENS_PRODUCT_ID"},
		"duplicate":       {"plans:\n  - price: price_a\n    cryptolens_product: 1\n  - price: price_a\n    cryptolens_product: 1\n", "plans.yaml:4: price_a is mapped twice (first on line 2)"},
		"negative seats":  {"plans:\n  - price: price_a\n    cryptolens_product: 1\n    machines_per_seat: -1\n", "plans.yaml:4: machines_per_seat must be"},
		"bad yaml":        {"plans: [\n", "plans.yaml"},
		"top-level typo":  {"plan:\n  - price: price_a\n", `plans.yaml:1: unknown key "plan"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := license.ParsePlans("plans.yaml", []byte(tc.yaml), 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestMappingPrecedence(t *testing.T) {
	t.Parallel()
	m, err := license.ParsePlans("plans.yaml", []byte(`
plans:
  - price: price_file
    cryptolens_product: 10
  - product: prod_file
    cryptolens_product: 20
  - default: true
    cryptolens_product: 30
`), 99)
	if err != nil {
		t.Fatal(err)
	}
	skm := map[string]string{"skm": `{"F3":true,"F4":false,"MaxNoOfMachines":1,"ProductId":40,"Notes":"x"}`}
	tests := map[string]struct {
		item    license.Item
		product int
	}{
		"file price beats everything": {license.Item{PriceID: "price_file", ProductID: "prod_file", PriceMetadata: skm}, 10},
		"file product beats skm":      {license.Item{PriceID: "price_x", ProductID: "prod_file", PriceMetadata: skm}, 20},
		"skm with its ProductId":      {license.Item{PriceID: "price_x", ProductID: "prod_x", PriceMetadata: skm}, 40},
		"skm, product metadata":       {license.Item{PriceID: "price_x", ProductID: "prod_x", PriceMetadata: map[string]string{"skm": `{"F1":true}`}, ProductMetadata: map[string]string{"skm_product_id": "50"}}, 50},
		"skm, default product":        {license.Item{PriceID: "price_x", ProductID: "prod_x", PriceMetadata: map[string]string{"skm": `{"F1":true}`}}, 99},
		"skm_product_id alone":        {license.Item{PriceID: "price_x", ProductID: "prod_x", ProductMetadata: map[string]string{"skm_product_id": "60"}}, 60},
		"catch-all":                   {license.Item{PriceID: "price_x", ProductID: "prod_x"}, 30},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, ok, err := m.Resolve(tc.item)
			if err != nil || !ok || p.ProductID != tc.product {
				t.Fatalf("got product %d (mapped %v, %v), want %d", p.ProductID, ok, err, tc.product)
			}
		})
	}
	p, _, _ := m.Resolve(license.Item{PriceID: "price_x", PriceMetadata: skm})
	if p.Features[3] != true || p.Features[4] != false || len(p.Features) != 2 || p.Machines.Fixed != 1 {
		t.Fatalf("skm plan: got %+v, want F3 on, F4 off (both managed), 1 machine", p)
	}
	// Without a plans file: only metadata maps; CRYPTOLENS_PRODUCT_ID alone maps nothing.
	bare := license.NewMapping(99)
	if _, ok, _ := bare.Resolve(license.Item{PriceID: "price_x", ProductID: "prod_x"}); ok {
		t.Fatal("CRYPTOLENS_PRODUCT_ID alone mapped a price")
	}
	if _, _, err := bare.Resolve(license.Item{PriceID: "price_x", PriceMetadata: map[string]string{"skm": `{"F1":"yes"}`}}); err == nil {
		t.Fatal("malformed skm: got nil error")
	}
}
