package license_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/license"
)

// Entitled-through counts the current period without a paid invoice exactly where
// Stripe grants it: trialing, invoiced, paused collection (unless lapse), only metered
// items. A card-charged licensed subscription waits for its invoice to be paid.
func TestEntitledThrough(t *testing.T) {
	t.Parallel()
	paid, periodEnd, stored := now.Add(-days(10)), now.Add(days(20)), now.Add(days(2))
	licensed := license.Item{PriceID: "price_basic", Quantity: 1}
	metered := license.Item{PriceID: "price_usage", Metered: true}
	tests := map[string]struct {
		sub   license.Subscription
		lapse bool
		want  time.Time
	}{
		"active, card, licensed: paid only":          {license.Subscription{Status: "active", Items: []license.Item{licensed}}, false, paid},
		"active, charge_automatically spelled out":   {license.Subscription{Status: "active", CollectionMethod: "charge_automatically", Items: []license.Item{licensed}}, false, paid},
		"trialing: the trial's end":                  {license.Subscription{Status: "trialing", Items: []license.Item{licensed}}, false, periodEnd},
		"active, send_invoice: the period's end":     {license.Subscription{Status: "active", CollectionMethod: "send_invoice", Items: []license.Item{licensed}}, false, periodEnd},
		"past_due, send_invoice: no more":            {license.Subscription{Status: "past_due", CollectionMethod: "send_invoice", Items: []license.Item{licensed}}, false, paid},
		"paused collection, keep":                    {license.Subscription{Status: "active", PausedCollection: true, Items: []license.Item{licensed}}, false, periodEnd},
		"paused collection, lapse":                   {license.Subscription{Status: "active", PausedCollection: true, Items: []license.Item{licensed}}, true, paid},
		"only metered items":                         {license.Subscription{Status: "active", Items: []license.Item{metered}}, false, periodEnd},
		"metered and licensed items":                 {license.Subscription{Status: "active", Items: []license.Item{metered, licensed}}, false, paid},
		"no items":                                   {license.Subscription{Status: "active"}, false, paid},
		"canceled, send_invoice":                     {license.Subscription{Status: "canceled", CollectionMethod: "send_invoice", Items: []license.Item{licensed}}, false, paid},
		"stored later than paid: stays (card)":       {license.Subscription{Status: "active", StoredThrough: stored, Items: []license.Item{licensed}}, false, stored},
		"stored later than the period (trial moved)": {license.Subscription{Status: "trialing", StoredThrough: periodEnd.Add(days(3)), Items: []license.Item{licensed}}, false, periodEnd.Add(days(3))},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := tc.sub
			s.PaidThrough, s.CurrentPeriodEnd = paid, periodEnd
			got := license.EntitledThrough(s, license.Options{LapseOnPausedCollection: tc.lapse})
			if !got.Equal(tc.want) {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// The paid-through of an all-zero subscription is zero, and a granted period with no
// period end grants nothing.
func TestEntitledThroughZero(t *testing.T) {
	t.Parallel()
	got := license.EntitledThrough(license.Subscription{Status: "trialing"}, license.Options{})
	if !got.IsZero() {
		t.Fatalf("got %s, want zero", got)
	}
	paid := now.Add(-days(3))
	for name, s := range map[string]license.Subscription{
		"send_invoice":      {Status: "active", CollectionMethod: license.SendInvoice},
		"paused collection": {Status: "active", PausedCollection: true},
		"metered only":      {Status: "active", Items: []license.Item{{PriceID: "price_usage", Metered: true}}},
	} {
		s.PaidThrough = paid
		if got := license.EntitledThrough(s, license.Options{}); !got.Equal(paid) {
			t.Errorf("%s with no period end: got %s, want paid-through %s", name, got, paid)
		}
	}
}

// Desire targets entitled-through + buffer: a Net-30 customer's key is valid through the
// invoice's period + 5 days at sign-up, before anything is paid.
func TestDesireUsesEntitledThrough(t *testing.T) {
	t.Parallel()
	periodEnd := now.Add(days(30))
	s := sub("active", time.Time{})
	s.CollectionMethod, s.CurrentPeriodEnd = license.SendInvoice, periodEnd
	d, err := desire(s, plansFile(t), license.Options{BufferDays: 5})
	if err != nil {
		t.Fatal(err)
	}
	if want := periodEnd.AddDate(0, 0, 5); !d.Expires.Equal(want) || !d.Through.Equal(periodEnd) || !d.NeedKey {
		t.Fatalf("got expires %s through %s need %v, want %s, %s, true", d.Expires, d.Through, d.NeedKey, want, periodEnd)
	}
}

// A metered line bills a period that is over: it never moves paid-through.
func TestPaidThroughSkipsMeteredLines(t *testing.T) {
	t.Parallel()
	start, end := now, now.Add(days(30))
	got := license.PaidThrough([]license.Invoice{{Paid: true, Lines: []license.Line{
		{Type: "subscription", PeriodEnd: start, Metered: true},
		{Type: "subscription", PeriodEnd: end, Metered: true},
	}}})
	if !got.IsZero() {
		t.Fatalf("got %s from metered lines only, want zero", got)
	}
	got = license.PaidThrough([]license.Invoice{{Paid: true, Lines: []license.Line{
		{Type: "subscription", PeriodEnd: end, Metered: true},
		{Type: "subscription", PeriodEnd: start},
	}}})
	if !got.Equal(start) {
		t.Fatalf("got %s, want the licensed line's end %s", got, start)
	}
}

// Subscription keys always have the time-limited feature on: Cryptolens enforces expiry
// only on time-limited keys.
func TestTimeLimitedFeatureAlwaysOn(t *testing.T) {
	t.Parallel()
	m, err := license.ParsePlans("plans.yaml", []byte("plans:\n  - price: price_x\n    features: [3]\n"), 1001)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RequireTimeLimited(2); err != nil {
		t.Fatal(err)
	}
	s := sub("active", now.Add(days(10)), license.Item{PriceID: "price_x", Quantity: 1})
	for feature, want := range map[int]map[int]bool{1: {1: true, 3: true}, 2: {2: true, 3: true}, 8: {3: true, 8: true}, 0: {3: true}} {
		d, err := desire(s, m, license.Options{BufferDays: 5, TimeLimitedFeature: feature})
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Features) != len(want) {
			t.Errorf("time-limited F%d: got features %v, want %v", feature, d.Features, want)
		}
		for f, on := range want {
			if d.Features[f] != on {
				t.Errorf("time-limited F%d: got F%d %v, want %v", feature, f, d.Features[f], on)
			}
		}
	}
}

// An skm object that turns the time-limited feature off is refused, naming the price;
// plans-file entries only list features turned on, so one that omits it still gets it.
func TestPlanMayNotTurnOffTimeLimited(t *testing.T) {
	t.Parallel()
	file := "plans:\n  - price: price_a\n    features: [1, 2]\n  - price: price_b\n    features: [2]\n"
	m, err := license.ParsePlans("plans.yaml", []byte(file), 1001)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RequireTimeLimited(1); err != nil {
		t.Fatalf("a plans file that omits F1 in one entry: got %v, want no error", err)
	}
	d, err := desire(sub("active", now.Add(days(3)), license.Item{PriceID: "price_b", Quantity: 1}), m,
		license.Options{BufferDays: 5, TimeLimitedFeature: 1})
	if err != nil || !d.Features[1] || !d.Features[2] {
		t.Fatalf("price_b: got features %v (%v), want F1 and F2 on", d.Features, err)
	}
	for _, bad := range []int{-1, 9} {
		if err := m.RequireTimeLimited(bad); err == nil {
			t.Errorf("feature %d: got no error", bad)
		}
	}
	for _, good := range []int{0, 8} {
		if err := m.RequireTimeLimited(good); err != nil {
			t.Errorf("feature %d: got %v, want no error", good, err)
		}
	}

	skm := license.NewMapping(1001)
	if err := skm.RequireTimeLimited(1); err != nil {
		t.Fatal(err)
	}
	_, _, err = skm.Resolve(license.Item{PriceID: "price_skm", PriceMetadata: map[string]string{"skm": `{"F1":false,"F2":true}`}})
	if err == nil || !strings.Contains(err.Error(), "price_skm") || !strings.Contains(err.Error(), "F1") {
		t.Fatalf("skm turning F1 off: got %v, want an error naming the price and F1", err)
	}
	if _, ok, err := skm.Resolve(license.Item{PriceID: "price_skm", PriceMetadata: map[string]string{"skm": `{"F1":true}`}}); err != nil || !ok {
		t.Fatalf("skm with F1 on: got %v %v, want mapped", ok, err)
	}
	if _, ok, err := skm.Resolve(license.Item{PriceID: "price_skm", PriceMetadata: map[string]string{"skm": `{"F2":false}`}}); err != nil || !ok {
		t.Fatalf("skm turning F2 off: got %v %v, want mapped", ok, err)
	}
}

// An expiry block is lifted only when the key is valid after the Sync: a lapsed past_due
// key stays blocked (no toggling against Cryptolens' hourly block), a renewed one is
// extended and then unblocked, and a retry after "extended, then the unblock failed"
// still lifts it because keysync recorded that it saw the expiry block.
func TestExpiryBlocks(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	lapsed := license.Key{Exists: true, Key: "K", Expires: now.Add(-days(2)), Blocked: true, Features: [8]bool{true}, MaxMachines: 1}
	renewedTo := now.Add(days(20))
	tests := map[string]struct {
		status      string
		paidThrough time.Time
		key         license.Key
		st          license.State
		want        []license.ActionKind
		expiryBlock bool
	}{
		"past_due, lapsed: stays blocked":             {"past_due", now.Add(-days(8)), lapsed, license.State{}, nil, true},
		"active, renewed: extend then unblock":        {"active", renewedTo, lapsed, license.State{}, []license.ActionKind{license.Extend, license.Unblock}, true},
		"retry after extend: seen block still lifted": {"active", renewedTo, withExpiry(lapsed, renewedTo.AddDate(0, 0, 5)), license.State{ExpiryBlockSeen: true}, []license.ActionKind{license.Unblock}, true},
		"vendor's block on a valid key stays":         {"active", renewedTo, withExpiry(lapsed, renewedTo.AddDate(0, 0, 5)), license.State{}, nil, false},
		"keysync's own block is lifted":               {"active", renewedTo, withExpiry(lapsed, renewedTo.AddDate(0, 0, 5)), license.State{BlockedByKeysync: true}, []license.ActionKind{license.Unblock}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, err := desire(sub(tc.status, tc.paidThrough), m, license.Options{BufferDays: 5})
			if err != nil {
				t.Fatal(err)
			}
			var got []license.ActionKind
			for _, a := range license.Actions(d, tc.key, tc.st, now) {
				got = append(got, a.Kind)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got actions %v, want %v", got, tc.want)
			}
			if e := license.ExpiryBlocked(tc.key, tc.st, now); e != tc.expiryBlock {
				t.Errorf("ExpiryBlocked: got %v, want %v", e, tc.expiryBlock)
			}
		})
	}
}

func withExpiry(k license.Key, expires time.Time) license.Key {
	k.Expires = expires
	return k
}
