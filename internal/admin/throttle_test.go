package admin

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The throttle limits an IPv6 client by its /64: another address of the same /64 is
// throttled with it, another /64 is not.
func TestGuardThrottlesIPv6ByItsSlash64(t *testing.T) {
	t.Parallel()
	g := NewGuard(GuardConfig{AdminToken: "admin-token-0123456789abcdef", Throttle: Throttle{Burst: 1, Refill: time.Hour}})
	if _, err := g.Authenticate("[2001:db8::1]:1", "wrong"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("first failure: got %v, want ErrUnauthenticated", err)
	}
	var throttled *ThrottledError
	if _, err := g.Authenticate("[2001:db8::ffff:2]:2", "wrong"); !errors.As(err, &throttled) {
		t.Fatalf("another address of the same /64: got %v, want throttled", err)
	}
	if _, err := g.Authenticate("[2001:db8:0:1::1]:1", "wrong"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("another /64: got %v, want ErrUnauthenticated (not throttled)", err)
	}
}

// Clients that find no room share the overflow bucket, and are throttled by it: a
// flood of addresses past maxClients cannot guess without limit.
func TestGuardThrottlesTheOverflow(t *testing.T) {
	t.Parallel()
	g := NewGuard(GuardConfig{AdminToken: "admin-token-0123456789abcdef", Throttle: Throttle{Burst: 2, Refill: time.Hour}})
	ip := func(i int) string { return fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255) }
	for i := range maxClients {
		_, _ = g.Authenticate(ip(i), "wrong")
	}

	// The map is full of clients still owed their failures: new ones share one bucket,
	// which two failures empty.
	var throttled *ThrottledError
	for i := range 2 {
		if _, err := g.Authenticate(ip(maxClients+i), "wrong"); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("new client %d: got %v, want ErrUnauthenticated from the overflow bucket", i, err)
		}
	}
	for i := 2; i < 50; i++ {
		if _, err := g.Authenticate(ip(maxClients+i), "admin-token-0123456789abcdef"); !errors.As(err, &throttled) {
			t.Fatalf("new client %d once the overflow bucket is empty: got %v, want throttled before its token is checked", i, err)
		}
	}
}
