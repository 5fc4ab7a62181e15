package stripeapi

import (
	"errors"
	"fmt"
	"testing"
)

// Each kind matches its own class and no other kind.
func TestKindsMatchTheirClass(t *testing.T) {
	t.Parallel()
	kinds := map[error]bool{ // kind -> retryable
		ErrNotFound: false, ErrAuth: false, ErrInvalid: false, ErrRateLimited: true, ErrUnavailable: true, ErrConflict: true,
	}
	for k, retryable := range kinds {
		err := fmt.Errorf("get customer: %w: no such customer", k)
		if IsRetryable(err) != retryable || errors.Is(err, ErrPermanent) == retryable {
			t.Errorf("%v: got retryable=%v permanent=%v, want retryable=%v",
				err, IsRetryable(err), errors.Is(err, ErrPermanent), retryable)
		}
		for other := range kinds {
			if got, want := errors.Is(err, other), other == k; got != want {
				t.Errorf("errors.Is(%v, %v): got %v, want %v", err, other, got, want)
			}
		}
	}
}
