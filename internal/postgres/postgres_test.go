package postgres_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

func TestAuditLogIsAppendOnly(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `INSERT INTO audit_log (subscription_id, action, outcome, cause, params)
		VALUES ('sub_1', 'extend', 'applied', 'webhook', '{"days": 35}')`)
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	tests := map[string]string{
		"update":   `UPDATE audit_log SET outcome = 'failed'`,
		"delete":   `DELETE FROM audit_log`,
		"truncate": `TRUNCATE audit_log`,
	}
	for name, stmt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := pool.Exec(ctx, stmt)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "append-only") {
				t.Fatalf("got %v, want an append-only refusal", err)
			}
		})
	}
	var n int
	var outcome string
	if err := pool.QueryRow(ctx, `SELECT count(*), min(outcome) FROM audit_log`).Scan(&n, &outcome); err != nil {
		t.Fatal(err)
	}
	if n != 1 || outcome != "applied" {
		t.Fatalf("got %d rows with outcome %q, want 1 row, applied", n, outcome)
	}
}

// Replicas start together: every one runs Migrate at once on an empty database.
func TestMigrateConcurrentReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := emptyDatabase(t)
	const replicas = 4
	var wg sync.WaitGroup
	errs := make([]error, replicas)
	states := make([]postgres.MigrationState, replicas)
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := pgxpool.New(ctx, url)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			states[i], errs[i] = postgres.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
		}()
	}
	wg.Wait()
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		if !states[i].Current() {
			t.Fatalf("replica %d: got state %+v, want current", i, states[i])
		}
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var gooseRows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&gooseRows); err != nil {
		t.Fatal(err)
	}
	files, _ := postgres.MigrationSources()
	if gooseRows != len(files) {
		t.Fatalf("got %d goose versions applied, want %d (one per file, no double apply)", gooseRows, len(files))
	}
	for _, table := range []string{"stripe_events", "subscriptions", "audit_log", "sync_runs", "river_job", "river_leader"} {
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&ok); err != nil || !ok {
			t.Fatalf("table %s: got exists=%v err=%v, want it created", table, ok, err)
		}
	}
}

func TestMigrationsReportsPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, emptyDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	st, err := postgres.Migrations(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if st.Current() || st.GooseCurrent != 0 || st.RiverCurrent != 0 {
		t.Fatalf("got %+v on an empty database, want nothing applied", st)
	}
	if _, err := postgres.Migrate(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	st, err = postgres.Migrations(ctx, pool)
	if err != nil || !st.Current() {
		t.Fatalf("got %+v, %v after Migrate, want current", st, err)
	}
}

func TestUnreachableIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, err := postgres.Open(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1", postgres.PoolConfig{})
	if !errors.Is(err, postgres.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	_, err = postgres.Open(ctx, "postgres://user:hunter2@127.0.0.1:%zz/db", postgres.PoolConfig{})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("got %v, want an error without the password", err)
	}
}

func emptyDatabase(t *testing.T) string { return pgtest.EmptyURL(t) }

// A row that is not there is ErrNotFound, the syncer's sentinel, from every reader:
// pgx.ErrNoRows stays inside the package.
func TestMissingRowsAreErrNotFound(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(pgtest.Pool(t))
	ctx := context.Background()
	reads := map[string]func() error{
		"GetSubscription": func() error { _, err := store.GetSubscription(ctx, "sub_none"); return err },
		"GetEvent":        func() error { _, err := store.GetEvent(ctx, "evt_none"); return err },
		"EventPayload":    func() error { _, _, _, err := store.EventPayload(ctx, "evt_none"); return err },
		"locked GetSubscription": func() error {
			lock, err := store.LockSubscription(ctx, "sub_none")
			if err != nil {
				return err
			}
			defer lock.Release()
			_, err = lock.GetSubscription(ctx)
			return err
		},
	}
	for name, read := range reads {
		t.Run(name, func(t *testing.T) {
			err := read()
			if !errors.Is(err, postgres.ErrNotFound) || !errors.Is(err, syncer.ErrNotFound) || errors.Is(err, pgx.ErrNoRows) {
				t.Fatalf("got %v, want ErrNotFound and not pgx.ErrNoRows", err)
			}
		})
	}
	if _, ok, err := store.CatchUpCursor(ctx); ok || err != nil {
		t.Fatalf("CatchUpCursor with no run: got ok %v, %v, want false, nil", ok, err)
	}
}

// Every cause kind and outcome that syncer names is one audit_log's CHECK constraints
// accept.
func TestAuditVocabularyFitsTheSchema(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(pgtest.Pool(t))
	var audits []syncer.AuditRow
	for _, c := range []syncer.CauseKind{syncer.CauseWebhook, syncer.CauseSweep, syncer.CauseCatchUp, syncer.CauseOperator} {
		for _, o := range []syncer.Outcome{syncer.OutcomeApplied, syncer.OutcomeDryRun, syncer.OutcomeFailed} {
			audits = append(audits, syncer.AuditRow{SubscriptionID: "sub_w", Action: "extend", Outcome: o, Cause: c})
		}
	}
	row := syncer.SubscriptionRow{ID: "sub_w", CustomerID: "cus_w", Status: "active"}
	if err := store.SaveSync(context.Background(), row, audits); err != nil {
		t.Fatalf("got %v, want every cause and outcome stored", err)
	}
}

func TestAuditViews(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	store := postgres.NewStore(pool)
	old, mid, newer := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 10, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	err := store.SaveSync(ctx, syncer.SubscriptionRow{ID: "sub_v", CustomerID: "cus_v", Status: "active"}, []syncer.AuditRow{
		{SubscriptionID: "sub_v", LicenseKey: "K", Action: "create_key", Outcome: "applied", Cause: "webhook", Params: map[string]any{"period": 31, "expires": old}},
		{SubscriptionID: "sub_v", LicenseKey: "K", Action: "extend", Outcome: "applied", Cause: "webhook", Params: map[string]any{"days": 31, "old_expires": old, "new_expires": mid}},
		{SubscriptionID: "sub_v", LicenseKey: "K", Action: "extend", Outcome: "dry_run", Cause: "webhook", Params: map[string]any{"days": 28, "old_expires": mid, "new_expires": newer}},
		{SubscriptionID: "sub_v", LicenseKey: "K", Action: "add_feature", Outcome: "applied", Cause: "webhook", Params: map[string]any{"feature": 3}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM keysync_audit WHERE subscription_id = 'sub_v'`).Scan(&n); err != nil || n != 4 {
		t.Fatalf("keysync_audit: got %d, %v, want 4", n, err)
	}
	rows, err := pool.Query(ctx, `SELECT action, new_expires FROM keysync_license_timeline WHERE license_key = 'K' ORDER BY at, action`)
	if err != nil {
		t.Fatal(err)
	}
	type point struct {
		Action string
		At     time.Time
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (point, error) {
		var p point
		err := r.Scan(&p.Action, &p.At)
		return p, err
	})
	if err != nil || len(got) != 2 || !got[0].At.Equal(old) || !got[1].At.Equal(mid) {
		t.Fatalf("timeline: got %+v, %v: want the create and the applied extension only", got, err)
	}
}

func TestPruneEvents(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	store := postgres.NewStore(pool)
	_, err := pool.Exec(ctx, `INSERT INTO stripe_events (id, type, created, livemode, payload, source, status, received_at)
		SELECT 'evt_' || g, 'invoice.paid', now(), false, '{}', 'webhook',
		       (ARRAY['processed', 'ignored', 'pending', 'failed'])[1 + g % 4],
		       now() - (CASE WHEN g <= 6000 THEN interval '100 days' ELSE interval '1 day' END)
		FROM generate_series(1, 8000) g`)
	if err != nil {
		t.Fatal(err)
	}
	n, err := store.PruneEvents(ctx, time.Now().Add(-90*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// Old ones: 6,000, half of them processed or ignored.
	if n != 3000 {
		t.Fatalf("pruned %d, want 3000 (old processed and ignored only, across batches of 5000)", n)
	}
	var left, oldOpen int
	_ = pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE received_at < now() - interval '90 days') FROM stripe_events`).Scan(&left, &oldOpen)
	if left != 5000 || oldOpen != 3000 {
		t.Fatalf("got %d left (%d old pending or failed), want 5000 (3000)", left, oldOpen)
	}
}
