package admin

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The guard keeps only the tokens' SHA-256 digests: no field of it holds a token, so a
// comparison cannot leak a token's length or content, nor a memory dump the token.
func TestGuardKeepsOnlyDigests(t *testing.T) {
	t.Parallel()
	const admin, read = "admin-token-0123456789abcdef", "read-token-0123456789"
	g := NewGuard(GuardConfig{AdminToken: admin, ReadToken: read})
	want := map[[sha256.Size]byte]Principal{sha256.Sum256([]byte(admin)): {"admin", ReadWrite}, sha256.Sum256([]byte(read)): {"read", ReadOnly}}
	if len(g.creds) != len(want) {
		t.Fatalf("got %d credentials, want %d", len(g.creds), len(want))
	}
	for _, c := range g.creds {
		if want[c.digest] != c.who {
			t.Fatalf("credential %+v: its digest is not the token's SHA-256 for %s", c.who, c.who.Name)
		}
	}
	if s := holds(reflect.ValueOf(g).Elem(), admin, read); s != "" {
		t.Fatalf("the guard holds a token in %s", s)
	}
	for tok, name := range map[string]string{admin: "admin", read: "read"} {
		if who, err := g.Authenticate("127.0.0.1:1", tok); err != nil || who.Name != name {
			t.Fatalf("%s token: got %+v %v", name, who, err)
		}
	}
	for name, tok := range map[string]string{"none": "", "a prefix": admin[:16], "the token and a space": admin + " ", "upper case": strings.ToUpper(admin)} {
		if _, err := g.Authenticate("127.0.0.2:1", tok); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("%s: got %v, want ErrUnauthenticated", name, err)
		}
	}
}

// holds returns the path of a string or byte slice in v equal to one of secrets.
func holds(v reflect.Value, secrets ...string) string {
	switch v.Kind() {
	case reflect.String:
		for _, s := range secrets {
			if v.String() == s {
				return "a string"
			}
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			for _, s := range secrets {
				if string(v.Bytes()) == s {
					return "a byte slice"
				}
			}
			return ""
		}
		fallthrough
	case reflect.Array:
		for i := range v.Len() {
			if p := holds(v.Index(i), secrets...); p != "" {
				return "[" + p + "]"
			}
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if p := holds(v.Field(i), secrets...); p != "" {
				return v.Type().Field(i).Name + "." + p
			}
		}
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			return holds(v.Elem(), secrets...)
		}
	}
	return ""
}

// The throttle's memory is bounded: past maxClients, clients with nothing to forgive
// are dropped and new ones share one bucket.
func TestGuardBoundsItsClients(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g := NewGuard(GuardConfig{AdminToken: "admin-token-0123456789abcdef", Now: func() time.Time { return now }})
	ip := func(i int) string { return fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255) }
	for i := range maxClients + 500 {
		_, _ = g.Authenticate(ip(i), "wrong")
	}
	if n := len(g.clients); n > maxClients+1 {
		t.Fatalf("the guard remembers %d clients, want at most %d", n, maxClients+1)
	}
	// Once their failures are forgiven, old clients make room for new ones.
	now = now.Add(time.Hour)
	_, _ = g.Authenticate("192.0.2.9:1", "wrong")
	if _, ok := g.clients["192.0.2.9"]; !ok || len(g.clients) > 2 {
		t.Fatalf("after an hour: %d clients remembered, new one filed: %v; want the forgiven ones dropped", len(g.clients), ok)
	}
}

// The console signs its sessions with a key derived from the tokens: the same tokens
// give every replica the same key; another token, or the same token with other rights,
// gives another key, so changing a token ends the sessions signed under it.
func TestGuardSessionKeyFollowsTheTokens(t *testing.T) {
	t.Parallel()
	key := func(admin, read string) string {
		return string(NewGuard(GuardConfig{AdminToken: admin, ReadToken: read}).SessionKey())
	}
	a := key("full-0123456789abcdef", "")
	if a != key("full-0123456789abcdef", "") {
		t.Fatal("the same tokens gave two session keys")
	}
	for name, other := range map[string]string{
		"another admin token":         key("full-0123456789abcdeX", ""),
		"a read token added":          key("full-0123456789abcdef", "read-0123456789abcdef"),
		"the token as the read token": key("", "full-0123456789abcdef"),
	} {
		if other == a {
			t.Errorf("%s: same session key", name)
		}
	}
	if len(a) < 32 {
		t.Fatalf("session key of %d bytes", len(a))
	}
}
