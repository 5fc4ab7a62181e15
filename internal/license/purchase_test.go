package license_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/keysync/keysync/internal/license"
)

// purchasePlans maps two one-time prices to product 1001 and one to product 2002.
func purchasePlans(t *testing.T) *license.Mapping {
	t.Helper()
	m, err := license.ParsePlans("plans.yaml", []byte(`
plans:
  - price: price_app
    features: [2]
    machines_per_seat: 2
    perpetual: true
  - price: price_addon
    features: [3]
    machines: 1
  - price: price_other
    cryptolens_product: 2002
    features: [4]
    perpetual: true
`), 1001)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RequireTimeLimited(1); err != nil {
		t.Fatal(err)
	}
	return m
}

// A purchase gets one perpetual key per Cryptolens product: features the union of the
// product's items, machines per seat × quantity summed, the time-limited feature managed
// and off, no expiry; nothing before it is paid.
func TestDesirePurchase(t *testing.T) {
	t.Parallel()
	m := purchasePlans(t)
	p := license.Purchase{ID: "cs_1", Paid: true, Items: []license.Item{
		{PriceID: "price_app", Quantity: 3, OneTime: true},
		{PriceID: "price_tshirt", Quantity: 1, OneTime: true}, // unmapped: needs no license
		{PriceID: "price_other", Quantity: 1, OneTime: true},
		{PriceID: "price_addon", Quantity: 2, OneTime: true},
	}}
	got, err := license.DesirePurchase(p, m, license.Options{BufferDays: 5, TimeLimitedFeature: 1})
	if err != nil {
		t.Fatal(err)
	}
	machines := 3*2 + 1 // two a seat × 3, and the add-on's fixed one
	want := []license.Desired{
		{Mapped: true, ProductID: 1001, NeedKey: true, Perpetual: true, Features: map[int]bool{1: false, 2: true, 3: true},
			Machines: &machines, Sources: []string{"plans.yaml:3", "plans.yaml:7"}},
		{Mapped: true, ProductID: 2002, NeedKey: true, Perpetual: true, Features: map[int]bool{1: false, 4: true},
			Sources: []string{"plans.yaml:10"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	for _, d := range got {
		acts := license.Actions(d, license.Key{}, license.State{}, now)
		if len(acts) != 1 || acts[0].Kind != license.CreateKey || acts[0].Days != 0 || acts[0].Features[0] {
			t.Fatalf("product %d: got %+v, want one create_key with no period and F1 off", d.ProductID, acts)
		}
	}

	p.Paid = false
	got, _ = license.DesirePurchase(p, m, license.Options{TimeLimitedFeature: 1})
	if len(got) != 2 || got[0].NeedKey || len(license.Actions(got[0], license.Key{}, license.State{}, now)) != 0 {
		t.Fatalf("unpaid: got %+v, want two products and no key yet", got)
	}
	if got, err := license.DesirePurchase(license.Purchase{Paid: true, Items: []license.Item{{PriceID: "price_tshirt"}}}, m, license.Options{}); err != nil || len(got) != 0 {
		t.Fatalf("unmapped: got %+v, %v, want nothing", got, err)
	}
}

func TestPurchaseRefundAndDisputePolicy(t *testing.T) {
	t.Parallel()
	m := purchasePlans(t)
	p := license.Purchase{ID: "cs_1", Paid: true, Items: []license.Item{{PriceID: "price_app", Quantity: 1, OneTime: true}}}
	tests := map[string]struct {
		refunded, disputed bool
		o                  license.Options
		reason             string
	}{
		"refunded, ignored":      {refunded: true},
		"refunded, block":        {refunded: true, o: license.Options{BlockOnRefund: true}, reason: "purchase refunded"},
		"disputed, ignored":      {disputed: true, o: license.Options{BlockOnRefund: true}},
		"disputed, block":        {disputed: true, o: license.Options{BlockOnDispute: true}, reason: "payment disputed"},
		"nothing wrong, block":   {o: license.Options{BlockOnDispute: true, BlockOnRefund: true}},
		"both, dispute is named": {refunded: true, disputed: true, o: license.Options{BlockOnDispute: true, BlockOnRefund: true}, reason: "payment disputed"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := p
			p.Refunded, p.Disputed = tc.refunded, tc.disputed
			ds, err := license.DesirePurchase(p, m, tc.o)
			if err != nil || len(ds) != 1 {
				t.Fatalf("got %+v, %v", ds, err)
			}
			if d := ds[0]; d.Block != (tc.reason != "") || d.Reason != tc.reason {
				t.Fatalf("got block %v (%q), want %q", d.Block, d.Reason, tc.reason)
			}
		})
	}
}

// A perpetual key is never extended, however long ago its expiry date passed, and a
// block on it that keysync did not make stays: Cryptolens never blocks a key whose
// time-limited feature is off, so the block is the vendor's. keysync lifts its own.
func TestPerpetualKeyIsNeverExtended(t *testing.T) {
	t.Parallel()
	d := license.Desired{Mapped: true, ProductID: 1001, NeedKey: true, Perpetual: true, Features: map[int]bool{1: false, 2: true}}
	key := license.Key{Exists: true, Key: "K", Expires: now.Add(-days(400)), Features: [8]bool{false, true}}
	if acts := license.Actions(d, key, license.State{}, now); len(acts) != 0 {
		t.Fatalf("an old perpetual key: got %+v, want nothing", acts)
	}
	key.Blocked = true
	if acts := license.Actions(d, key, license.State{}, now); len(acts) != 0 {
		t.Fatalf("the vendor's block on an old perpetual key: got %+v, want it left", acts)
	}
	if acts := license.Actions(d, key, license.State{BlockedByKeysync: true}, now); len(acts) != 1 || acts[0].Kind != license.Unblock {
		t.Fatalf("keysync's own block: got %+v, want it lifted", acts)
	}
	// Not even a block recorded as an expiry block is one on a perpetual key.
	key.Expires = now.Add(days(30))
	if acts := license.Actions(d, key, license.State{ExpiryBlockSeen: true}, now); len(acts) != 0 {
		t.Fatalf("a block seen as an expiry block: got %+v, want it left", acts)
	}
}

func TestPerpetualPlansFile(t *testing.T) {
	t.Parallel()
	if _, err := license.ParsePlans("p.yaml", []byte("plans:\n  - price: price_a\n    cryptolens_product: 1\n    perpetual: yes please\n"), 0); err == nil ||
		!strings.Contains(err.Error(), "p.yaml:4: perpetual must be true or false") {
		t.Fatalf("a malformed perpetual: got %v", err)
	}
	if _, err := license.ParsePlans("p.yaml", []byte("plans:\n  - price: price_a\n    cryptolens_product: 1\n    perpetual: true\n    buffer_days: 3\n"), 0); err == nil ||
		!strings.Contains(err.Error(), "p.yaml:2: a perpetual plan never expires") {
		t.Fatalf("a perpetual plan with a buffer: got %v", err)
	}
	m, err := license.ParsePlans("p.yaml", []byte("plans:\n  - price: price_a\n    cryptolens_product: 1\n    features: [1, 2]\n    perpetual: true\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RequireTimeLimited(2); err == nil || !strings.Contains(err.Error(), "p.yaml:2: a perpetual plan lists F2") {
		t.Fatalf("a perpetual plan listing the time-limited feature: got %v", err)
	}
	if err := m.RequireTimeLimited(3); err != nil {
		t.Fatalf("a perpetual plan without the time-limited feature: got %v", err)
	}

	// A perpetual plan licenses no subscription.
	_, err = license.Desire(sub(license.StatusActive, now.Add(days(10)), license.Item{PriceID: "price_a", Quantity: 1}), m, license.Options{})
	if err == nil || !strings.Contains(err.Error(), "p.yaml:2 is a perpetual plan") {
		t.Fatalf("a subscription mapped to a perpetual plan: got %v", err)
	}
}

// skm metadata on a one-time price may turn the time-limited feature off (its key is
// perpetual anyway), and may not turn it on.
func TestSKMOnOneTimePrices(t *testing.T) {
	t.Parallel()
	m := license.NewMapping(1001)
	if err := m.RequireTimeLimited(1); err != nil {
		t.Fatal(err)
	}
	off := license.Item{PriceID: "price_once", OneTime: true, PriceMetadata: map[string]string{"skm": `{"F1":false,"F2":true}`}}
	if _, ok, err := m.Resolve(off); !ok || err != nil {
		t.Fatalf("F1 off on a one-time price: got %v, %v, want mapped", ok, err)
	}
	on := license.Item{PriceID: "price_once", OneTime: true, PriceMetadata: map[string]string{"skm": `{"F1":true}`}}
	if _, _, err := m.Resolve(on); err == nil || !strings.Contains(err.Error(), "price_once") || !strings.Contains(err.Error(), "perpetual") {
		t.Fatalf("F1 on on a one-time price: got %v, want an error naming the price", err)
	}
}
