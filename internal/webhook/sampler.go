package webhook

import (
	"sync"
	"time"
)

// sampler lets through one event per reason and interval, and counts the others: the
// log of a flood of bad requests stays a few lines a second, and says how many it left
// out. The reasons are the handler's fixed error texts, so the map stays small.
type sampler struct {
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	reasons map[string]*sample
}

type sample struct {
	last       time.Time // when this reason was last let through
	suppressed int       // events of this reason since then that were not
}

func newSampler(every time.Duration, now func() time.Time) *sampler {
	return &sampler{every: every, now: now, reasons: map[string]*sample{}}
}

// allow reports whether an event of reason may be logged now and, when it may, how many
// of the same reason were held back since the last one that was.
func (s *sampler) allow(reason string) (ok bool, suppressed int) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st, seen := s.reasons[reason]
	if !seen {
		s.reasons[reason] = &sample{last: now}
		return true, 0
	}
	if now.Sub(st.last) < s.every {
		st.suppressed++
		return false, 0
	}
	suppressed = st.suppressed
	st.last, st.suppressed = now, 0
	return true, suppressed
}
