package cryptolens

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// Each documented message maps to its kind (research: cryptolens.md §3).
func TestClassifyDocumentedMessages(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		status int
		want   error
	}{
		"Unable to authenticate.":                               {401, ErrAuth},
		"Unable to authenticate":                                {200, ErrAuth},
		"No active subscription found. Please contact support.": {200, ErrAuth},
		"Access denied.":                                        {200, ErrAccessDenied},
		"Access denied":                                         {403, ErrAccessDenied},
		"Not enough permission and/or key not found.":           {200, ErrAccessDenied},
		"Could not find the key.":                               {200, ErrKeyNotFound},
		"Could not find the product.":                           {200, ErrProductNotFound},
		"The input parameters were incorrect.":                  {200, ErrInvalidInput},
		"The notes field cannot be more than 500 characters.":   {200, ErrInvalidInput},
		"Creation of a license with 1200 day(s) is not possible in SKGL. The limit is 999 days": {200, ErrInvalidInput},
		"Something went wrong. Please contact support@cryptolens.io and we will try to fix it.": {200, ErrServer},
		"Could not find the customer.": {200, ErrRejected},
		"A brand new refusal.":         {200, ErrRejected},
		"A brand new failure.":         {503, ErrServer},
	}
	for msg, tc := range tests {
		if got := classify(msg, tc.status); got != tc.want {
			t.Errorf("classify(%q, %d): got %v, want %v", msg, tc.status, got, tc.want)
		}
	}
}

func TestTimeIsUTC(t *testing.T) {
	t.Parallel()
	tests := map[string]time.Time{
		`"2026-01-31T00:00:00"`:       time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC),
		`"2026-01-31T13:14:15.123"`:   time.Date(2026, 1, 31, 13, 14, 15, 123e6, time.UTC),
		`"2026-01-31T13:14:15+02:00"`: time.Date(2026, 1, 31, 11, 14, 15, 0, time.UTC),
		`"2026-01-31T13:14:15Z"`:      time.Date(2026, 1, 31, 13, 14, 15, 0, time.UTC),
		`null`:                        {},
	}
	for in, want := range tests {
		var got Time
		if err := json.Unmarshal([]byte(in), &got); err != nil || !got.Equal(want) || (!want.IsZero() && got.Location() != time.UTC) {
			t.Errorf("%s: got %v (%v), want %v UTC", in, got.Time, err, want)
		}
	}
	var bad Time
	if err := json.Unmarshal([]byte(`"31/01/2026"`), &bad); err == nil {
		t.Error("got nil error for an unknown date format")
	}
}

// Each kind matches its own class and no other kind, on its own and inside an Error.
func TestKindsMatchTheirClass(t *testing.T) {
	t.Parallel()
	kinds := map[error]bool{ // kind -> retryable
		ErrAuth: false, ErrAccessDenied: false, ErrKeyNotFound: false, ErrProductNotFound: false,
		ErrInvalidInput: false, ErrRejected: false, ErrServer: true, ErrRateLimited: true, ErrUnreachable: true,
	}
	for k, retryable := range kinds {
		for _, err := range []error{k, &Error{Method: "GetKey", Kind: k}} {
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
}
