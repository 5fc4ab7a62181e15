package license_test

import (
	"reflect"
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
		// Product 0 is no product: it must not fall through to CRYPTOLENS_PRODUCT_ID.
		"product 0":         {"plans:\n  - price: price_a\n    cryptolens_product: 0\n", "plans.yaml:3: cryptolens_product must be a Cryptolens product id"},
		"feature 0":         {"plans:\n  - price: price_a\n    cryptolens_product: 1\n    features: [0]\n", "plans.yaml:4: feature 0 does not exist"},
		"negative machines": {"plans:\n  - price: price_a\n    cryptolens_product: 1\n    machines: -1\n", "plans.yaml:4: machines must be"},
		"negative buffer":   {"plans:\n  - price: price_a\n    cryptolens_product: 1\n    buffer_days: -1\n", "plans.yaml:4: buffer_days must be"},
		"buffer past 365":   {"plans:\n  - price: price_a\n    cryptolens_product: 1\n    buffer_days: 366\n", "plans.yaml:4: buffer_days must be"},
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

// TestParsePlansEdges reads the edge values a plans file may hold: each must be
// accepted and kept as written, not rejected or changed by an off-by-one.
func TestParsePlansEdges(t *testing.T) {
	t.Parallel()
	intp := func(n int) *int { return &n }
	tests := map[string]struct {
		settings string
		want     license.Plan
	}{
		"features 1 and 8": {"features: [1, 8]", license.Plan{Features: map[int]bool{1: true, 8: true}}},
		"no machines":      {"machines: 0", license.Plan{Machines: &license.MachineRule{}}},
		"no seat machines": {"machines_per_seat: 0", license.Plan{Machines: &license.MachineRule{}}},
		"both machine rules": {"machines: 2\n    machines_per_seat: 3",
			license.Plan{Machines: &license.MachineRule{Fixed: 2, PerSeat: 3}}},
		"no buffer":       {"buffer_days: 0", license.Plan{BufferDays: intp(0)}},
		"a year's buffer": {"buffer_days: 365", license.Plan{BufferDays: intp(365)}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m, err := license.ParsePlans("plans.yaml", []byte("plans:\n  - price: price_a\n    "+tc.settings+"\n"), 7)
			if err != nil {
				t.Fatalf("got %v, want no error", err)
			}
			got, ok, err := m.Resolve(license.Item{PriceID: "price_a"})
			want := tc.want
			want.ProductID, want.Source = 7, "plans.yaml:2"
			if want.Features == nil {
				want.Features = map[int]bool{}
			}
			if err != nil || !ok || !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v (mapped %v, %v), want %+v", got, ok, err, want)
			}
		})
	}
}

// TestSKMMetadata reads the hosted module's price metadata: which keys are features,
// which values are accepted, and which are refused rather than guessed at.
func TestSKMMetadata(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		skm       string
		productID string // product metadata skm_product_id
		want      license.Plan
		wantErr   string
	}{
		"F1 and f8, either case": {skm: `{"F1":true,"f8":false}`, want: license.Plan{ProductID: 99, Features: map[int]bool{1: true, 8: false}}},
		"F0, F9 and F10 are not features": {skm: `{"F0":true,"F9":true,"F10":true,"xF1":true}`,
			want: license.Plan{ProductID: 99, Features: map[int]bool{}}},
		"no machines":            {skm: `{"MaxNoOfMachines":0}`, want: license.Plan{ProductID: 99, Features: map[int]bool{}, Machines: &license.MachineRule{}}},
		"machines":               {skm: `{"maxnoofmachines":3}`, want: license.Plan{ProductID: 99, Features: map[int]bool{}, Machines: &license.MachineRule{Fixed: 3}}},
		"its ProductId":          {skm: `{"productid":40}`, productID: "50", want: license.Plan{ProductID: 40, Features: map[int]bool{}}},
		"product metadata":       {skm: `{}`, productID: " 50 ", want: license.Plan{ProductID: 50, Features: map[int]bool{}}},
		"negative machines":      {skm: `{"MaxNoOfMachines":-1}`, wantErr: "price price_x: metadata skm: MaxNoOfMachines must be"},
		"ProductId 0":            {skm: `{"ProductId":0}`, wantErr: "price price_x: metadata skm: ProductId must be"},
		"feature not a boolean":  {skm: `{"F2":1}`, wantErr: "price price_x: metadata skm: F2 must be true or false"},
		"not an object":          {skm: `[1]`, wantErr: "price price_x: metadata skm: not a JSON object"},
		"skm_product_id 0":       {skm: `{}`, productID: "0", wantErr: `product prod_x: metadata skm_product_id "0" is not`},
		"skm_product_id a word":  {productID: "pro", wantErr: `product prod_x: metadata skm_product_id "pro" is not`},
		"skm_product_id 0 alone": {productID: "0", wantErr: `product prod_x: metadata skm_product_id "0" is not`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			it := license.Item{PriceID: "price_x", ProductID: "prod_x"}
			if tc.skm != "" {
				it.PriceMetadata = map[string]string{"skm": tc.skm}
			}
			if tc.productID != "" {
				it.ProductMetadata = map[string]string{"skm_product_id": tc.productID}
			}
			got, ok, err := license.NewMapping(99).Resolve(it)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			want := tc.want
			want.Source = "price price_x metadata skm"
			if err != nil || !ok || !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v (mapped %v, %v), want %+v", got, ok, err, want)
			}
		})
	}
}

func TestEntriesAndProducts(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		yaml     string
		entries  int
		products []int
	}{
		"no entries":     {"plans: []\n", 0, []int{99}},
		"prices only":    {"plans:\n  - price: price_a\n  - price: price_b\n    cryptolens_product: 3\n", 2, []int{3, 99}},
		"products only":  {"plans:\n  - product: prod_a\n    cryptolens_product: 4\n", 1, []int{4, 99}},
		"catch-all only": {"plans:\n  - default: true\n    cryptolens_product: 5\n", 1, []int{5, 99}},
		"all three":      {"plans:\n  - price: price_a\n  - product: prod_a\n    cryptolens_product: 4\n  - product: prod_b\n  - default: true\n    cryptolens_product: 5\n", 4, []int{4, 5, 99}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m, err := license.ParsePlans("plans.yaml", []byte(tc.yaml), 99)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Entries(); got != tc.entries {
				t.Errorf("got %d entries, want %d", got, tc.entries)
			}
			if got := m.Products(); !reflect.DeepEqual(got, tc.products) {
				t.Errorf("got products %v, want %v", got, tc.products)
			}
		})
	}
}
