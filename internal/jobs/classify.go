package jobs

import (
	"github.com/keysync/keysync/internal/failure"
)

// Class is what a job does after a failure.
type Class int

const (
	// Retry: try again with backoff (NextRetry), using up an attempt. It is the class of
	// any failure not known to be permanent or an outage: a lost race or a bug fixed by
	// a deploy may pass the next time.
	Retry Class = iota
	// Outage: Stripe or Cryptolens is unavailable (server errors, rate limits, timeouts,
	// no answer). Nothing is wrong with the work itself, so an event job snoozes
	// without using up an attempt, however long the outage lasts.
	Outage
	// Permanent: the work will fail again the same way (failure.ErrPermanent: an unknown
	// subscription, a wrong key or token, a contradictory mapping). The job stops and
	// the failure is shown until someone fixes the cause.
	Permanent
)

// String names the class, for logs and test failures.
func (c Class) String() string {
	switch c {
	case Outage:
		return "outage"
	case Permanent:
		return "permanent"
	default:
		return "retry"
	}
}

// Classify is the one place that decides a failed job's class, from the failure classes
// that syncer's, Stripe's and Cryptolens' errors carry rather than from their sentinels. err is
// a failure: nil has no class.
func Classify(err error) Class {
	switch {
	case failure.IsPermanent(err):
		return Permanent
	case failure.IsRetryable(err):
		return Outage
	default:
		// Anything else, keysync's own database out of reach included
		// (postgres.ErrUnavailable): it is not an outside service, and while it is out
		// River can neither fetch nor finish jobs, so a long outage uses up no attempts
		// anyway and a short one (a failover, a full pool) is retried with backoff.
		return Retry
	}
}
