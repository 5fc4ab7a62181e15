package admin_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

func readyz(h *admin.Health) (int, string) {
	w := httptest.NewRecorder()
	h.Readyz(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return w.Code, w.Body.String()
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.EmptyURL(t)
	hp, err := pgtest.HostPort(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := pgtest.NewProxy(t, hp)
	pool, err := pgxpool.New(ctx, pgtest.WithHostPort(url, proxy.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	h := admin.NewHealth(postgres.NewStore(pool))

	if code, body := readyz(h); code != 503 || !strings.Contains(body, "migrations") {
		t.Fatalf("before migrating: got %d %s, want 503 naming migrations", code, body)
	}
	if _, err := postgres.Migrate(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(h); code != 200 || !strings.Contains(body, `"status":"ready"`) {
		t.Fatalf("after migrating: got %d %s, want 200 with versions", code, body)
	}
	proxy.Cut()
	if code, body := readyz(h); code != 503 || !strings.Contains(body, `"database":"unreachable"`) {
		t.Fatalf("database down: got %d %s, want 503 unreachable", code, body)
	}
	proxy.Restore()
	if code, _ := readyz(h); code != 200 {
		t.Fatalf("database back: got %d, want 200", code)
	}
	h.Drain()
	if code, body := readyz(h); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("draining: got %d %s, want 503 draining", code, body)
	}
	w := httptest.NewRecorder()
	h.Healthz(w, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if w.Code != 200 {
		t.Fatalf("healthz while draining: got %d, want 200 (alive)", w.Code)
	}
}

// /readyz says how old the last completed sweep is, and that it is overdue past twice
// the interval, without failing readiness: the replica still takes webhooks.
func TestReadyzReportsOverdueSweep(t *testing.T) {
	t.Parallel()
	const interval = time.Hour
	for name, tc := range map[string]struct {
		finishedAgo time.Duration // 0: no completed sweep
		runningFor  time.Duration // the first run of any kind started this long ago
		wantOverdue bool
	}{
		"recent sweep":                  {finishedAgo: 30 * time.Minute, runningFor: 40 * time.Minute},
		"last sweep 3h ago":             {finishedAgo: 3 * time.Hour, runningFor: 3 * time.Hour, wantOverdue: true},
		"fresh install, sweeping":       {runningFor: time.Minute},
		"no sweep ever completed in 5h": {runningFor: 5 * time.Hour, wantOverdue: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := pgtest.Pool(t)
			ctx := context.Background()
			if _, err := pool.Exec(ctx, `INSERT INTO sync_runs (kind, status, started_at, finished_at)
				VALUES ('catch_up', 'succeeded', now() - make_interval(secs => $1), now() - make_interval(secs => $1))`, tc.runningFor.Seconds()); err != nil {
				t.Fatal(err)
			}
			if tc.finishedAgo > 0 {
				if _, err := pool.Exec(ctx, `INSERT INTO sync_runs (kind, status, started_at, finished_at)
					VALUES ('sweep', 'succeeded', now() - make_interval(secs => $1 + 60), now() - make_interval(secs => $1))`, tc.finishedAgo.Seconds()); err != nil {
					t.Fatal(err)
				}
			}
			store := postgres.NewStore(pool)
			h := admin.NewHealth(store)
			h.LastSweep, h.SweepOverdueAfter = store.LastSweep, 2*interval
			code, body := readyz(h)
			var got map[string]string
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			if code != 200 || got["status"] != "ready" {
				t.Fatalf("got %d %s, want 200 ready", code, body)
			}
			if tc.finishedAgo == 0 {
				if got["last_sweep_age"] != "none completed" {
					t.Fatalf("last_sweep_age: got %q, want none completed", got["last_sweep_age"])
				}
			} else if age, err := time.ParseDuration(got["last_sweep_age"]); err != nil || age < tc.finishedAgo || age > tc.finishedAgo+time.Minute {
				t.Fatalf("last_sweep_age: got %q, want %s", got["last_sweep_age"], tc.finishedAgo)
			}
			if got["sweep_overdue"] != strconv.FormatBool(tc.wantOverdue) {
				t.Fatalf("sweep_overdue: got %q, want %v", got["sweep_overdue"], tc.wantOverdue)
			}
			if warned := strings.Contains(got["sweep_warning"], "KEYSYNC_RECONCILE_INTERVAL"); warned != tc.wantOverdue {
				t.Fatalf("sweep_warning: got %q, want one: %v", got["sweep_warning"], tc.wantOverdue)
			}
		})
	}
}
