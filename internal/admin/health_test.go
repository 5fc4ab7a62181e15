package admin_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
