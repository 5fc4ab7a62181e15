package delivery

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/keysync/keysync/internal/clientip"
)

// limiter is a token bucket per key (a client, as ClientIP names it), in this process's
// memory. Buckets idle long enough to be full again are forgotten, so memory stays
// bounded by the keys seen within that time, and by max: past it, new keys share one
// overflow bucket until idle buckets make room. Forgetting the busy buckets instead
// would hand every client, the one flooding first, a fresh limit.
type limiter struct {
	every time.Duration // one token per every
	burst int
	max   int // the most buckets kept, the overflow bucket aside

	mu       sync.Mutex
	buckets  map[string]*bucket
	overflow *bucket
	swept    time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// maxBuckets bounds a limiter's buckets: about 20 MB at most.
const maxBuckets = 100_000

func newLimiter(perMinute, burst int) *limiter {
	l := &limiter{every: time.Minute / time.Duration(max(perMinute, 1)), burst: max(burst, 1), max: maxBuckets,
		buckets: map[string]*bucket{}}
	l.overflow = l.newBucket()
	return l
}

func (l *limiter) newBucket() *bucket {
	return &bucket{lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
}

// allow takes a token from key's bucket at now. When there is none it returns false
// and how long until there is one.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// bucket returns key's bucket, making it if there is room, and the overflow bucket if
// there is none.
func (l *limiter) bucket(key string, now time.Time) *bucket {
	if b := l.buckets[key]; b != nil {
		return b
	}
	l.sweep(now)
	if len(l.buckets) >= l.max {
		return l.overflow
	}
	b := l.newBucket()
	l.buckets[key] = b
	return b
}

// sweep forgets buckets that have been idle long enough to be full: about once a
// minute, or once a second while there is no room. Never more often: a sweep walks
// every bucket, and a flood of new clients must not make each request pay for one.
func (l *limiter) sweep(now time.Time) {
	since := now.Sub(l.swept)
	if since < time.Minute && (len(l.buckets) < l.max || since < time.Second) {
		return
	}
	l.swept = now
	full := l.every * time.Duration(l.burst)
	for k, b := range l.buckets {
		if now.Sub(b.seen) > full {
			delete(l.buckets, k)
		}
	}
}

// retryAfter is a Retry-After header's value for d: whole seconds, at least one.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(int(math.Ceil(max(d, time.Second).Seconds())))
}

// ClientIP returns a function that names the client of a request for rate limits
// (clientip.FromRequest): the connection's peer, or, behind a proxy or load balancer,
// the last address in header, the one the proxy itself added; an IPv6 client by its /64.
// An empty header means there is no proxy.
func ClientIP(header string) func(*http.Request) string {
	return clientip.FromRequest(header)
}
