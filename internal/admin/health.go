// Package admin serves keysync's operational HTTP endpoints: the liveness and
// readiness probes and the admin API.
package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Checker reports whether the database answers and its schema is current.
type Checker interface {
	Ping(ctx context.Context) error
	MigrationsCurrent(ctx context.Context) (bool, string, error)
}

// Health serves /healthz and /readyz.
type Health struct {
	check    Checker
	draining atomic.Bool
	// CatchUpLag, if set, reports how far behind the Events API catch-up is; /readyz
	// shows it, with a warning past 25 days (Stripe keeps events for 30).
	CatchUpLag func() time.Duration
	// LastSweep, if set, reports how long ago the last sweep completed (or, with none,
	// how long keysync has run without one); /readyz shows it.
	LastSweep func(ctx context.Context) (age time.Duration, completed bool, err error)
	// SweepOverdueAfter is the age past which /readyz says the sweep is overdue.
	SweepOverdueAfter time.Duration
}

// NewHealth returns the health endpoints over check.
func NewHealth(check Checker) *Health { return &Health{check: check} }

// Drain makes /readyz answer 503 from now on, so a load balancer stops sending traffic
// before the server stops accepting it.
func (h *Health) Drain() { h.draining.Store(true) }

// Healthz answers 200 while the process is alive and serving HTTP.
func (h *Health) Healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// Readyz answers 200 when the database answers and every migration is applied, 503
// with the reason otherwise. The reason never carries connection details. An overdue
// sweep or a lagging catch-up is reported in the answer but leaves it ready: this
// replica still takes webhooks, and taking every replica out of the load balancer
// would lose them too.
func (h *Health) Readyz(w http.ResponseWriter, r *http.Request) {
	if h.draining.Load() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := h.check.Ping(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "database": "unreachable"})
		return
	}
	ok, detail, err := h.check.MigrationsCurrent(ctx)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "migrations": "unknown"})
		return
	}
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "migrations": "pending: " + detail})
		return
	}
	out := map[string]string{"status": "ready", "migrations": detail}
	if h.CatchUpLag != nil {
		lag := h.CatchUpLag().Round(time.Second)
		out["catch_up_lag"] = lag.String()
		if lag > 25*24*time.Hour {
			out["warning"] = "the Events API catch-up is more than 25 days behind; past 30 days events are lost and a full sweep runs"
		}
	}
	if h.LastSweep != nil {
		h.sweepDetail(ctx, out)
	}
	writeJSON(w, http.StatusOK, out)
}

// sweepDetail adds the last completed sweep's age to out, and a warning when it is
// overdue. A failed read leaves readiness alone: the database answered a ping just now.
func (h *Health) sweepDetail(ctx context.Context, out map[string]string) {
	age, completed, err := h.LastSweep(ctx)
	if err != nil {
		out["last_sweep_age"] = "unknown"
		return
	}
	age = age.Round(time.Second)
	out["last_sweep_age"] = age.String()
	if !completed {
		out["last_sweep_age"] = "none completed"
	}
	overdue := h.SweepOverdueAfter > 0 && age > h.SweepOverdueAfter
	out["sweep_overdue"] = strconv.FormatBool(overdue)
	if overdue {
		last := "no sweep has completed in " + age.String()
		if completed {
			last = "the last completed sweep finished " + age.String() + " ago"
		}
		out["sweep_warning"] = last + ", more than " + h.SweepOverdueAfter.String() +
			" (twice KEYSYNC_RECONCILE_INTERVAL): drift that webhooks missed is not being repaired; check the leader's logs for sweep errors"
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		_, _ = fmt.Fprint(w, `{"status":"error"}`)
	}
}
