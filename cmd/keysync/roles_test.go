package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// The deployment with two roles, end to end: `keysync migrate` as the migration role
// grants the runtime role (KEYSYNC_RUNTIME_ROLE); `keysync serve` as the runtime role,
// with KEYSYNC_MIGRATE=false, takes a webhook and turns it into a key and an audit row.
func TestServeAsRuntimeRole(t *testing.T) {
	t.Parallel()
	roles := pgtest.NewRoles(t)
	world := simtest.New(t, simtest.Options{})
	price := world.Price("App", 1000, `{"F1":true}`)
	checkout, _ := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	var created stripesim.Event
	for _, ev := range world.Stripe.Events() {
		if ev.Type == "customer.subscription.created" {
			created = ev
		}
	}

	// The migration Job.
	var out bytes.Buffer
	migrateVars := env(map[string]string{"DATABASE_URL": roles.MigrateURL, "KEYSYNC_RUNTIME_ROLE": roles.Runtime,
		"LOG_FORMAT": "json", "LOG_LEVEL": "warn"})
	if err := run(t.Context(), []string{"migrate"}, migrateVars, &out, io.Discard, nil); err != nil {
		t.Fatalf("migrate as %s: %v", roles.Migrate, err)
	}
	if want := "runtime role " + roles.Runtime + ": granted"; !strings.Contains(out.String(), want) || !strings.Contains(out.String(), "schema: current") {
		t.Fatalf("migrate printed %q, want the schema current and %q", out.String(), want)
	}

	// The Deployment.
	const secret = "whsec_runtime_role_test"
	srv := startServe(t, env(map[string]string{"DATABASE_URL": roles.RuntimeURL, "KEYSYNC_MIGRATE": "false",
		"STRIPE_WEBHOOK_SECRETS": secret, "STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL,
		"CRYPTOLENS_TOKEN": simtest.CryptolensToken, "CRYPTOLENS_API_BASE": world.CryptolensURL,
		"KEYSYNC_LISTEN": "127.0.0.1:0", "KEYSYNC_ADMIN_LISTEN": "127.0.0.1:0", "LOG_FORMAT": "json", "LOG_LEVEL": "info"}))
	if code, body := get(t, srv.base+"/readyz"); code != 200 {
		t.Fatalf("GET /readyz as the runtime role: got %d %s, want 200", code, body)
	}
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: created.Payload, Secret: secret})
	req, _ := http.NewRequest(http.MethodPost, srv.base+"/webhooks/stripe", bytes.NewReader(created.Payload))
	req.Header.Set("Stripe-Signature", sig.Header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("signed webhook: got %d, want 200\n%s", resp.StatusCode, srv.logs)
	}

	// The event's Sync created the key and audited it, all as the runtime role.
	pool, err := pgxpool.New(context.Background(), roles.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var action, outcome, sub string
	pgtest.WaitFor(t, 20*time.Second, "the event's audit row", func() bool {
		err := pool.QueryRow(context.Background(), `SELECT action, outcome, subscription_id FROM audit_log
			WHERE cause = 'webhook' AND cause_id = $1`, created.ID).Scan(&action, &outcome, &sub)
		return err == nil
	})
	if action != "create_key" || outcome != "applied" || sub != checkout.Subscription || len(world.Crypto.Keys(simtest.Product)) != 1 {
		t.Fatalf("got audit %s/%s for %s and %d keys, want create_key/applied for %s and one key",
			action, outcome, sub, len(world.Crypto.Keys(simtest.Product)), checkout.Subscription)
	}
	if err := srv.stop(); err != nil {
		t.Fatalf("serve returned %v, want a clean shutdown", err)
	}
	if logs := srv.logs.String(); !strings.Contains(logs, `"migrated":false`) {
		t.Fatalf("serve's logs do not say it left migrating to the Job:\n%s", logs)
	}
}

// With KEYSYNC_MIGRATE=false, serve never migrates, even as a role that could: on a
// schema that is not current it refuses to start, says what to do, and leaves the
// database as it was.
func TestServeWithoutMigrateRefusesStaleSchema(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.EmptyURL(t) // the server's superuser: migrating would succeed
	// A serve that got as far as serving is stopped at once: it should never get there.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	err := run(ctx, []string{"serve"}, env(map[string]string{"DATABASE_URL": dbURL, "KEYSYNC_MIGRATE": "false",
		"STRIPE_API_KEY": "sk_test_x", "CRYPTOLENS_TOKEN": "t", "KEYSYNC_LISTEN": "127.0.0.1:0", "KEYSYNC_ADMIN_LISTEN": "127.0.0.1:0", "LOG_FORMAT": "json"}),
		io.Discard, io.Discard, func(serveAddrs) { cancel() })
	if err == nil || !strings.Contains(err.Error(), "schema is not current (goose 0/") ||
		!strings.Contains(err.Error(), "run keysync migrate as the migration role") {
		t.Fatalf("got %v, want a refusal naming the versions and keysync migrate", err)
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	rows, _ := pool.Query(context.Background(), `SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'`)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) != 0 {
		t.Fatalf("got tables %v (%v) after serve refused, want none", tables, err)
	}
}
