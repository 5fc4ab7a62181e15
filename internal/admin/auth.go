package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/keysync/keysync/internal/clientip"
)

// Access is what a token may do.
type Access int

const (
	// ReadOnly may read: subscription status, the audit log, failed events.
	ReadOnly Access = iota + 1
	// ReadWrite may also act: sync, replay, reconcile.
	ReadWrite
)

// Principal is who made a request: the name of the token it carried (what the audit
// log and the request log say) and what that token may do.
type Principal struct {
	Name   string
	Access Access
}

// The names of the two tokens, as the logs and the audit log show them.
const (
	AdminTokenName = "admin"
	ReadTokenName  = "read"
)

// Throttle bounds failed authentications per client: a bucket of Burst failures that
// refills one failure every Refill. A client whose bucket is empty is answered 429
// before its token is looked at, so guessing goes no faster than one guess a Refill.
type Throttle struct {
	Burst  int
	Refill time.Duration
}

// DefaultThrottle lets a client fail 10 times at once, then once every 6 seconds.
var DefaultThrottle = Throttle{Burst: 10, Refill: 6 * time.Second}

// GuardConfig configures a Guard.
type GuardConfig struct {
	// AdminToken may do everything (KEYSYNC_ADMIN_TOKEN); ReadToken only reads
	// (KEYSYNC_ADMIN_READ_TOKEN). Either may be empty.
	AdminToken, ReadToken string
	// Throttle bounds failures per client; zero: DefaultThrottle.
	Throttle Throttle
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// maxClients bounds the clients the throttle remembers. Past it, clients that have no
// failures left to forgive are dropped, and new ones share one bucket: an attacker
// with many addresses cannot grow memory, only throttle the others that are new.
const maxClients = 10_000

// Guard checks bearer tokens and throttles the clients that keep failing. It keeps the
// SHA-256 digests of the tokens, never the tokens, and compares digests in constant
// time: neither a token's content nor its length shows in the time an answer takes.
type Guard struct {
	creds    []credential
	throttle Throttle
	now      func() time.Time

	mu      sync.Mutex
	clients map[string]*bucket
}

type credential struct {
	digest [sha256.Size]byte
	who    Principal
}

// bucket holds the failures a client may still make, refilled over time.
type bucket struct {
	left float64
	at   time.Time
}

// ErrUnauthenticated means the request carried no token or a wrong one.
var ErrUnauthenticated = errors.New("a valid bearer token is required")

// ThrottledError means the client failed too often; it may try again after RetryAfter.
type ThrottledError struct{ RetryAfter time.Duration }

func (e *ThrottledError) Error() string { return "too many failed attempts; retry later" }

// NewGuard returns a Guard over the configured tokens, or nil when there is none: with
// no token nothing may pass, so the surfaces it guards do not exist.
func NewGuard(cfg GuardConfig) *Guard {
	g := &Guard{throttle: cfg.Throttle, now: cfg.Now, clients: map[string]*bucket{}}
	if g.throttle.Burst <= 0 || g.throttle.Refill <= 0 {
		g.throttle = DefaultThrottle
	}
	if g.now == nil {
		g.now = time.Now
	}
	for _, t := range []struct {
		token string
		who   Principal
	}{{cfg.AdminToken, Principal{AdminTokenName, ReadWrite}}, {cfg.ReadToken, Principal{ReadTokenName, ReadOnly}}} {
		if t.token != "" {
			g.creds = append(g.creds, credential{digest: sha256.Sum256([]byte(t.token)), who: t.who})
		}
	}
	if len(g.creds) == 0 {
		return nil
	}
	return g
}

// SessionKey derives a key for signing sessions (the operator console's cookies) from
// the tokens' digests: every replica with the same tokens accepts the others'
// sessions, and changing a token ends every session signed under the old one.
func (g *Guard) SessionKey() []byte {
	m := hmac.New(sha256.New, []byte("keysync console session key v1"))
	for _, c := range g.creds {
		m.Write(c.digest[:])
		m.Write([]byte{byte(c.who.Access)})
	}
	return m.Sum(nil)
}

// Authenticate returns who presented token from client (an address, host:port or host).
// It returns ErrUnauthenticated for a missing or wrong token, and a *ThrottledError,
// without looking at the token, while client has no failures left.
func (g *Guard) Authenticate(client, token string) (Principal, error) {
	key := clientip.Key(client)

	// 1. A throttled client is turned away before its guess is checked.
	if wait := g.wait(key); wait > 0 {
		return Principal{}, &ThrottledError{RetryAfter: wait}
	}

	// 2. Digests of equal length, compared in constant time, every credential each
	// time: which token matched, if any, does not show in the timing either.
	presented := sha256.Sum256([]byte(token))
	var who Principal
	for _, c := range g.creds {
		if subtle.ConstantTimeCompare(presented[:], c.digest[:]) == 1 {
			who = c.who
		}
	}
	if token != "" && who.Access != 0 {
		return who, nil
	}

	// 3. A failure costs the client one from its bucket.
	g.fail(key)
	return Principal{}, ErrUnauthenticated
}

// wait returns how long client must wait before its next attempt (0: none).
func (g *Guard) wait(key string) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.clients[key]
	if !ok {
		// A client without a bucket of its own fails into the overflow bucket while
		// there is no room for one: it waits as that bucket says, or a flood of new
		// addresses would never be throttled at all.
		if b, ok = g.clients[g.room(key)]; !ok {
			return 0
		}
	}
	g.refill(b)
	if b.left >= 1 {
		return 0
	}
	return time.Duration(math.Ceil((1 - b.left) * float64(g.throttle.Refill)))
}

// fail takes one failure from client's bucket, making the bucket if it is new.
func (g *Guard) fail(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.clients[key]
	if !ok {
		key = g.room(key)
		if b, ok = g.clients[key]; !ok {
			b = &bucket{left: float64(g.throttle.Burst), at: g.now()}
			g.clients[key] = b
		}
	}
	g.refill(b)
	b.left = max(b.left-1, 0)
}

// room makes room for a new client and returns the key to file it under: its own, or
// the shared overflow bucket's when the map is full of clients still being throttled.
func (g *Guard) room(key string) string {
	if len(g.clients) < maxClients {
		return key
	}
	for k, b := range g.clients {
		if g.refill(b); b.left >= float64(g.throttle.Burst) {
			delete(g.clients, k)
		}
	}
	if len(g.clients) < maxClients {
		return key
	}
	return overflowKey
}

// overflowKey files the clients for whom there is no room; no client's key is like it.
const overflowKey = "overflow"

func (g *Guard) refill(b *bucket) {
	now := g.now()
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.left = min(float64(g.throttle.Burst), b.left+float64(elapsed)/float64(g.throttle.Refill))
	}
	b.at = now
}
