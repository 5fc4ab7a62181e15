package metrics_test

import (
	"testing"

	"github.com/keysync/keysync/internal/metrics"
)

// CallCounts sums each system's calls; a Stripe answer other than 2xx and a Cryptolens
// outcome other than ok are errors.
func TestCallCounts(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	for outcome, n := range map[string]int{"2xx": 7, "4xx": 2, "429": 1, "5xx": 1, "error": 1} {
		m.StripeCalls.WithLabelValues("GET /v1/subscriptions/{id}", outcome).Add(float64(n))
	}
	m.StripeCalls.WithLabelValues("GET /v1/events", "2xx").Add(3)
	for outcome, n := range map[string]int{"ok": 9, "timeout": 2, "access denied": 1} {
		m.CryptolensCalls.WithLabelValues("GetKey", outcome).Add(float64(n))
	}
	stripe, cryptolens := m.CallCounts()
	if want := (metrics.CallCount{Calls: 15, Errors: 5}); stripe != want {
		t.Errorf("Stripe: got %+v, want %+v", stripe, want)
	}
	if want := (metrics.CallCount{Calls: 12, Errors: 3}); cryptolens != want {
		t.Errorf("Cryptolens: got %+v, want %+v", cryptolens, want)
	}
	if s, c := metrics.New().CallCounts(); s != (metrics.CallCount{}) || c != (metrics.CallCount{}) {
		t.Errorf("no calls: got %+v and %+v", s, c)
	}
}
