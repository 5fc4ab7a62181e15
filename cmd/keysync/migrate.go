package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/postgres"
)

// migrateCmd applies the migrations (up, the default) or reports them (status).
// serve migrates at start too unless KEYSYNC_MIGRATE=false; this is for deployments
// that migrate as a separate step, as the migration role, before the new version
// starts as the runtime role.
type migrateCmd struct {
	noFlags
	status bool
}

func (c *migrateCmd) args(rest []string) error {
	switch {
	case len(rest) == 0 || len(rest) == 1 && rest[0] == "up":
	case len(rest) == 1 && rest[0] == "status":
		c.status = true
	default:
		return errors.New("migrate takes up or status")
	}
	return nil
}

func (c *migrateCmd) run(ctx context.Context, e cmdEnv) error {
	// A few connections: migrations run one at a time.
	pool, err := postgres.Open(ctx, e.cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		return err
	}
	defer pool.Close()

	// Apply, or only read what is applied; either way both goose's and River's.
	var st postgres.MigrationState
	if c.status {
		st, err = postgres.Migrations(ctx, pool)
	} else {
		st, err = migrateSchema(ctx, pool, e.cfg, e.log)
	}
	if err != nil {
		return err
	}

	state := "current"
	if !st.Current() {
		state = "pending"
	}
	fmt.Fprintf(e.stdout, "keysync migrations: %d of %d applied\nriver migrations:   %d of %d applied\nschema: %s\n",
		st.GooseCurrent, st.GooseTarget, st.RiverCurrent, st.RiverTarget, state)
	if !c.status && e.cfg.RuntimeRole != "" {
		fmt.Fprintf(e.stdout, "runtime role %s: granted\n", e.cfg.RuntimeRole)
	}
	return nil
}

// migrateSchema applies the migrations as the connecting role, which becomes the
// owner of what they create, then grants the runtime role (KEYSYNC_RUNTIME_ROLE), if
// one is named, what serve needs.
func migrateSchema(ctx context.Context, pool *pgxpool.Pool, cfg config, log zerolog.Logger) (postgres.MigrationState, error) {
	st, err := postgres.Migrate(ctx, pool, slogFor(log, "migrate"))
	if err != nil || cfg.RuntimeRole == "" {
		return st, err
	}
	if err := postgres.GrantRuntime(ctx, pool, cfg.RuntimeRole); err != nil {
		return st, err
	}
	log.Info().Str("runtime_role", cfg.RuntimeRole).Msg("granted the runtime role its rights")
	return st, nil
}

// requireCurrentSchema reads the migration state, changing nothing, and refuses a
// schema that is not current: a binary must never write through a schema it does not
// know, and a process that may not migrate (the runtime role, an operator command)
// can only say so.
func requireCurrentSchema(ctx context.Context, pool *pgxpool.Pool, hint string) (postgres.MigrationState, error) {
	st, err := postgres.Migrations(ctx, pool)
	if err == nil && !st.Current() {
		err = fmt.Errorf("the database schema is not current (%s): %s", st, hint)
	}
	return st, err
}
