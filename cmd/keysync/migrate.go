package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/keysync/keysync/internal/postgres"
)

// migrateCmd applies the migrations (up, the default) or reports them (status).
// serve migrates at start too; this is for deployments that migrate as a separate
// step, before the new version starts.
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
		st, err = postgres.Migrate(ctx, pool, slogFor(e.log, "migrate"))
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
	return nil
}
