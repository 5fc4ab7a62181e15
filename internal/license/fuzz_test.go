package license_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/keysync/keysync/internal/license"
)

// errPrefix is what every ParsePlans error starts with: the file's name, and the line
// when the fault is on one (a YAML syntax error carries its own line in its text).
var errPrefix = regexp.MustCompile(`^plans\.yaml(:[1-9][0-9]*)?: `)

// FuzzParsePlans feeds random files to the plans parser. Invariants: no panic; every
// error names the file (and the line when it has one) and is a single line; a file that
// parses yields plans a Resolve can use: a product id, features within F1..F8, machine
// rules that are not negative; parsing is deterministic.
func FuzzParsePlans(f *testing.F) {
	f.Add("plans:\n  - price: price_a\n    features: [1, 3]\n    machines_per_seat: 2\n", 0)
	f.Add("plans:\n  - product: prod_a\n    cryptolens_product: 7\n    machines: 1\n    buffer_days: 3\n", 0)
	f.Add("plans:\n  - default: true\n    features: [8]\n", 1001)
	f.Add("plans:\n  - price: price_a\n  - price: price_a\n", 5)
	f.Add("plans: [\n", 0)
	f.Add("plans:\n  - price: price_a\n    features: [0, 9, -1]\n", 1)
	f.Add("plans:\n  - {price: price_a, machines: 99999999999999999999}\n", 1)
	f.Add("plans: &a\n  - *a\n", 1)
	f.Add("- a\n- b\n", 1)
	f.Add("", 0)
	f.Fuzz(func(t *testing.T, data string, defaultProduct int) {
		m, err := license.ParsePlans("plans.yaml", []byte(data), defaultProduct)
		if err != nil {
			msg := err.Error()
			if !errPrefix.MatchString(msg) {
				t.Fatalf("error does not name the file: %q", msg)
			}
			if m != nil {
				t.Fatalf("an error and a mapping: %v", err)
			}
			return
		}
		again, err := license.ParsePlans("plans.yaml", []byte(data), defaultProduct)
		if err != nil || again.Entries() != m.Entries() {
			t.Fatalf("parse is not deterministic: %v, %d vs %d entries", err, again.Entries(), m.Entries())
		}
		for _, p := range m.Products() {
			if p <= 0 {
				t.Fatalf("product %d from a file that parsed", p)
			}
		}
		for _, id := range priceIDs(data) {
			p, ok, err := m.Resolve(license.Item{PriceID: id, Quantity: 3})
			if err != nil || !ok {
				continue
			}
			if p.ProductID <= 0 {
				t.Fatalf("price %s resolves to product %d", id, p.ProductID)
			}
			for feat := range p.Features {
				if feat < 1 || feat > 8 {
					t.Fatalf("price %s resolves to feature %d", id, feat)
				}
			}
			if r := p.Machines; r != nil && (r.Fixed < 0 || r.PerSeat < 0) {
				t.Fatalf("price %s: negative machine rule %+v", id, *r)
			}
			if b := p.BufferDays; b != nil && *b < 0 {
				t.Fatalf("price %s: negative buffer %d", id, *b)
			}
		}
	})
}

// priceIDs returns the words of data that look like price ids, so that Resolve is
// asked about the plans the file defines.
func priceIDs(data string) []string {
	var out []string
	for _, w := range strings.FieldsFunc(data, func(r rune) bool { return r == ' ' || r == '\n' || r == ',' || r == '{' || r == '}' }) {
		if strings.HasPrefix(w, "price_") {
			out = append(out, w)
		}
	}
	return out
}
