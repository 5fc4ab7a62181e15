package postgres

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/keysync/keysync/migrations"
)

// riverMigrationLock is the advisory lock key held while River's migrator runs. goose
// takes its own session lock; River's migrator takes none, so replicas starting together
// would race to create the same tables without this.
const riverMigrationLock int64 = 0x6b657973796e6301 // "keysync" + 1

// MigrationState says how far the database's schema is from this binary's.
type MigrationState struct {
	GooseCurrent, GooseTarget int64
	RiverCurrent, RiverTarget int
}

// Current reports whether every migration this binary knows is applied.
func (m MigrationState) Current() bool {
	return m.GooseCurrent >= m.GooseTarget && m.RiverCurrent >= m.RiverTarget
}

// Migrate applies keysync's goose migrations and then River's, and returns the state
// reached. It is safe when several replicas start at once: goose holds a Postgres
// session lock and River's migrator runs under an advisory lock of keysync's. The
// connecting role becomes the owner of what the migrations create: it must be the
// migration role, never the one serve runs as (see GrantRuntime).
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (MigrationState, error) {
	provider, db, err := newGoose(pool, log)
	if err != nil {
		return MigrationState{}, err
	}
	defer db.Close()
	if _, err := provider.Up(ctx); err != nil {
		return MigrationState{}, fmt.Errorf("goose up: %w", translate(err))
	}
	if err := migrateRiver(ctx, pool, log); err != nil {
		return MigrationState{}, err
	}
	return Migrations(ctx, pool)
}

// Migrations returns the migration state without changing anything: it only reads
// (goose's own status would create its version table), so the runtime role, which may
// create nothing, can check the schema before it serves.
func Migrations(ctx context.Context, pool *pgxpool.Pool) (MigrationState, error) {
	st, err := migrationTargets()
	if err != nil {
		return st, err
	}

	// A database nobody migrated has neither version table: nothing is applied.
	var gooseTable, riverTable bool
	if err := pool.QueryRow(ctx, versionTablesExist).Scan(&gooseTable, &riverTable); err != nil {
		return st, fmt.Errorf("migration versions: %w", translate(err))
	}
	if gooseTable {
		if err := pool.QueryRow(ctx, gooseVersion).Scan(&st.GooseCurrent); err != nil {
			return st, fmt.Errorf("goose versions: %w", translate(err))
		}
	}
	if riverTable {
		if err := pool.QueryRow(ctx, riverVersion).Scan(&st.RiverCurrent); err != nil {
			return st, fmt.Errorf("river versions: %w", translate(err))
		}
	}
	return st, nil
}

const (
	versionTablesExist = `SELECT to_regclass('goose_db_version') IS NOT NULL, to_regclass('river_migration') IS NOT NULL`
	gooseVersion       = `SELECT coalesce(max(version_id), 0) FROM goose_db_version WHERE is_applied`
	riverVersion       = `SELECT coalesce(max(version), 0) FROM river_migration WHERE line = 'main'`
)

// MigrationSources returns the names of keysync's own migration files, in order.
func MigrationSources() ([]string, error) {
	return fs.Glob(migrations.FS, "*.sql")
}

func newGoose(pool *pgxpool.Pool, log *slog.Logger) (*goose.Provider, interface{ Close() error }, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, nil, fmt.Errorf("goose locker: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	opts := []goose.ProviderOption{goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true)}
	if log != nil {
		opts = append(opts, goose.WithSlog(log))
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, opts...)
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("goose provider: %w", err)
	}
	return provider, db, nil
}

func newRiverMigrator(pool *pgxpool.Pool, log *slog.Logger) (*rivermigrate.Migrator[pgx.Tx], error) {
	cfg := &rivermigrate.Config{}
	if log != nil {
		cfg.Logger = log
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), cfg)
	if err != nil {
		return nil, fmt.Errorf("river migrator: %w", err)
	}
	return m, nil
}

func migrateRiver(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("river migrate: %w", translate(err))
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", riverMigrationLock); err != nil {
		return fmt.Errorf("river migrate lock: %w", translate(err))
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", riverMigrationLock)
	}()
	m, err := newRiverMigrator(pool, log)
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrate: %w", translate(err))
	}
	return nil
}

// MigrationsCurrent reports whether every migration this binary knows is applied, with
// a short description of the versions, for /readyz. It costs one query, so probes can
// call it often.
func (s *Store) MigrationsCurrent(ctx context.Context) (bool, string, error) {
	target, err := migrationTargets()
	if err != nil {
		return false, "", err
	}
	st := target
	err = s.pool.QueryRow(ctx, "SELECT ("+gooseVersion+"), ("+riverVersion+")").
		Scan(&st.GooseCurrent, &st.RiverCurrent)
	if err != nil {
		return false, "", fmt.Errorf("migration versions: %w", translate(err))
	}
	return st.Current(), st.String(), nil
}

// migrationTargets returns the latest versions this binary knows (the Current fields
// are zero).
var migrationTargets = sync.OnceValues(func() (MigrationState, error) {
	var st MigrationState
	names, err := MigrationSources()
	if err != nil {
		return st, err
	}
	for _, n := range names {
		v, err := strconv.ParseInt(strings.SplitN(n, "_", 2)[0], 10, 64)
		if err != nil {
			return st, fmt.Errorf("migration file %s: no version prefix", n)
		}
		st.GooseTarget = max(st.GooseTarget, v)
	}
	m, err := newRiverMigrator(nil, nil)
	if err != nil {
		return st, err
	}
	for _, v := range m.AllVersions() {
		st.RiverTarget = max(st.RiverTarget, v.Version)
	}
	return st, nil
})

// String describes the state as "goose 1/1, river 8/8".
func (m MigrationState) String() string {
	return fmt.Sprintf("goose %d/%d, river %d/%d", m.GooseCurrent, m.GooseTarget, m.RiverCurrent, m.RiverTarget)
}
