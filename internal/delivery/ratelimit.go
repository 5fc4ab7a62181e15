package delivery

import (
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiter is a token bucket per key (a client's address, an e-mail address), in this
// process's memory. Buckets idle long enough to be full again are forgotten, so memory
// stays bounded by the keys seen within that time.
type limiter struct {
	every time.Duration // one token per every
	burst int
	// max bounds the keys kept; past it, idle buckets are dropped, and if none is
	// idle, all of them (a flood of addresses must not exhaust memory).
	max int

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newLimiter(perMinute, burst int) *limiter {
	return &limiter{every: time.Minute / time.Duration(max(perMinute, 1)), burst: max(burst, 1), max: 100_000,
		buckets: map[string]*bucket{}}
}

// allow takes a token from key's bucket at now. When there is none it returns false
// and how long until there is one.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b := l.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.buckets[key] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep forgets buckets that have been idle long enough to be full: about once a
// minute, or at once when there are too many.
func (l *limiter) sweep(now time.Time) {
	if now.Sub(l.swept) < time.Minute && len(l.buckets) < l.max {
		return
	}
	l.swept = now
	full := l.every * time.Duration(l.burst)
	for k, b := range l.buckets {
		if now.Sub(b.seen) > full {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}

// retryAfter is a Retry-After header's value for d: whole seconds, at least one.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(int(math.Ceil(max(d, time.Second).Seconds())))
}

// ClientIP returns a function that names the client of a request for rate limits: the
// connection's peer address, or, behind a proxy or load balancer, the address it puts
// in header (the last one, the one the proxy itself added: earlier ones are the
// client's to forge). An empty header means there is no proxy.
func ClientIP(header string) func(*http.Request) string {
	return func(r *http.Request) string {
		if header != "" {
			parts := strings.Split(r.Header.Get(header), ",")
			if ip := net.ParseIP(strings.TrimSpace(parts[len(parts)-1])); ip != nil {
				return ip.String()
			}
		}
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return r.RemoteAddr
		}
		return host
	}
}
