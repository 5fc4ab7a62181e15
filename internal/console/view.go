package console

import (
	"encoding/json"
	"fmt"
	"html/template"
	"strconv"
	"strings"
	"time"

	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/syncer"
)

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"when": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			return when(v)
		case *time.Time:
			if v == nil {
				return "–"
			}
			return when(*v)
		}
		return "–"
	},
	"age":       age,
	"hasPrefix": strings.HasPrefix,
	"str": func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	},
	"json": func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	},
	"features": features,
	"desiredFeatures": func(d license.Desired) string {
		if len(d.Features) == 0 {
			return "(none managed)"
		}
		var f [8]bool
		for n, on := range d.Features {
			if n >= 1 && n <= 8 {
				f[n-1] = on
			}
		}
		return features(f)
	},
	"machines": func(m *int) string {
		if m == nil {
			return "(not managed)"
		}
		return strconv.Itoa(*m)
	},
	"percent": func(part, whole int) string {
		if whole == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(whole))
	},
	"days":  func(d time.Duration) string { return fmt.Sprintf("%.1f", d.Hours()/24) },
	"count": func(m map[string]int, k string) int { return m[k] },
	"row":   func(m map[string]map[string]int, k string) map[string]int { return m[k] },
	"yes": func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	},
}

// when formats a time for operators: UTC, to the second; the zero time is a dash.
func when(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
}

// age puts a duration in the largest unit that reads well: 45s, 12m, 5h 3m, 26d 4h.
func age(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd %dh", int(d.Hours())/24, int(d.Hours())%24)
}

// features lists the features that are on as F1+F3, or "none".
func features(f [8]bool) string {
	var on []string
	for i, v := range f {
		if v {
			on = append(on, "F"+strconv.Itoa(i+1))
		}
	}
	if len(on) == 0 {
		return "none"
	}
	return strings.Join(on, "+")
}

// diffLine is one line of the preview's diff: Op is "-" (the key now), "+" (after a
// Sync) or " " (unchanged).
type diffLine struct {
	Op, Field, Value string
}

// keyCard is one key of a subscription or purchase as its page shows it: the policy's
// wish for one Cryptolens product, the key as Cryptolens has it, and what a Sync would
// do to it, in words and as a diff.
type keyCard struct {
	Desired license.Desired
	Key     license.Key
	Actions []string
	Diff    []diffLine
}

// keyCards are the cards of a preview's keys, one per Cryptolens product.
func keyCards(keys []syncer.KeyPreview) []keyCard {
	out := make([]keyCard, len(keys))
	for i, k := range keys {
		out[i] = keyCard{Desired: k.Desired, Key: k.Key, Diff: previewDiff(k.Key, k.Actions, k.Desired.Perpetual)}
		for _, a := range k.Actions {
			out[i].Actions = append(out[i].Actions, describe(a, k.Desired.Perpetual))
		}
	}
	return out
}

// keyView is the key's state as the diff compares it, field by field.
type keyView struct {
	key, expires, blocked, features, machines string
}

// viewOf is a key as the diff shows it. A perpetual key's expiry is not shown: with
// its time-limited feature off, Cryptolens never lets it expire.
func viewOf(k license.Key, perpetual bool) keyView {
	if !k.Exists {
		return keyView{key: "(none)", expires: "–", blocked: "–", features: "–", machines: "–"}
	}
	v := keyView{key: k.Key, expires: when(k.Expires), blocked: fmt.Sprint(k.Blocked), features: features(k.Features),
		machines: strconv.Itoa(k.MaxMachines)}
	if perpetual {
		v.expires = "never (perpetual)"
	}
	return v
}

// afterActions is the key as it will be once the actions are applied: the preview
// shown as what changes, not as a list of calls.
func afterActions(k license.Key, actions []license.Action) license.Key {
	for _, a := range actions {
		switch a.Kind {
		case license.CreateKey:
			k.Exists, k.Expires, k.Features, k.MaxMachines = true, a.NewExpires, a.Features, a.Machines
			if k.Key == "" {
				k.Key = "(new key)"
			}
		case license.Extend:
			k.Expires = a.NewExpires
		case license.Block:
			k.Blocked = true
		case license.Unblock:
			k.Blocked = false
		case license.AddFeature, license.RemoveFeature:
			if a.Feature >= 1 && a.Feature <= 8 {
				k.Features[a.Feature-1] = a.Kind == license.AddFeature
			}
		case license.MachineLimit:
			k.MaxMachines = a.Machines
		}
	}
	return k
}

// previewDiff compares the key now with the key after the actions, field by field.
func previewDiff(now license.Key, actions []license.Action, perpetual bool) []diffLine {
	before, after := viewOf(now, perpetual), viewOf(afterActions(now, actions), perpetual)
	var out []diffLine
	for _, f := range []struct{ name, before, after string }{
		{"key", before.key, after.key}, {"expires", before.expires, after.expires}, {"blocked", before.blocked, after.blocked},
		{"features", before.features, after.features}, {"machines", before.machines, after.machines},
	} {
		if f.before == f.after {
			out = append(out, diffLine{" ", f.name, f.before})
			continue
		}
		out = append(out, diffLine{"-", f.name, f.before}, diffLine{"+", f.name, f.after})
	}
	return out
}

// describe puts an action a Sync would take on a key in words; perpetual says the key is
// a one-time purchase's.
func describe(a license.Action, perpetual bool) string {
	switch a.Kind {
	case license.CreateKey:
		if perpetual {
			return fmt.Sprintf("create a perpetual key: features %s, %d machines", features(a.Features), a.Machines)
		}
		return fmt.Sprintf("create a key: %d days (to %s), features %s, %d machines", a.Days, when(a.NewExpires), features(a.Features), a.Machines)
	case license.Extend:
		return fmt.Sprintf("extend by %d days: %s → %s", a.Days, when(a.OldExpires), when(a.NewExpires))
	case license.AddFeature:
		return fmt.Sprintf("turn F%d on", a.Feature)
	case license.RemoveFeature:
		return fmt.Sprintf("turn F%d off", a.Feature)
	case license.MachineLimit:
		return fmt.Sprintf("set the machine limit to %d", a.Machines)
	case license.Block:
		return "block the key: " + a.Reason
	case license.Unblock:
		return "unblock the key: " + a.Reason
	case license.SkipUnmapped:
		return "record that no plan maps it (no key)"
	}
	return string(a.Kind)
}
