package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"
)

// Check accepts exactly a key in the policy state: never short, less than a day over,
// the plan's features and machines while paid; blocked once the subscription ended.
func TestCheck(t *testing.T) {
	t.Parallel()
	pt := time.Date(2027, 3, 25, 10, 0, 0, 0, time.UTC)
	sub := func(status string) Subscription {
		var s Subscription
		raw := fmt.Sprintf(`{"subscription":{"status":%q},"paid_through":%q}`, status, pt.Format(time.RFC3339))
		if err := json.Unmarshal([]byte(raw), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	want := Want{Features: [8]bool{true}, Machines: 2}
	target := pt.AddDate(0, 0, 5)
	key := func(exp time.Time) Key {
		return Key{Key: "K", Expires: exp, Features: [8]bool{true}, MaxNoOfMachines: 2}
	}
	tests := map[string]struct {
		k      Key
		status string
		ok     bool
		beyond bool
	}{
		"on target":             {key(target), "active", true, false},
		"trialing, hours over":  {key(target.Add(20 * time.Hour)), "trialing", true, false},
		"a second short":        {key(target.Add(-time.Second)), "past_due", false, false},
		"a day over":            {key(target.Add(24 * time.Hour)), "active", false, true},
		"a month over":          {key(target.AddDate(0, 1, 0)), "active", false, true},
		"blocked while paid":    {func() Key { k := key(target); k.Block = true; return k }(), "active", false, false},
		"wrong machines":        {func() Key { k := key(target); k.MaxNoOfMachines = 3; return k }(), "active", false, false},
		"wrong features":        {func() Key { k := key(target); k.Features[2] = true; return k }(), "active", false, false},
		"no key":                {Key{}, "active", false, false},
		"canceled and blocked":  {func() Key { k := key(target); k.Block = true; return k }(), "canceled", true, false},
		"canceled, not blocked": {key(target), "canceled", false, false},
		"unpaid and blocked":    {func() Key { k := key(target); k.Block = true; return k }(), "unpaid", true, false},
		"a status with no rule": {key(target), "incomplete", false, false},
	}
	for name, tc := range tests {
		err := Check(tc.k, sub(tc.status), 5, want)
		if (err == nil) != tc.ok || errors.Is(err, ErrBeyondTarget) != tc.beyond {
			t.Errorf("%s: got %v, want ok=%v beyond=%v", name, err, tc.ok, tc.beyond)
		}
	}
}

// Stripe grants an invoiced or paused-collection subscription its current period while
// it is active: Check judges its key by the period's end, as keysync's policy does.
func TestCheckEntitledThrough(t *testing.T) {
	t.Parallel()
	pt := time.Date(2027, 3, 25, 10, 0, 0, 0, time.UTC)
	end := pt.AddDate(0, 1, 0)
	sub := func(status, collection string, paused bool) Subscription {
		pause := "null"
		if paused {
			pause = `{"Behavior":"void"}`
		}
		var s Subscription
		raw := fmt.Sprintf(`{"subscription":{"status":%q,"CollectionMethod":%q,"CurrentPeriodEnd":%d,"PauseCollection":%s},"paid_through":%q}`,
			status, collection, end.Unix(), pause, pt.Format(time.RFC3339))
		if err := json.Unmarshal([]byte(raw), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := map[string]struct {
		s    Subscription
		want time.Time
	}{
		"card, renewal unpaid":        {sub("active", "charge_automatically", false), pt},
		"invoiced, invoice open":      {sub("active", "send_invoice", false), end},
		"collection paused":           {sub("active", "charge_automatically", true), end},
		"invoiced, past its due date": {sub("past_due", "send_invoice", false), pt},
		"paused collection, past_due": {sub("past_due", "charge_automatically", true), pt},
	}
	for name, tc := range tests {
		if got := tc.s.EntitledThrough(); !got.Equal(tc.want) {
			t.Errorf("%s: got %s, want %s", name, got, tc.want)
		}
		k := Key{Key: "K", Expires: tc.want.AddDate(0, 0, 5), Features: [8]bool{true}, MaxNoOfMachines: 1}
		if err := Check(k, tc.s, 5, Want{Features: [8]bool{true}, Machines: 1}); err != nil {
			t.Errorf("%s: a key at entitled-through + 5 days: got %v, want nil", name, err)
		}
	}
}
