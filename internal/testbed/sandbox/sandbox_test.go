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
