// Package failure is keysync's one vocabulary of failure classes: every error the Stripe
// and Cryptolens clients and the sync engine return is Retryable (it may succeed later:
// an outage, a rate limit) or Permanent (it fails again the same way until someone
// changes the configuration or the input), and the job classifier and the admin API
// decide from these two classes alone, never from a list of each adapter's errors.
package failure

import "errors"

var (
	// ErrRetryable matches failures that may succeed later.
	ErrRetryable = errors.New("retryable failure")
	// ErrPermanent matches failures that will fail again the same way.
	ErrPermanent = errors.New("permanent failure")
)

// kind is an error kind that also matches its class, so that the class of a kind is
// said once, where the kind is declared, rather than in a list kept in step with it.
type kind struct {
	text  string
	class error
}

func (k *kind) Error() string { return k.text }

// Is matches the kind's class.
func (k *kind) Is(target error) bool { return target == k.class }

// NewRetryable returns a new error kind that matches ErrRetryable.
func NewRetryable(text string) error { return &kind{text: text, class: ErrRetryable} }

// NewPermanent returns a new error kind that matches ErrPermanent.
func NewPermanent(text string) error { return &kind{text: text, class: ErrPermanent} }

// IsRetryable reports whether err (or an error it wraps) is of the ErrRetryable class.
func IsRetryable(err error) bool { return errors.Is(err, ErrRetryable) }

// IsPermanent reports whether err (or an error it wraps) is of the ErrPermanent class.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }
