// Command keysync keeps Cryptolens license keys in sync with Stripe subscriptions.
//
// Usage: keysync serve | migrate [up|status] | version | help
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/reconcile"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

const usage = `keysync keeps Cryptolens license keys in sync with Stripe subscriptions.

Usage:
  keysync serve            run the daemon: webhooks, jobs, health (migrates first)
  keysync migrate [up]     apply database migrations (keysync's and River's)
  keysync migrate status   show applied and pending migrations
  keysync audit [filters]  print the audit log (--subscription, --customer, --key, --action,
                           --outcome, --cause, --since 24h, --format table|json|csv, ...)
  keysync status <sub>     Stripe, keysync, Cryptolens and the policy side by side (changes nothing)
  keysync sync <sub> [--dry-run]
                           sync one subscription now, as the operator
  keysync replay <event>|--since 24h [--type t]
                           process events again (the running keysync works them)
  keysync reconcile --once sweep now: compare every subscription with its key, queue
                           a Sync for each that drifted (the running keysync works them)
  keysync version          print the version
  keysync help             print this help

Configuration comes from environment variables; see the README.
`

// errUsage marks errors in the command line or configuration: exit status 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "keysync: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run executes one subcommand. onServing, if set, is told the address serve listens on.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, onServing func(addr string)) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "version", "--version":
		fmt.Fprintf(stdout, "keysync %s (Stripe API %s, %s)\n", version, events.StripeAPIVersion, runtime.Version())
		return nil
	case "serve", "migrate", "reconcile", "audit", "status", "sync", "replay":
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}

	cfg, err := loadConfig(getenv, os.ReadFile)
	if err != nil {
		return fmt.Errorf("%w: configuration:\n%w", errUsage, err)
	}
	log := newLogger(cfg, stderr)

	switch args[0] {
	case "serve":
		if len(args) > 1 {
			return fmt.Errorf("%w: serve takes no arguments", errUsage)
		}
		logConfig(log, getenv)
		return serve(ctx, cfg, log, onServing)
	case "reconcile":
		return reconcileOnce(ctx, cfg, log, args[1:], stdout)
	case "audit":
		return audit(ctx, cfg, args[1:], stdout, time.Now())
	case "status":
		return statusCmd(ctx, cfg, log, args[1:], stdout)
	case "sync":
		return syncCmd(ctx, cfg, log, args[1:], stdout)
	case "replay":
		return replay(ctx, cfg, log, args[1:], stdout, time.Now())
	default:
		return migrate(ctx, cfg, log, args[1:], stdout)
	}
}

func newLogger(cfg config, w io.Writer) zerolog.Logger {
	if cfg.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(cfg.LogLevel).With().Timestamp().Logger()
}

// slogFor bridges a zerolog logger for the libraries that log through slog (River,
// goose).
func slogFor(log zerolog.Logger, component string) *slog.Logger {
	return slog.New(zerolog.NewSlogHandler(log.With().Str("component", component).Logger()))
}

func migrate(ctx context.Context, cfg config, log zerolog.Logger, args []string, stdout io.Writer) error {
	action := "up"
	if len(args) > 0 {
		action = args[0]
	}
	if len(args) > 1 || (action != "up" && action != "status") {
		return fmt.Errorf("%w: migrate takes up or status", errUsage)
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		return err
	}
	defer pool.Close()
	var st postgres.MigrationState
	if action == "up" {
		st, err = postgres.Migrate(ctx, pool, slogFor(log, "migrate"))
	} else {
		st, err = postgres.Migrations(ctx, pool)
	}
	if err != nil {
		return err
	}
	state := "current"
	if !st.Current() {
		state = "pending"
	}
	fmt.Fprintf(stdout, "keysync migrations: %d of %d applied\nriver migrations:   %d of %d applied\nschema: %s\n",
		st.GooseCurrent, st.GooseTarget, st.RiverCurrent, st.RiverTarget, state)
	return nil
}

// reconcileOnce runs one sweep and prints its summary.
func reconcileOnce(ctx context.Context, cfg config, log zerolog.Logger, args []string, stdout io.Writer) error {
	if len(args) != 1 || args[0] != "--once" {
		return fmt.Errorf("%w: reconcile takes --once (serve runs the scheduled sweeps)", errUsage)
	}
	parts, err := newParts(cfg, log, nil)
	if err != nil {
		return err
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := postgres.Migrations(ctx, pool)
	if err != nil {
		return err
	}
	if !st.Current() {
		return fmt.Errorf("the database schema is not current (%s): run keysync migrate", st)
	}
	client, err := jobs.NewClient(pool, jobs.Config{}) // insert-only: serve works the jobs
	if err != nil {
		return err
	}
	store := postgres.NewStore(pool)
	sweeper := reconcile.NewSweeper(parts.stripe, parts.crypto, store, reconcile.SweeperOptions{Mapping: parts.mapping, Policy: parts.policy,
		Enqueue: jobs.NewEnqueuer(client).EnqueueSyncs, Now: parts.crypto.Now}, log)
	fmt.Fprintln(stdout, "sweeping: listing every subscription and every key ...")
	sum, err := sweeper.RunOnce(ctx)
	if err != nil {
		return err
	}
	if sum.Skipped {
		fmt.Fprintln(stdout, "another sweep is running (keysync serve's periodic sweep, or another reconcile): nothing done")
		return nil
	}
	fmt.Fprintf(stdout, "sweep run %d: %d subscriptions scanned in %s, %d drifted, %d orphan keys\n",
		sum.RunID, sum.Scanned, sum.Took.Round(time.Millisecond), len(sum.Drifted), len(sum.Orphans))
	for _, d := range sum.Drifted {
		fmt.Fprintf(stdout, "  drift   %s: %s\n", d.Subscription, d.Reason)
	}
	for _, o := range sum.Orphans {
		fmt.Fprintf(stdout, "  orphan  %s (left alone)\n", o)
	}
	if len(sum.Drifted) > 0 {
		fmt.Fprintf(stdout, "%d Syncs queued; the running keysync works them (keysync serve)\n", len(sum.Drifted))
	}
	return nil
}
