-- keysync's two database roles, so that the daemon cannot rewrite its own audit log.
--
--   keysync_migrate  owns the schema. `keysync migrate` runs as it (a Kubernetes Job, the
--                    systemd unit's ExecStartPre=): it creates the tables and then grants
--                    keysync_app what serve needs (KEYSYNC_RUNTIME_ROLE=keysync_app).
--   keysync_app      is what `keysync serve` runs as (KEYSYNC_MIGRATE=false). It reads and
--                    writes rows, may only add rows to audit_log, and owns nothing: it
--                    cannot alter a table, disable the audit log's trigger or replace its
--                    function. serve refuses to start while the schema is not current.
--
-- Run this once, as a superuser, connected to keysync's (new, empty) database:
--   createdb keysync && psql -d keysync -f deploy/postgres/roles.sql
-- then give both roles a password (psql: \password keysync_migrate), or use your
-- platform's authentication, and run `keysync migrate` as keysync_migrate.
--
-- An existing install that ran everything as one role: that role owns the tables, so it
-- becomes the migration role. Create only keysync_app (the first CREATE ROLE below is
-- not needed), run `KEYSYNC_RUNTIME_ROLE=keysync_app keysync migrate` as the old role,
-- and point serve at keysync_app with KEYSYNC_MIGRATE=false.
-- (internal/pgtest runs this file, with role names of each test's own.)

CREATE ROLE keysync_migrate LOGIN;
CREATE ROLE keysync_app LOGIN;

-- The migration role owns the schema the tables live in, and nobody else may create
-- there (PostgreSQL 14 and older let every role create in public).
ALTER SCHEMA public OWNER TO keysync_migrate;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO keysync_app;
