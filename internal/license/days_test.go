package license_test

import (
	"testing"
	"time"

	"github.com/keysync/keysync/internal/license"
)

// Cryptolens may keep dates as whole days: CreateKey's Period and ExtendLicense then
// count from midnight of the day they count from. Whichever it does, the key keysync
// asks for reaches the target and stays less than a day past it.
func TestWholeDays(t *testing.T) {
	t.Parallel()
	m := plansFile(t)
	d, _ := desire(sub(license.StatusActive, now.Add(days(30))), m, license.Options{BufferDays: 5})
	target := d.Expires // 12:00 UTC
	midnight := func(t time.Time) time.Time { return t.Truncate(24 * time.Hour) }
	tests := map[string]struct {
		key license.Key
		// from is where Cryptolens counts the days from.
		from time.Time
	}{
		"create, seconds":                     {license.Key{}, now},
		"create, whole days":                  {license.Key{WholeDays: true}, midnight(now)},
		"expired key, seconds":                {license.Key{Exists: true, Expires: now.Add(-days(3))}, now},
		"expired key, whole days":             {license.Key{Exists: true, Expires: midnight(now).Add(-days(3)), WholeDays: true}, midnight(now)},
		"valid key, whole days":               {license.Key{Exists: true, Expires: midnight(now).Add(days(2)), WholeDays: true}, midnight(now).Add(days(2))},
		"valid key, seconds":                  {license.Key{Exists: true, Expires: now.Add(days(2))}, now.Add(days(2))},
		"expired this morning, whole days":    {license.Key{Exists: true, Expires: midnight(now), WholeDays: true}, midnight(now)},
		"valid key with a time, whole days":   {license.Key{Exists: true, Expires: now.Add(days(2)), WholeDays: true}, midnight(now).Add(days(2))},
		"expired key with a time, whole days": {license.Key{Exists: true, Expires: now.Add(-time.Hour), WholeDays: true}, midnight(now)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tc.key.Features, tc.key.MaxMachines = [8]bool{true}, 1
			acts := license.Actions(d, tc.key, license.State{}, now)
			if len(acts) != 1 || (acts[0].Kind != license.CreateKey && acts[0].Kind != license.Extend) {
				t.Fatalf("got %+v, want one create or extension", acts)
			}
			// What Cryptolens makes of the call.
			got := tc.from.Add(days(acts[0].Days))
			if got.Before(target) || got.Sub(target) >= 24*time.Hour {
				t.Fatalf("the key expires %s, want from %s to a day later", got, target)
			}
			if !acts[0].NewExpires.Equal(got) {
				t.Fatalf("action's new expiry: got %s, want %s", acts[0].NewExpires, got)
			}
		})
	}
}
