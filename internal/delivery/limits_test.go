package delivery

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// A flood of new clients never resets the clients already limited: past the most
// buckets kept, the new ones share one overflow bucket, and room comes back only as
// buckets fall idle.
func TestLimiterOverflowKeepsLimits(t *testing.T) {
	t.Parallel()
	l := newLimiter(6, 2) // one every 10s: full again 20s after the last request
	l.max = 100
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

	// 1. A client spends its burst.
	for range 2 {
		l.allow("192.0.2.1", now)
	}
	if ok, _ := l.allow("192.0.2.1", now); ok {
		t.Fatal("past the burst: allowed, want refused")
	}

	// 2. A flood of new clients, more than the limiter keeps, 10 ms apart: each of
	// the first ones gets its own bucket, the rest share the overflow bucket.
	allowed := 0
	for i := range 3 * l.max {
		now = now.Add(10 * time.Millisecond)
		if ok, _ := l.allow(fmt.Sprintf("198.51.100.%d/%d", i/256, i%256), now); ok {
			allowed++
		}
	}
	if want := l.max - 1 + l.burst; allowed > want+1 {
		t.Fatalf("the flood: %d requests allowed, want at most %d (one bucket each while there is room, then one shared)", allowed, want+1)
	}
	if len(l.buckets) > l.max {
		t.Fatalf("%d buckets kept, want at most %d", len(l.buckets), l.max)
	}

	// 3. The first client is still limited: the flood reset nothing.
	if ok, _ := l.allow("192.0.2.1", now); ok {
		t.Fatal("after the flood: the limited client was allowed, want still refused")
	}

	// 4. Once the flood's buckets are idle long enough to be full, a new client gets a
	// bucket of its own again.
	now = now.Add(time.Minute)
	if ok, _ := l.allow("203.0.113.7", now); !ok {
		t.Fatal("a minute after the flood: a new client was refused")
	}
	if _, own := l.buckets["203.0.113.7"]; !own {
		t.Fatal("a minute after the flood: the new client shares the overflow bucket, want its own")
	}
}

// The license page and the lost-keys form limit an IPv6 client by its /64: the
// addresses of one /64 share a limit, another /64 has its own.
func TestClientIPKeysIPv6ByItsSlash64(t *testing.T) {
	t.Parallel()
	l := newLimiter(6, 2)
	name := ClientIP("X-Forwarded-For")
	at := func(addr string) string {
		r, _ := http.NewRequest("GET", Path, nil)
		r.RemoteAddr = "10.0.0.1:1234"
		r.Header.Set("X-Forwarded-For", addr)
		return name(r)
	}
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	for i := range 2 {
		if ok, _ := l.allow(at(fmt.Sprintf("2001:db8:1:2::%x", i+1)), now); !ok {
			t.Fatalf("request %d refused within the burst", i+1)
		}
	}
	if ok, _ := l.allow(at("2001:db8:1:2:ffff:ffff:ffff:ffff"), now); ok {
		t.Fatal("a third address of the same /64: allowed, want refused (one limit per /64)")
	}
	if ok, _ := l.allow(at("2001:db8:1:3::1"), now); !ok {
		t.Fatal("an address of another /64: refused, want its own limit")
	}
}
