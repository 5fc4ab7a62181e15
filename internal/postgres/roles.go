package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// grantLock is the advisory lock key held while GrantRuntime runs: Postgres fails one
// of two GRANTs on the same object at once ("tuple concurrently updated"), and replicas
// that migrate at start grant together.
const grantLock int64 = 0x6b657973796e6303 // "keysync" + 3

// relation is a table, view or sequence of keysync's schema, as GrantRuntime sees it.
type relation struct {
	Name       string
	Kind       string // pg_class.relkind: r, p (tables), v, m (views), S (sequences)
	AppendOnly bool   // a trigger refuses to change its rows (audit_log)
}

// versionTables record which migrations ran: serve reads them (readiness), only the
// migration role writes them.
var versionTables = map[string]bool{"goose_db_version": true, "river_migration": true}

// GrantRuntime gives role, the role `keysync serve` runs as, the rights serve needs on
// the current schema and no more: it reads and writes the rows of keysync's and River's
// tables, only reads and adds to the append-only tables (audit_log), only reads the
// views and the migration version tables, and owns nothing, so it can neither alter a
// table nor touch the audit log's trigger or its function. Default privileges cover the
// tables that later migrations create before the next GrantRuntime. Run it as the
// migration role, after Migrate; it is idempotent and safe to run from several
// replicas at once.
//
// It refuses, with an error naming the reason, a role that does not exist and one
// that could rewrite the audit log whatever it is granted: a superuser, a role with
// CREATEROLE, or a member of the audit log's owner (the migration role itself).
func GrantRuntime(ctx context.Context, pool *pgxpool.Pool, role string) error {
	return inTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", grantLock); err != nil {
			return fmt.Errorf("grant lock: %w", translate(err))
		}
		if err := checkRuntimeRole(ctx, tx, role); err != nil {
			return err
		}

		// Plan every statement from what the schema holds now, then apply them.
		var schema string
		if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			return fmt.Errorf("grant: %w", translate(err))
		}
		rows, err := tx.Query(ctx, schemaRelations)
		if err != nil {
			return fmt.Errorf("grant: %w", translate(err))
		}
		rels, err := pgx.CollectRows(rows, pgx.RowToStructByPos[relation])
		if err != nil {
			return fmt.Errorf("grant: %w", translate(err))
		}
		for _, stmt := range runtimeGrants(schema, role, rels) {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("grant to %s: %w", role, translate(err))
			}
		}
		return nil
	})
}

// schemaRelations lists the current schema's tables, views and sequences, and marks the
// tables whose rows keysync's append-only trigger guards.
const schemaRelations = `
SELECT c.relname::text, c.relkind::text,
       EXISTS (SELECT 1 FROM pg_trigger t
               WHERE t.tgrelid = c.oid AND t.tgfoid = to_regproc('keysync_audit_log_append_only'))
FROM pg_class c
WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
ORDER BY c.relname`

// checkRuntimeRole refuses a role that does not exist, and one whose rights already
// reach past any grant; and a caller that is not the tables' owner, whose GRANTs
// Postgres would turn into warnings.
func checkRuntimeRole(ctx context.Context, tx pgx.Tx, role string) error {
	var found, super, createRole, ownerMember, granterOwns bool
	err := tx.QueryRow(ctx, `
		SELECT true, r.rolsuper, r.rolcreaterole, pg_has_role(r.oid, c.relowner, 'MEMBER'), pg_has_role(c.relowner, 'USAGE')
		FROM pg_roles r, pg_class c
		WHERE r.rolname = $1 AND c.oid = to_regclass('audit_log')`, role).Scan(&found, &super, &createRole, &ownerMember, &granterOwns)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("check role %s: %w", role, translate(err))
	}
	switch {
	case !found:
		return fmt.Errorf("runtime role %s: no such role, or no audit_log to guard (create the role as deploy/postgres/roles.sql does, and migrate first)", role)
	case !granterOwns:
		// Postgres would only warn, granting nothing: say so rather than start half-set.
		return fmt.Errorf("grant to %s: run keysync migrate as the migration role, the owner of the tables", role)
	case super:
		return fmt.Errorf("runtime role %s is a superuser: it could rewrite the audit log", role)
	case createRole:
		return fmt.Errorf("runtime role %s has CREATEROLE: it could make itself the audit log's owner", role)
	case ownerMember:
		return fmt.Errorf("runtime role %s owns the audit log (or is a member of its owner): it could rewrite it; serve must run as a role of its own", role)
	}
	return nil
}

// runtimeGrants plans the statements that give role its rights on rels in schema. The
// REVOKEs take back what an earlier, broader grant (or default privilege) gave.
func runtimeGrants(schema, role string, rels []relation) []string {
	s, r := pgx.Identifier{schema}.Sanitize(), pgx.Identifier{role}.Sanitize()
	stmts := []string{"GRANT USAGE ON SCHEMA " + s + " TO " + r}
	for _, rel := range rels {
		name := pgx.Identifier{schema, rel.Name}.Sanitize()
		switch {
		case rel.Kind == "S":
			stmts = append(stmts, fmt.Sprintf("GRANT USAGE, SELECT ON SEQUENCE %s TO %s", name, r))
		case rel.Kind == "v" || rel.Kind == "m":
			// A simple view is updatable with its owner's rights on the table below.
			stmts = append(stmts, fmt.Sprintf("GRANT SELECT ON %s TO %s", name, r),
				fmt.Sprintf("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON %s FROM %s", name, r))
		case rel.AppendOnly:
			stmts = append(stmts, fmt.Sprintf("GRANT SELECT, INSERT ON %s TO %s", name, r),
				fmt.Sprintf("REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON %s FROM %s", name, r))
		case versionTables[rel.Name]:
			stmts = append(stmts, fmt.Sprintf("GRANT SELECT ON %s TO %s", name, r),
				fmt.Sprintf("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON %s FROM %s", name, r))
		default:
			stmts = append(stmts, fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s", name, r))
		}
	}
	return append(stmts,
		fmt.Sprintf("ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %s", s, r),
		fmt.Sprintf("ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT USAGE, SELECT ON SEQUENCES TO %s", s, r))
}
