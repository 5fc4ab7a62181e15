package cryptolens

import (
	"errors"
	"fmt"
	"strings"

	"github.com/keysync/keysync/internal/failure"
)

// Error kinds. Callers test them with errors.Is; every error the client returns also
// matches exactly one of ErrRetryable and ErrPermanent, because each kind carries its
// class.
var (
	// ErrRetryable matches failures that may succeed later: HTTP 5xx and 429, timeouts,
	// transport errors, bodies that are not Cryptolens' JSON, and "Something went wrong".
	// It is keysync's one retryable class (failure.ErrRetryable).
	ErrRetryable = failure.ErrRetryable
	// ErrPermanent matches failures that will fail again the same way until someone
	// changes the configuration or the input (failure.ErrPermanent).
	ErrPermanent = failure.ErrPermanent

	// ErrAuth: the token is wrong, or the vendor's Cryptolens subscription has lapsed
	// ("Unable to authenticate.", "No active subscription found.").
	ErrAuth = failure.NewPermanent("cryptolens: unable to authenticate")
	// ErrAccessDenied: the token lacks the method's permission or is locked to another
	// product or key ("Access denied.").
	ErrAccessDenied = failure.NewPermanent("cryptolens: access denied")
	// ErrKeyNotFound: no such key in the product ("Could not find the key.").
	ErrKeyNotFound = failure.NewPermanent("cryptolens: key not found")
	// ErrProductNotFound: no such product ("Could not find the product.").
	ErrProductNotFound = failure.NewPermanent("cryptolens: product not found")
	// ErrInvalidInput: Cryptolens refused the parameters ("The input parameters were
	// incorrect.", notes too long, ...).
	ErrInvalidInput = failure.NewPermanent("cryptolens: invalid input")
	// ErrRejected: any other refusal (result 1 with a message not listed above).
	ErrRejected = failure.NewPermanent("cryptolens: request rejected")

	// ErrServer: Cryptolens failed (HTTP 5xx, "Something went wrong", a body that is not
	// its JSON envelope).
	ErrServer = failure.NewRetryable("cryptolens: server error")
	// ErrRateLimited: HTTP 429.
	ErrRateLimited = failure.NewRetryable("cryptolens: rate limited")
	// ErrUnreachable: the request did not complete (timeout, connection refused or
	// reset). For a mutating call the change may or may not have been applied: read
	// the key again before deciding what to send.
	ErrUnreachable = failure.NewRetryable("cryptolens: unreachable")
)

// Error is a failed call. Its text never contains the access token.
type Error struct {
	// Method is the Web API method, e.g. "ExtendLicense".
	Method string
	// Status is the HTTP status, 0 when no response arrived.
	Status int
	// Message is Cryptolens' message, when it sent one.
	Message string
	// Kind is one of the package's Err* kinds.
	Kind error
	// cause is the underlying error, already scrubbed of the token.
	cause error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cryptolens %s: %s", e.Method, strings.TrimPrefix(e.Kind.Error(), "cryptolens: "))
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %q", e.Message)
	}
	if e.cause != nil {
		fmt.Fprintf(&b, ": %v", e.cause)
	}
	return b.String()
}

// Is matches the error's kind and its class (ErrRetryable or ErrPermanent).
func (e *Error) Is(target error) bool { return errors.Is(e.Kind, target) }

// Unwrap returns the underlying cause (a context error, for instance).
func (e *Error) Unwrap() error { return e.cause }

// IsRetryable reports whether err is a failure that may succeed later.
func IsRetryable(err error) bool { return errors.Is(err, ErrRetryable) }

// classify maps a result-1 message to its kind. Cryptolens' messages are fixed English
// sentences; they are matched loosely (case, trailing period) so that a reworded period
// or capital does not turn a permanent refusal into an endless retry, or the reverse.
func classify(message string, status int) error {
	m := strings.ToLower(strings.TrimSpace(message))
	switch {
	case strings.Contains(m, "unable to authenticate"), strings.Contains(m, "no active subscription"):
		return ErrAuth
	case strings.Contains(m, "access denied"), strings.Contains(m, "not enough permission"):
		return ErrAccessDenied
	case strings.Contains(m, "could not find the key"), strings.Contains(m, "key not found"),
		strings.Contains(m, "unable to find the key"):
		return ErrKeyNotFound
	case strings.Contains(m, "could not find the product"), strings.Contains(m, "product not found"):
		return ErrProductNotFound
	case strings.Contains(m, "input parameters were incorrect"), strings.Contains(m, "cannot be more than"),
		strings.Contains(m, "is not possible"):
		return ErrInvalidInput
	case strings.Contains(m, "something went wrong"):
		return ErrServer
	case status >= 500:
		return ErrServer
	}
	return ErrRejected
}
