package postgres_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// migratedRoles sets up deploy/postgres/roles.sql's two roles on a fresh database,
// migrates it as the migration role and grants the runtime role, as `keysync migrate`
// with KEYSYNC_RUNTIME_ROLE does. It returns the roles and a pool for each.
func migratedRoles(t *testing.T) (r pgtest.Roles, migrator, runtime *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	r = pgtest.NewRoles(t)
	migrator, runtime = newPool(t, r.MigrateURL), newPool(t, r.RuntimeURL)
	if _, err := postgres.Migrate(ctx, migrator, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("migrate as %s: %v", r.Migrate, err)
	}
	if err := postgres.GrantRuntime(ctx, migrator, r.Runtime); err != nil {
		t.Fatalf("grant %s: %v", r.Runtime, err)
	}
	return r, migrator, runtime
}

func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// The role serve runs as can add to the audit log and read it, and can do nothing that
// would rewrite it: each statement is refused by Postgres' privileges (SQLSTATE 42501),
// before the append-only trigger is even asked.
func TestRuntimeRoleCannotTamperWithAuditLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, migrator, runtime := migratedRoles(t)

	// What serve does: save a Sync's subscription row and its audit row.
	store := postgres.NewStore(runtime)
	err := store.SaveSync(ctx, syncer.SubscriptionRow{ID: "sub_1", CustomerID: "cus_1", Status: "active"},
		[]syncer.AuditRow{{SubscriptionID: "sub_1", Action: "extend", Outcome: syncer.OutcomeApplied, Cause: syncer.CauseWebhook, CauseID: "evt_1"}})
	if err != nil {
		t.Fatalf("runtime role saving a Sync: %v", err)
	}

	tampering := map[string]string{
		"update":                     `UPDATE audit_log SET outcome = 'failed'`,
		"delete":                     `DELETE FROM audit_log`,
		"truncate":                   `TRUNCATE audit_log`,
		"disable the triggers":       `ALTER TABLE audit_log DISABLE TRIGGER ALL`,
		"disable the update trigger": `ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete`,
		"drop the trigger":           `DROP TRIGGER audit_log_no_update_delete ON audit_log`,
		"replace the trigger function": `CREATE OR REPLACE FUNCTION keysync_audit_log_append_only() RETURNS trigger
			LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END; $$`,
		"drop the table":            `DROP TABLE audit_log`,
		"update through a view":     `UPDATE keysync_audit SET outcome = 'failed'`,
		"add a trigger":             `CREATE TRIGGER t BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION keysync_audit_log_append_only()`,
		"create a table":            `CREATE TABLE audit_log_copy (id bigint)`,
		"forge a migration version": `INSERT INTO goose_db_version (version_id, is_applied) VALUES (99999, true)`,
		"take the migration role":   `SET ROLE ` + r.Migrate,
	}
	for name, stmt := range tampering {
		t.Run(name, func(t *testing.T) {
			_, err := runtime.Exec(ctx, stmt)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" || strings.Contains(pgErr.Message, "append-only") {
				t.Fatalf("got %v, want a refusal for lack of privilege (42501) from Postgres itself", err)
			}
		})
	}

	// The row is as written, and the trigger and its function are the migration role's.
	var rows int
	var outcome, tableOwner, functionOwner string
	var triggersEnabled bool
	err = migrator.QueryRow(ctx, `SELECT (SELECT count(*) FROM audit_log), (SELECT min(outcome) FROM audit_log),
		(SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'audit_log'::regclass),
		(SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'keysync_audit_log_append_only'),
		(SELECT bool_and(tgenabled = 'O') FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass AND NOT tgisinternal)`).
		Scan(&rows, &outcome, &tableOwner, &functionOwner, &triggersEnabled)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 1 || outcome != "applied" || tableOwner != r.Migrate || functionOwner != r.Migrate || !triggersEnabled {
		t.Fatalf("got %d rows (%s), audit_log owned by %s, its function by %s, triggers enabled %v; want 1 (applied), both %s, true",
			rows, outcome, tableOwner, functionOwner, triggersEnabled, r.Migrate)
	}
}

// Everything else serve does needs only the rights granted: events in and pruned, runs,
// River's jobs, the readiness check.
func TestRuntimeRoleRunsTheStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, _, runtime := migratedRoles(t)
	store := postgres.NewStore(runtime)

	_, err := runtime.Exec(ctx, `INSERT INTO stripe_events (id, type, created, livemode, payload, source, status, received_at, processed_at)
		VALUES ('evt_old', 'invoice.paid', now(), false, '{}', 'webhook', 'processed', now() - interval '100 days', now() - interval '100 days')`)
	if err != nil {
		t.Fatalf("store an event: %v", err)
	}
	if n, err := store.PruneEvents(ctx, time.Now().Add(-90*24*time.Hour)); err != nil || n != 1 {
		t.Fatalf("prune: got %d, %v, want 1 event pruned", n, err)
	}
	id, err := store.StartRun(ctx, "sweep")
	if err != nil {
		t.Fatalf("start a run: %v", err)
	}
	if err := store.FinishRun(ctx, id, postgres.RunSummary{}); err != nil {
		t.Fatalf("finish a run: %v", err)
	}
	// A River job row: the id comes from a sequence, which needs its own grant.
	_, err = runtime.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue, state) VALUES ('{}', 'sync', 1, 'default', 'available')`)
	if err != nil {
		t.Fatalf("insert a River job: %v", err)
	}
	if ok, desc, err := store.MigrationsCurrent(ctx); err != nil || !ok {
		t.Fatalf("readiness check: got %v (%s), %v; want current", ok, desc, err)
	}
}

// A table a later migration creates is the runtime role's to use at once: the default
// privileges cover it before the next GrantRuntime.
func TestGrantRuntimeCoversLaterTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, migrator, runtime := migratedRoles(t)
	if _, err := migrator.Exec(ctx, `CREATE TABLE later (id bigint GENERATED BY DEFAULT AS IDENTITY, note text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := runtime.Exec(ctx, `INSERT INTO later (note) VALUES ('x'); UPDATE later SET note = 'y'; DELETE FROM later`); err != nil {
		t.Fatalf("runtime role on a later table: %v", err)
	}
}

// Replicas that migrate at start grant at once; Postgres fails one of two concurrent
// GRANTs on one object unless they take turns.
func TestGrantRuntimeConcurrently(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, migrator, _ := migratedRoles(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = postgres.GrantRuntime(ctx, migrator, r.Runtime)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent grants: %v", err)
	}
}

// A role that could rewrite the audit log whatever it is granted is refused as the
// runtime role, with the reason, and so is granting from any role but the owner.
func TestGrantRuntimeRefusesPowerfulRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, migrator, runtime := migratedRoles(t)
	// Granting from a role that owns nothing would grant nothing.
	if err := postgres.GrantRuntime(ctx, runtime, r.Runtime); err == nil || !strings.Contains(err.Error(), "as the migration role") {
		t.Fatalf("granting as the runtime role: got %v, want a refusal", err)
	}

	admin := newPool(t, r.URL)
	if _, err := admin.Exec(ctx, "ALTER ROLE "+r.Runtime+" CREATEROLE"); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct{ role, want string }{
		"the migration role itself": {r.Migrate, "owns the audit log"},
		"a superuser":               {"postgres", "superuser"},
		"a role with CREATEROLE":    {r.Runtime, "CREATEROLE"},
		"no such role":              {"keysync_nobody", "no such role"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := postgres.GrantRuntime(ctx, migrator, tc.role)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal saying %q", err, tc.want)
			}
		})
	}
}

// The runtime role checks the schema before serving: reading the versions must work
// without any right to create (goose's own status creates its version table).
func TestMigrationsOnlyReads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := pgtest.NewRoles(t)
	runtime := newPool(t, r.RuntimeURL)
	st, err := postgres.Migrations(ctx, runtime)
	if err != nil {
		t.Fatalf("runtime role reading an empty database's versions: %v", err)
	}
	if st.Current() || st.GooseCurrent != 0 || st.RiverCurrent != 0 || st.GooseTarget == 0 || st.RiverTarget == 0 {
		t.Fatalf("got %+v, want nothing applied out of some", st)
	}
	var exists bool
	if err := runtime.QueryRow(ctx, `SELECT to_regclass('goose_db_version') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Fatalf("goose_db_version exists: %v, %v; want nothing created", exists, err)
	}
}
