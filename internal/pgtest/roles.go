package pgtest

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Roles is a fresh empty database set up by deploy/postgres/roles.sql, the script the
// README gives operators, under role names of the test's own (roles belong to the
// whole cluster, so parallel tests must not share them). Nothing is migrated yet.
type Roles struct {
	Migrate, Runtime       string // the role names
	MigrateURL, RuntimeURL string // the database, connecting as each role
	URL                    string // the database, connecting as the server's superuser
}

// NewRoles creates the database and the two roles for t. The database and then the
// roles are dropped when t ends.
func NewRoles(t testing.TB) Roles {
	t.Helper()
	ctx := context.Background()
	suffix := randomHex(4)
	r := Roles{Migrate: "keysync_migrate_" + suffix, Runtime: "keysync_app_" + suffix}

	// Cleanups run last-registered first: this one, registered before the database
	// exists, runs after the database is dropped, when nothing the roles own is left.
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), AdminURL())
		if err != nil {
			t.Errorf("pgtest: drop roles: %v", err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP ROLE IF EXISTS "+r.Migrate+", "+r.Runtime); err != nil {
			t.Errorf("pgtest: drop roles: %v", err)
		}
	})
	r.URL = EmptyURL(t)

	script, err := repoFile("deploy/postgres/roles.sql")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	script = strings.NewReplacer("keysync_migrate", r.Migrate, "keysync_app", r.Runtime).Replace(script)
	conn, err := pgx.Connect(ctx, r.URL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	// Without arguments pgx sends the script as one simple query: every statement runs.
	if _, err := conn.Exec(ctx, script); err != nil {
		t.Fatalf("pgtest: deploy/postgres/roles.sql: %v", err)
	}
	r.MigrateURL, r.RuntimeURL = WithUser(r.URL, r.Migrate), WithUser(r.URL, r.Runtime)
	return r
}

// WithUser returns raw connecting as user, with no password (the local server trusts
// loopback connections).
func WithUser(raw, user string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return raw + " user=" + user // a keyword/value string: a later key wins
	}
	u.User = url.User(user)
	return u.String()
}

// repoFile reads a file by its path from the repository's root, found as the nearest
// directory above the working directory (a test's package) that holds go.mod.
func repoFile(path string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			b, err := os.ReadFile(filepath.Join(dir, path))
			return string(b), err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
