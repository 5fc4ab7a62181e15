package console

import (
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/license"
)

func TestSessionCookies(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	s := &sessions{key: []byte("0123456789abcdef0123456789abcdef"), ttl: time.Hour, now: func() time.Time { return now }, loggedOut: map[string]int64{}}
	sess, value := s.issue("admin", false)
	if got, err := s.check(value); err != nil || got != sess {
		t.Fatalf("a fresh cookie: got %+v, %v", got, err)
	}
	other := &sessions{key: []byte("another key, as long as the first"), ttl: time.Hour, now: s.now, loggedOut: map[string]int64{}}
	enc, sig, _ := strings.Cut(value, ".")
	_, otherValue := s.issue("read-only", true)
	_, otherSig, _ := strings.Cut(otherValue, ".")
	for name, v := range map[string]string{
		"another key's cookie":        func() string { _, v := other.issue("admin", false); return v }(),
		"another session's signature": enc + "." + otherSig,
		"no signature":                enc,
		"a tampered payload":          "x" + enc + "." + sig,
		"not base64":                  "!!!." + sig,
		"empty":                       "",
		"the signature as payload ":   sig + "." + sig,
	} {
		if _, err := s.check(v); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if s.csrf(sess) == s.csrf(session{ID: "other"}) || s.csrf(sess) == other.csrf(sess) {
		t.Fatal("the CSRF token is not the session's own under this key")
	}
	if validCSRF("", "") || !validCSRF(s.csrf(sess), s.csrf(sess)) {
		t.Fatal("validCSRF: an empty token is valid, or the right one is not")
	}

	// Expiry, and logout.
	now = now.Add(time.Hour)
	if _, err := s.check(value); err == nil {
		t.Fatal("an expired session was accepted")
	}
	now = now.Add(-30 * time.Minute)
	s.logout(sess)
	if _, err := s.check(value); err == nil {
		t.Fatal("a logged-out session was accepted")
	}
}

func TestSafeNext(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                            "/console/",
		"/console/audit?outcome=fail": "/console/audit?outcome=fail",
		"//evil.example/console/":     "/console/",
		"https://evil.example/":       "/console/",
		"/\\evil.example":             "/console/",
		"/api/v1/audit":               "/console/",
		"/console/\r\nSet-Cookie: x":  "/console/",
		"javascript:alert(1)":         "/console/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q): got %q, want %q", in, got, want)
		}
	}
}

// The preview's diff: the key now (-) and after the actions (+), field by field.
func TestPreviewDiff(t *testing.T) {
	t.Parallel()
	jan, feb := time.Date(2026, 1, 6, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 6, 0, 0, 0, 0, time.UTC)
	key := license.Key{Exists: true, Key: "AAAA-BBBB", Expires: jan, Features: [8]bool{true}, MaxMachines: 2}
	for name, tc := range map[string]struct {
		key       license.Key
		actions   []license.Action
		perpetual bool
		want      []string
	}{
		"nothing to do": {key, nil, false, []string{"  key AAAA-BBBB", "  expires 2026-01-06 00:00:00 UTC", "  blocked false", "  features F1", "  machines 2"}},
		"extend, F3 on, 4 machines, block": {key, []license.Action{{Kind: license.Extend, NewExpires: feb}, {Kind: license.AddFeature, Feature: 3},
			{Kind: license.MachineLimit, Machines: 4}, {Kind: license.Block, Reason: "canceled"}}, false,
			[]string{"  key AAAA-BBBB", "- expires 2026-01-06 00:00:00 UTC", "+ expires 2026-02-06 00:00:00 UTC", "- blocked false", "+ blocked true",
				"- features F1", "+ features F1+F3", "- machines 2", "+ machines 4"}},
		"a new key": {license.Key{}, []license.Action{{Kind: license.CreateKey, NewExpires: feb, Features: [8]bool{true, true}, Machines: 3}}, false,
			[]string{"- key (none)", "+ key (new key)", "- expires –", "+ expires 2026-02-06 00:00:00 UTC", "- blocked –", "+ blocked false",
				"- features –", "+ features F1+F2", "- machines –", "+ machines 3"}},
		"unblock, F1 off": {license.Key{Exists: true, Key: "K", Expires: jan, Blocked: true, Features: [8]bool{true}, MaxMachines: 1},
			[]license.Action{{Kind: license.Unblock}, {Kind: license.RemoveFeature, Feature: 1}}, false,
			[]string{"  key K", "  expires 2026-01-06 00:00:00 UTC", "- blocked true", "+ blocked false", "- features F1", "+ features none", "  machines 1"}},
		// A perpetual key has no expiry to show: its time-limited feature is off.
		"a new perpetual key": {license.Key{}, []license.Action{{Kind: license.CreateKey, NewExpires: jan, Features: [8]bool{false, true}, Machines: 2}}, true,
			[]string{"- key (none)", "+ key (new key)", "- expires –", "+ expires never (perpetual)", "- blocked –", "+ blocked false",
				"- features –", "+ features F2", "- machines –", "+ machines 2"}},
		"a perpetual key blocked": {license.Key{Exists: true, Key: "P", Expires: jan, Features: [8]bool{false, true}, MaxMachines: 2},
			[]license.Action{{Kind: license.Block, Reason: "purchase refunded"}}, true,
			[]string{"  key P", "  expires never (perpetual)", "- blocked false", "+ blocked true", "  features F2", "  machines 2"}},
	} {
		var got []string
		for _, l := range previewDiff(tc.key, tc.actions, tc.perpetual) {
			got = append(got, l.Op+" "+l.Field+" "+l.Value)
		}
		if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}
