package postgres_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/migrations"
)

// Entitled-through only moves forward, as paid-through does; the expiry block keysync
// saw is stored as the Sync last left it.
func TestEntitledThroughOnlyMovesForward(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(pgtest.Pool(t))
	ctx := context.Background()
	later := time.Date(2027, 5, 1, 0, 0, 0, 0, time.UTC)
	earlier := later.AddDate(0, -1, 0)
	save := func(through time.Time, seen bool) syncer.SubscriptionRow {
		t.Helper()
		row := syncer.SubscriptionRow{ID: "sub_1", CustomerID: "cus_1", Status: "active", EntitledThrough: &through, ExpiryBlockSeen: seen}
		if err := store.SaveSync(ctx, row, nil); err != nil {
			t.Fatal(err)
		}
		got, err := store.GetSubscription(ctx, "sub_1")
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := save(later, true); !got.EntitledThrough.Equal(later) || !got.ExpiryBlockSeen {
		t.Fatalf("got %v, %v, want %s, true", got.EntitledThrough, got.ExpiryBlockSeen, later)
	}
	if got := save(earlier, false); !got.EntitledThrough.Equal(later) || got.ExpiryBlockSeen {
		t.Fatalf("after an earlier date: got %v, %v, want %s kept, false", got.EntitledThrough, got.ExpiryBlockSeen, later)
	}
}

// Rows from before entitled-through keep their keys' targets: the migration fills it
// with paid-through, the basis of the expiry until then.
func TestEntitledThroughMigrationBackfills(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, emptyDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provider.UpTo(ctx, 3); err != nil {
		t.Fatal(err)
	}
	paid := time.Date(2027, 5, 1, 0, 0, 0, 0, time.UTC)
	if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (id, customer_id, status, paid_through) VALUES ('sub_paid', 'cus_1', 'active', $1),
		('sub_new', 'cus_2', 'incomplete', NULL)`, paid); err != nil {
		t.Fatal(err)
	}
	if _, err := provider.UpTo(ctx, 4); err != nil {
		t.Fatal(err)
	}
	got := map[string]sql.NullTime{}
	rows, err := pool.Query(ctx, `SELECT id, entitled_through FROM subscriptions WHERE NOT expiry_block_seen`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var at sql.NullTime
		if err := rows.Scan(&id, &at); err != nil {
			t.Fatal(err)
		}
		got[id] = at
	}
	if len(got) != 2 || !got["sub_paid"].Time.Equal(paid) || got["sub_new"].Valid {
		t.Fatalf("got %v, want sub_paid entitled through %s and sub_new through nothing", got, paid)
	}
}
