package delivery

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"
	"golang.org/x/time/rate"

	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/stripeapi"
)

// ErrBusy means the license page's budget of Stripe reads is spent for the moment: the
// page answers 503 with Retry-After, and Stripe is not asked.
var ErrBusy = failure.NewRetryable("the license page's Stripe reads are over budget")

// SessionBudget configures SessionReads.
type SessionBudget struct {
	// PerSecond is the most Checkout Session reads a second, all clients together
	// (default 5: a quarter of stripeapi's default rate); Burst the most at once
	// (default PerSecond, at least 1).
	PerSecond float64
	Burst     int
	// NotFoundFor is how long a session id Stripe did not know is not found without
	// asking again (default 10 minutes); NotFoundMax bounds the ids remembered
	// (default 10,000; past it the oldest are forgotten first).
	NotFoundFor time.Duration
	NotFoundMax int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// SessionReads is the license page's Checkout: it reads sessions through another
// (stripeapi.Client, whose one rate limit every Sync shares) within a budget of its
// own, so that made-up session ids, each of which would cost a Stripe read, take at
// most that budget from the Syncs of paying customers. The ids Stripe did not know are
// remembered for a while: the same made-up id costs one read. It is safe for
// concurrent use.
type SessionReads struct {
	next   Checkout
	opts   SessionBudget
	budget *rate.Limiter
	log    zerolog.Logger

	mu sync.Mutex
	// unknown maps the ids Stripe did not know to when they are forgotten; order holds
	// them oldest first (all are remembered equally long).
	unknown map[string]time.Time
	order   []string
	// turnedAway counts the reads refused since the last warning, logged at most once a
	// minute: a flood must not flood the log too.
	turnedAway int
	warned     time.Time
}

// NewSessionReads returns the page's Checkout over next.
func NewSessionReads(next Checkout, opts SessionBudget, log zerolog.Logger) *SessionReads {
	if opts.PerSecond <= 0 {
		opts.PerSecond = 5
	}
	if opts.Burst <= 0 {
		opts.Burst = max(1, int(opts.PerSecond))
	}
	if opts.NotFoundFor <= 0 {
		opts.NotFoundFor = 10 * time.Minute
	}
	if opts.NotFoundMax <= 0 {
		opts.NotFoundMax = 10_000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &SessionReads{next: next, opts: opts, budget: rate.NewLimiter(rate.Limit(opts.PerSecond), opts.Burst), log: log,
		unknown: map[string]time.Time{}}
}

// GetCheckoutSession returns the session as next does. It returns stripeapi.ErrNotFound
// without a Stripe call for an id Stripe did not know within NotFoundFor, and ErrBusy,
// without a call either, when the budget is spent.
func (s *SessionReads) GetCheckoutSession(ctx context.Context, id string) (*stripe.CheckoutSession, error) {
	now := s.opts.Now()

	// 1. An id Stripe did not know a moment ago is not asked about again.
	if s.knownUnknown(id, now) {
		return nil, stripeapi.ErrNotFound
	}

	// 2. Within the budget, or not at all: waiting would hold the request, and the
	// page asks again by itself.
	if !s.budget.AllowN(now, 1) {
		s.turnAway(now)
		return nil, ErrBusy
	}

	// 3. Stripe's answer; a not found is remembered.
	sess, err := s.next.GetCheckoutSession(ctx, id)
	if errors.Is(err, stripeapi.ErrNotFound) {
		s.remember(id, now)
	}
	return sess, err
}

// knownUnknown reports whether Stripe did not know id within NotFoundFor.
func (s *SessionReads) knownUnknown(id string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forget(now)
	_, ok := s.unknown[id]
	return ok
}

// remember records that Stripe does not know id.
func (s *SessionReads) remember(id string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.unknown[id]; ok {
		return // two requests for it at once
	}
	s.unknown[id] = now.Add(s.opts.NotFoundFor)
	s.order = append(s.order, id)
	s.forget(now)
}

// forget drops the ids remembered long enough, and the oldest past NotFoundMax. The
// oldest come first in order, so it stops at the first it keeps.
func (s *SessionReads) forget(now time.Time) {
	for len(s.order) > 0 {
		oldest := s.order[0]
		if len(s.order) <= s.opts.NotFoundMax && now.Before(s.unknown[oldest]) {
			return
		}
		delete(s.unknown, oldest)
		s.order[0] = ""
		s.order = s.order[1:]
	}
}

// turnAway counts a refused read and warns at most once a minute, with how many.
func (s *SessionReads) turnAway(now time.Time) {
	s.mu.Lock()
	s.turnedAway++
	n := s.turnedAway
	if now.Sub(s.warned) < time.Minute {
		s.mu.Unlock()
		return
	}
	s.warned, s.turnedAway = now, 0
	s.mu.Unlock()
	s.log.Warn().Int("turned_away", n).Float64("reads_per_second", s.opts.PerSecond).
		Msg("license page: too many Checkout Session reads (a flood of made-up session ids?); answering 503 without asking Stripe")
}
