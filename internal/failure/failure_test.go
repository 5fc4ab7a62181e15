package failure_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keysync/keysync/internal/failure"
)

// A kind matches itself and its own class, wrapped or not, and never the other class.
func TestKindsMatchTheirClass(t *testing.T) {
	t.Parallel()
	retry, perm := failure.NewRetryable("x: unreachable"), failure.NewPermanent("x: not found")
	tests := map[string]struct {
		err              error
		retryable, perma bool
	}{
		"retryable kind":         {retry, true, false},
		"permanent kind":         {perm, false, true},
		"wrapped retryable kind": {fmt.Errorf("get key: %w", retry), true, false},
		"wrapped permanent kind": {fmt.Errorf("sync: %w", perm), false, true},
		"a plain error":          {errors.New("boom"), false, false},
		"nil":                    {nil, false, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got := failure.IsRetryable(tc.err); got != tc.retryable {
				t.Errorf("IsRetryable: got %v, want %v", got, tc.retryable)
			}
			if got := failure.IsPermanent(tc.err); got != tc.perma {
				t.Errorf("IsPermanent: got %v, want %v", got, tc.perma)
			}
		})
	}
	if errors.Is(retry, perm) || errors.Is(perm, retry) || !errors.Is(fmt.Errorf("w: %w", retry), retry) {
		t.Error("kinds must match themselves and not each other")
	}
	if got := retry.Error(); got != "x: unreachable" {
		t.Errorf("text: got %q, want %q", got, "x: unreachable")
	}
}
