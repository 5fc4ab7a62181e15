package license_test

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/license"
)

var now = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

func plansFile(t *testing.T) *license.Mapping {
	t.Helper()
	m, err := license.ParsePlans("plans.yaml", []byte(`
plans:
  - price: price_basic
    features: [1]
    machines: 1
  - price: price_pro
    features: [1, 3]
    machines_per_seat: 2
  - product: prod_team
    features: [2]
    machines: 5
    buffer_days: 10
`), 1001)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// desire is license.Desire for a subscription of one Cryptolens product: its one wish,
// or an unmapped one for a subscription nothing maps.
func desire(s license.Subscription, m *license.Mapping, o license.Options) (license.Desired, error) {
	ds, err := license.Desire(s, m, o)
	switch {
	case err != nil:
		return license.Desired{}, err
	case len(ds) == 0:
		return license.Desired{Features: map[int]bool{}}, nil
	case len(ds) > 1:
		return license.Desired{}, fmt.Errorf("got %d products, want one", len(ds))
	}
	return ds[0], nil
}

func sub(status string, paidThrough time.Time, items ...license.Item) license.Subscription {
	if len(items) == 0 {
		items = []license.Item{{PriceID: "price_basic", ProductID: "prod_x", Quantity: 1}}
	}
	return license.Subscription{ID: "sub_1", Status: status, Items: items, PaidThrough: paidThrough}
}

func TestPaidThrough(t *testing.T) {
	t.Parallel()
	jan, feb, mar := now.AddDate(0, -2, 0), now.AddDate(0, -1, 0), now
	got := license.PaidThrough([]license.Invoice{
		{Paid: true, Lines: []license.Line{{Type: "subscription", PeriodEnd: jan}}},
		{Paid: true, Lines: []license.Line{{Type: "invoiceitem", PeriodEnd: mar}, {Type: "subscription", PeriodEnd: feb}}},
		{Paid: false, Lines: []license.Line{{Type: "subscription", PeriodEnd: mar}}}, // created, not paid
	})
	if !got.Equal(feb) {
		t.Fatalf("got %s, want %s: only paid invoices' subscription lines count", got, feb)
	}
	if got := license.PaidThrough(nil); !got.IsZero() {
		t.Fatalf("got %s with nothing paid, want zero", got)
	}
}

func TestStatusTimesKeyState(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	pt := now.Add(days(20)) // paid through 20 days from now; target = +25
	target := pt.Add(days(5))
	validKey := license.Key{Exists: true, Key: "K", Expires: now.Add(days(10)), Features: [8]bool{true}, MaxMachines: 1}
	blockedValid := validKey
	blockedValid.Blocked = true
	blockedExpired := license.Key{Exists: true, Key: "K", Expires: now.Add(-days(3)), Blocked: true, Features: [8]bool{true}, MaxMachines: 1}
	type want struct {
		kinds []license.ActionKind
		days  int
	}
	tests := map[string]struct {
		status string
		key    license.Key
		st     license.State
		want   want
	}{
		"incomplete, no key: wait for payment":         {license.StatusIncomplete, license.Key{}, license.State{}, want{}},
		"trialing, no key: create":                     {license.StatusTrialing, license.Key{}, license.State{}, want{[]license.ActionKind{license.CreateKey}, 25}},
		"active, no key: create":                       {license.StatusActive, license.Key{}, license.State{}, want{[]license.ActionKind{license.CreateKey}, 25}},
		"active, key short: extend to target":          {license.StatusActive, validKey, license.State{}, want{[]license.ActionKind{license.Extend}, 15}},
		"past_due, key short: extend to paid + buffer": {license.StatusPastDue, validKey, license.State{}, want{[]license.ActionKind{license.Extend}, 15}},
		"past_due, no key: create":                     {license.StatusPastDue, license.Key{}, license.State{}, want{[]license.ActionKind{license.CreateKey}, 25}},
		"unpaid: block":                                {license.StatusUnpaid, validKey, license.State{}, want{[]license.ActionKind{license.Block}, 0}},
		"canceled: block":                              {license.StatusCanceled, validKey, license.State{}, want{[]license.ActionKind{license.Block}, 0}},
		"incomplete_expired: block":                    {license.StatusIncompleteExpired, validKey, license.State{}, want{[]license.ActionKind{license.Block}, 0}},
		"paused: block":                                {license.StatusPaused, validKey, license.State{}, want{[]license.ActionKind{license.Block}, 0}},
		"canceled, no key: nothing (no key to block)":  {license.StatusCanceled, license.Key{}, license.State{}, want{}},
		"canceled, already blocked: nothing":           {license.StatusCanceled, blockedValid, license.State{}, want{}},
		"active again, keysync's block: unblock":       {license.StatusActive, blockedValid, license.State{BlockedByKeysync: true}, want{[]license.ActionKind{license.Extend, license.Unblock}, 15}},
		"active, vendor's manual block: stays":         {license.StatusActive, blockedValid, license.State{}, want{[]license.ActionKind{license.Extend}, 15}},
		"active, expiry block: extend then unblock":    {license.StatusActive, blockedExpired, license.State{}, want{[]license.ActionKind{license.Extend, license.Unblock}, 25}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d, err := desire(sub(tc.status, pt), m, license.Options{BufferDays: 5})
			if err != nil {
				t.Fatal(err)
			}
			acts := license.Actions(d, tc.key, tc.st, now)
			var kinds []license.ActionKind
			for _, a := range acts {
				kinds = append(kinds, a.Kind)
			}
			if !reflect.DeepEqual(kinds, tc.want.kinds) {
				t.Fatalf("got %v, want %v", kinds, tc.want.kinds)
			}
			if len(acts) > 0 && (acts[0].Kind == license.Extend || acts[0].Kind == license.CreateKey) {
				if acts[0].Days != tc.want.days || acts[0].NewExpires.Before(target) || acts[0].NewExpires.Sub(target) >= days(1) {
					t.Fatalf("got %d days to %s, want %d days reaching %s (within a day)", acts[0].Days, acts[0].NewExpires, tc.want.days, target)
				}
			}
		})
	}
}

// 35 for 30 without drift: whatever the renewals, retries and redeliveries, the key ends
// at paid-through + buffer, and a second sync finds nothing to do.
func TestNoDrift(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	key := license.Key{Exists: true, Key: "K", Features: [8]bool{true}, MaxMachines: 1}
	clock := now
	key.Expires = clock.Add(days(35))
	periodEnd := clock.Add(days(30))
	for renewal := range 24 {
		periodEnd = periodEnd.AddDate(0, 1, 0)
		clock = periodEnd.AddDate(0, -1, 0).Add(time.Hour) // the renewal is paid an hour into the period
		d, _ := desire(sub(license.StatusActive, periodEnd), m, license.Options{BufferDays: 5})
		for range 3 { // a redelivered event syncs again
			for _, a := range license.Actions(d, key, license.State{}, clock) {
				if a.Kind == license.Extend {
					key.Expires = a.NewExpires
				}
			}
		}
		if want := periodEnd.Add(days(5)); !key.Expires.Equal(want) {
			t.Fatalf("renewal %d: key expires %s, want exactly %s", renewal, key.Expires, want)
		}
	}
}

func TestRenewalAfterExpiry(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	key := license.Key{Exists: true, Key: "K", Expires: now.Add(-days(10)), Features: [8]bool{true}, MaxMachines: 1}
	d, _ := desire(sub(license.StatusActive, now.Add(days(30))), m, license.Options{BufferDays: 5})
	acts := license.Actions(d, key, license.State{}, now)
	// Cryptolens adds to today for an expired key: 35 days, not 45.
	if len(acts) != 1 || acts[0].Days != 35 || !acts[0].NewExpires.Equal(now.Add(days(35))) {
		t.Fatalf("got %+v", acts)
	}
}

func TestManualExtensionIsRespected(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	key := license.Key{Exists: true, Key: "K", Expires: now.Add(days(400)), Features: [8]bool{true}, MaxMachines: 1}
	d, _ := desire(sub(license.StatusActive, now.Add(days(30))), m, license.Options{BufferDays: 5})
	if acts := license.Actions(d, key, license.State{}, now); len(acts) != 0 {
		t.Fatalf("got %+v, want nothing: keysync never shortens a key", acts)
	}
}

func TestFeaturesAndSeats(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	basicKey := license.Key{Exists: true, Key: "K", Expires: now.Add(days(35)), Features: [8]bool{true, false, false, false, false, false, false, true}, MaxMachines: 1}
	pro := license.Item{PriceID: "price_pro", ProductID: "prod_x", Quantity: 3}
	d, _ := desire(sub(license.StatusActive, now.Add(days(30)), pro), m, license.Options{BufferDays: 5})
	got := license.Actions(d, basicKey, license.State{}, now)
	want := []license.Action{{Kind: license.AddFeature, Feature: 3}, {Kind: license.MachineLimit, Machines: 6}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("upgrade to pro × 3: got %+v, want %+v (F8 is not managed: untouched)", got, want)
	}
	// Back down to basic: F3 is managed (another plan of the product turns it on), so it goes.
	proKey := basicKey
	proKey.Features[2], proKey.MaxMachines = true, 6
	d, _ = desire(sub(license.StatusActive, now.Add(days(30))), m, license.Options{BufferDays: 5})
	got = license.Actions(d, proKey, license.State{}, now)
	want = []license.Action{{Kind: license.RemoveFeature, Feature: 3}, {Kind: license.MachineLimit, Machines: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("downgrade: got %+v, want %+v", got, want)
	}
	// Two items: features are the union, limits add up, the longer buffer wins.
	team := license.Item{PriceID: "price_t", ProductID: "prod_team", Quantity: 1}
	d, _ = desire(sub(license.StatusActive, now, pro, team), m, license.Options{BufferDays: 5})
	if !d.Features[1] || !d.Features[2] || !d.Features[3] || *d.Machines != 11 || !d.Expires.Equal(now.Add(days(10))) {
		t.Fatalf("got %+v", d)
	}
}

func TestUnmapped(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	d, err := desire(sub(license.StatusActive, now, license.Item{PriceID: "price_tshirt", ProductID: "prod_merch"}), m, license.Options{})
	if err != nil || d.Mapped {
		t.Fatalf("got %+v, %v", d, err)
	}
	if acts := license.Actions(d, license.Key{}, license.State{}, now); len(acts) != 1 || acts[0].Kind != license.SkipUnmapped {
		t.Fatalf("got %+v, want skip_unmapped", acts)
	}
}

func TestDisputeAndRefundPolicy(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	s := sub(license.StatusActive, now.Add(days(20)))
	s.Disputed, s.RefundedLatest = true, true
	for _, tc := range []struct {
		o     license.Options
		block bool
	}{{license.Options{}, false}, {license.Options{BlockOnDispute: true}, true}, {license.Options{BlockOnRefund: true}, true}} {
		d, _ := desire(s, m, tc.o)
		if d.Block != tc.block {
			t.Errorf("options %+v: got block=%v, want %v", tc.o, d.Block, tc.block)
		}
	}
}

// A bundle, a subscription whose items map to different Cryptolens products, is
// entitled to one key per product: each with its own items' features and machines (and
// the time-limited feature), its own plans' buffer, and the subscription's status and
// entitled-through date; in the order the products first appear.
func TestBundles(t *testing.T) {
	t.Parallel()
	m, err := license.ParsePlans("p.yaml", []byte(`plans:
  - price: price_a
    cryptolens_product: 2
    features: [2]
    machines_per_seat: 1
  - price: price_b
    cryptolens_product: 1
    features: [3]
    machines: 4
    buffer_days: 9
  - price: price_c
    cryptolens_product: 2
    features: [4]
    machines: 1
`), 0)
	if err != nil {
		t.Fatal(err)
	}
	items := []license.Item{{PriceID: "price_a", Quantity: 3}, {PriceID: "price_b", Quantity: 1}, {PriceID: "price_c", Quantity: 1}}
	ds, err := license.Desire(sub(license.StatusActive, now.Add(days(20)), items...), m, license.Options{BufferDays: 5, TimeLimitedFeature: 1})
	if err != nil || len(ds) != 2 {
		t.Fatalf("got %+v, %v, want two products", ds, err)
	}
	machines2, machines1 := 3*1+1, 4 // one a seat × 3 and one fixed; four fixed
	want := []license.Desired{
		{Mapped: true, ProductID: 2, NeedKey: true, Expires: now.Add(days(25)), Through: now.Add(days(20)),
			Features: map[int]bool{1: true, 2: true, 4: true}, Machines: &machines2, Sources: []string{"p.yaml:2", "p.yaml:11"}},
		{Mapped: true, ProductID: 1, NeedKey: true, Expires: now.Add(days(29)), Through: now.Add(days(20)),
			Features: map[int]bool{1: true, 3: true}, Machines: &machines1, Sources: []string{"p.yaml:6"}},
	}
	if !reflect.DeepEqual(ds, want) {
		t.Fatalf("got  %+v\nwant %+v", ds, want)
	}
	ds, _ = license.Desire(sub(license.StatusCanceled, now.Add(days(20)), items...), m, license.Options{BufferDays: 5})
	for _, d := range ds {
		if !d.Block || d.Reason != "subscription canceled" {
			t.Fatalf("canceled: got %+v, want every key blocked", d)
		}
	}
}

// TestCreateKeySettings checks the whole CreateKey action: a new key gets its
// features in the right places (F1 is index 0) and its machine limit, or none.
func TestCreateKeySettings(t *testing.T) {
	t.Parallel()
	m, err := license.ParsePlans("plans.yaml", []byte(`
plans:
  - price: price_basic
    features: [1]
    machines: 1
  - price: price_pro
    features: [1, 3]
    machines_per_seat: 2
  - price: price_f8
    features: [8]
`), 1001)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		items    []license.Item
		features [8]bool
		machines int
	}{
		"basic: F1, one machine": {[]license.Item{{PriceID: "price_basic", Quantity: 1}},
			[8]bool{true}, 1},
		"pro × 3: F1 and F3, two machines a seat": {[]license.Item{{PriceID: "price_pro", Quantity: 3}},
			[8]bool{true, false, true}, 6},
		"F8, no machine rule: limit left at 0": {[]license.Item{{PriceID: "price_f8", Quantity: 1}},
			[8]bool{7: true}, 0},
		"basic and F8: the union": {[]license.Item{{PriceID: "price_basic", Quantity: 1}, {PriceID: "price_f8", Quantity: 1}},
			[8]bool{0: true, 7: true}, 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, err := desire(sub(license.StatusActive, now.Add(days(20)), tc.items...), m, license.Options{BufferDays: 5})
			if err != nil {
				t.Fatal(err)
			}
			got := license.Actions(d, license.Key{}, license.State{}, now)
			want := []license.Action{{Kind: license.CreateKey, Days: 25, OldExpires: now, NewExpires: now.Add(days(25)),
				Features: tc.features, Machines: tc.machines}}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
}
