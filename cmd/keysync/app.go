package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/clientip"
	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/metrics"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/reconcile"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/webhook"
)

// serveCmd runs the daemon until a signal, then shuts it down in order.
type serveCmd struct{ noFlags }

func (serveCmd) args(rest []string) error { return noArgs("serve", rest) }

func (serveCmd) run(ctx context.Context, e cmdEnv) error {
	// The configuration goes to the log once, secrets masked, so a deployment's
	// settings can be read back from its first lines.
	logConfig(e.log, e.getenv)

	// Build everything before serving anything: a mistake stops start-up early.
	app, err := newApp(ctx, e.cfg, e.log)
	if err != nil {
		return err
	}
	defer app.Close()
	return app.Run(ctx, e.onServing)
}

// App is the keysync daemon: newApp builds it, Run serves until its context ends and
// then shuts down in order, Close releases what newApp opened.
type App struct {
	cfg config
	log zerolog.Logger

	pool     *pgxpool.Pool
	listener net.Listener
	jobs     *river.Client[pgx.Tx]
	ingester *ingest.Ingester
	health   *admin.Health
	handler  http.Handler // the public listener's: webhooks and health

	// The admin listener and its handler (the admin API and metrics); nil when
	// KEYSYNC_ADMIN_LISTEN is off.
	adminListener net.Listener
	adminHandler  http.Handler
}

// serveAddrs are the addresses serve listens on; Admin is "" when the admin listener
// is off.
type serveAddrs struct{ Public, Admin string }

// newApp builds the daemon in dependency order: each step uses only what the steps
// above it made. It connects to the database and migrates it, binds the listening
// addresses and reclaims the jobs a previous process on that address left running;
// nothing runs until Run. On error, whatever it opened is closed again.
func newApp(ctx context.Context, cfg config, log zerolog.Logger) (_ *App, err error) {
	a := &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()

	// The metrics come first: the Stripe and Cryptolens clients report into them.
	m := metrics.New()

	// Credentials and the plans file are checked before any connection is made, so a
	// configuration mistake stops start-up at once, as a usage error.
	parts, err := newParts(cfg, log, m)
	if err != nil {
		return nil, err
	}

	// A schema that is not current never serves. With KEYSYNC_MIGRATE (the default)
	// every replica migrates at start, under Postgres locks so that replicas can start
	// together. Without it this process runs as the runtime role, which may not
	// migrate: it only reads the versions, and a migration Job brings them up to date.
	a.pool, err = postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: int32(cfg.DBMaxConns)})
	if err != nil {
		return nil, err
	}
	var st postgres.MigrationState
	if cfg.Migrate {
		st, err = migrateSchema(ctx, a.pool, cfg, log)
	} else {
		st, err = requireCurrentSchema(ctx, a.pool, "KEYSYNC_MIGRATE=false, so run keysync migrate as the migration role first")
	}
	if err != nil {
		return nil, err
	}
	log.Info().Str("migrations", st.String()).Bool("migrated", cfg.Migrate).Msg("database schema current")
	store := postgres.NewStore(a.pool)
	tables := jobs.NewTables(a.pool) // River's tables: ingest, reclaim, job counts

	// The sync engine: every event job, every Sync a sweep queues and every admin sync
	// goes through it. The customer's side hears of each new key (to e-mail it).
	customers := &customerSide{cfg: cfg, log: log}
	engine := syncer.New(syncer.Deps{Stripe: parts.stripe, Cryptolens: parts.crypto, Store: store, Mapping: parts.mapping,
		Log: log.With().Str("component", "sync").Logger()},
		syncer.Options{Policy: parts.policy, DryRun: cfg.DryRun, WriteStripeMetadata: cfg.WriteStripeMetadata, Now: parts.crypto.Now,
			ObserveAction: func(kind string, outcome syncer.Outcome) { m.Actions.WithLabelValues(kind, string(outcome)).Inc() },
			KeyCreated:    customers.keyCreated})
	log.Info().Int("plans_file_entries", parts.mapping.Entries()).Bool("dry_run", cfg.DryRun).Int("buffer_days", cfg.BufferDays).
		Dur("reconcile_interval", cfg.ReconcileInterval).Dur("catch_up_interval", cfg.CatchUpInterval).Msg("sync engine ready")

	// Bind the address before anything runs: no other live process can hold it, so the
	// replica id derived from it is this process's alone, and jobs still running under
	// that id were left by a predecessor that died. They are worked again at once
	// rather than after River's rescue delay.
	a.listener, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.AdminListen != "" {
		if a.adminListener, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("listen on %s (KEYSYNC_ADMIN_LISTEN): %w", cfg.AdminListen, err)
		}
	}
	replica := replicaID(a.listener.Addr())
	if n, err := tables.ReclaimJobs(ctx, replica); err != nil {
		return nil, err
	} else if n > 0 {
		log.Warn().Int64("jobs", n).Str("replica", replica).Msg("working again the jobs this replica's previous process left running")
	}

	// The River client, before its workers: the sweep and the catch-up the workers run
	// queue their own jobs through this client. River reads the worker registry when
	// the client starts, so registering them below, before Run, is in time. The elected
	// leader queues the periodic jobs: a catch-up and a prune at its start and on their
	// schedules, and a sweep whenever the last completed one is older than the interval
	// (at its start too), so that restarts and leader changes never put a sweep off.
	workers := river.NewWorkers()
	a.jobs, err = jobs.NewClient(a.pool, jobs.Config{ID: replica, Workers: workers, Logger: slogFor(log, "river"),
		Periodic:   jobs.PeriodicJobs(jobs.Schedule{Sweep: cfg.ReconcileInterval, CatchUp: cfg.CatchUpInterval, Prune: time.Hour}),
		JobTimeout: cfg.JobTimeout})
	if err != nil {
		return nil, err
	}
	client := a.jobs

	// The ingester stores an event and its job in one statement: webhooks hand it what
	// Stripe sends, the catch-up what the Events API returns. Its guard keeps events of
	// the other mode than the API key's, and of connected accounts, from any key.
	a.ingester = ingest.New(tables, ingest.Config{Guard: events.Guard{Livemode: parts.stripe.Livemode()},
		OnRefused: func(reason string) { m.EventsRefused.WithLabelValues(reason).Inc() }}, log)

	// Reconciliation, for what webhooks miss: the sweep compares every subscription with
	// its key and queues a Sync for each that drifted; the catch-up ingests missed
	// events and queues a sweep when it has fallen too far behind.
	sweeper := parts.sweeper(store, client, log.With().Str("component", "sweep").Logger())
	sweeper.OnRun = func(sum reconcile.Summary) {
		m.SweepDrift.Set(float64(len(sum.Drifted)))
		m.SweepOrphans.Set(float64(len(sum.Orphans)))
		m.SweepSeconds.Set(sum.Took.Seconds())
	}
	catchUp := reconcile.NewCatchUp(parts.stripe, a.ingester, store, reconcile.CatchUpOptions{ForceSweep: func(ctx context.Context) error {
		_, err := client.Insert(ctx, jobs.SweepArgs{}, nil)
		return err
	}}, log.With().Str("component", "catch_up").Logger())
	m.Watch(store, tables, catchUp.Lag)
	m.WatchSweeps(store, sweepOverdue(cfg.ReconcileInterval))

	// The workers: one per job kind, each a thin call into the piece that does the work.
	river.AddWorker(workers, &jobs.EventWorker{Store: store, Engine: engine, Applied: func(d time.Duration) { m.EventToApplied.Observe(d.Seconds()) }})
	river.AddWorker(workers, &jobs.SyncWorker{Engine: engine, Runs: store})
	river.AddWorker(workers, &jobs.SweepWorker{Run: func(ctx context.Context) error { _, err := sweeper.RunOnce(ctx); return err }, Runs: store})
	river.AddWorker(workers, &jobs.CatchUpWorker{Run: func(ctx context.Context) error { _, err := catchUp.RunOnce(ctx); return err }})
	river.AddWorker(workers, &jobs.PruneWorker{Run: func(ctx context.Context) error {
		n, err := store.PruneEvents(ctx, time.Now().Add(-cfg.EventRetention))
		if n > 0 {
			log.Info().Int64("deleted", n).Dur("retention", cfg.EventRetention).Msg("pruned processed events")
		}
		return err
	}})

	// The public listener serves what Stripe and the orchestrator reach, and nothing
	// else: the health probes always, the webhooks (below) when configured.
	a.health = admin.NewHealth(store)
	a.health.CatchUpLag = catchUp.Lag
	a.health.LastSweep, a.health.SweepOverdueAfter = store.LastSweep, sweepOverdue(cfg.ReconcileInterval)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", a.health.Healthz)
	mux.HandleFunc("GET /readyz", a.health.Readyz)

	// The admin listener serves the operators and Prometheus: metrics always, the admin
	// API only with a token (without one it is off, never open).
	if a.adminListener != nil {
		adminMux := http.NewServeMux()
		adminMux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
		guard := admin.NewGuard(admin.GuardConfig{AdminToken: cfg.AdminToken, ReadToken: cfg.AdminReadToken})
		if api := admin.NewAPI(guard, store, engine, adminJobs{store: store, client: client}, log.With().Str("component", "admin").Logger()); api != nil {
			api.Mount(adminMux)
		} else {
			log.Info().Msg("KEYSYNC_ADMIN_TOKEN is unset: the admin API and the console are off")
		}
		// The operator console (and River UI under it), behind the same tokens.
		if err := mountConsole(ctx, adminMux, cfg, consoleParts{store: store, engine: engine, client: client, tables: tables,
			stripe: parts.stripe, metrics: m, guard: guard}, log); err != nil {
			return nil, err
		}
		a.adminHandler = adminMux
	} else {
		log.Info().Msg("KEYSYNC_ADMIN_LISTEN is off: no metrics and no admin API")
	}

	// The customer's side, on the public listener: the license page after Checkout
	// and, with SMTP, the e-mail of new keys and the lost-keys form.
	if err := customers.mount(mux, workers, client, store, engine, parts); err != nil {
		return nil, err
	}

	// The webhook endpoint exists only with a signing secret. Without one keysync runs
	// in polling mode: the catch-up is its only source of events.
	if len(cfg.StripeWebhookSecrets) > 0 {
		h, err := webhook.NewHandler(webhook.Config{
			Secrets:  cfg.StripeWebhookSecrets,
			ClientIP: clientip.FromRequest(cfg.ClientIPHeader), // each sender's share of the body budget
			Observe: func(typ, outcome string, took time.Duration) {
				if !events.Handled(typ) && typ != "" {
					typ = "other" // bound the label's values
				}
				m.Webhooks.WithLabelValues(typ, outcome).Inc()
				m.IngestSeconds.Observe(took.Seconds())
			},
		}, a.ingester, log.With().Str("component", "webhook").Logger())
		if err != nil {
			return nil, err
		}
		mux.Handle("POST /webhooks/stripe", h)
	} else {
		log.Warn().Dur("catch_up_interval", cfg.CatchUpInterval).
			Msg("STRIPE_WEBHOOK_SECRETS is unset: polling mode, no webhook endpoint; events come from the Events API")
	}
	a.handler = mux
	return a, nil
}

// sweepOverdue is the age past which the last completed sweep is overdue: a sweep
// comes at most an interval and a check (jobs.SweepCheck) after the last, plus its own
// run time, so twice the interval means sweeps are failing or not being scheduled.
func sweepOverdue(interval time.Duration) time.Duration { return 2 * interval }

// Run starts the ingester, the jobs and the HTTP servers, tells onServing (if set) the
// addresses they serve on, and blocks until ctx ends or a server fails. Then it shuts
// down in order: stop accepting webhooks and admin requests and finish those in flight, commit
// what the ingester holds, let running jobs (and with them the reconciler) finish,
// cancelling them at the shutdown timeout. It returns the server's error, if any;
// a shutdown on ctx is not an error.
func (a *App) Run(ctx context.Context, onServing func(serveAddrs)) error {
	// The ingester first: webhooks and the catch-up job both hand it events.
	a.ingester.Start(ctx)
	defer a.ingester.Stop()

	// Jobs must not be cancelled the moment a signal arrives: shutdown stops them in
	// order below.
	if err := a.jobs.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("start river: %w", err)
	}

	// The HTTP server last, on the address bound in newApp.
	srv := newHTTPServer(ctx, a.handler)
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(a.listener) }()
	addrs := serveAddrs{Public: a.listener.Addr().String()}

	// The admin listener's server: the same limits and contexts, its own handler.
	var adminSrv *http.Server
	if a.adminListener != nil {
		adminSrv = newHTTPServer(ctx, a.adminHandler)
		go func() { serveErr <- adminSrv.Serve(a.adminListener) }()
		addrs.Admin = a.adminListener.Addr().String()
	}
	a.log.Info().Str("addr", addrs.Public).Str("admin_addr", addrs.Admin).Str("version", version).Msg("keysync serving")
	if onServing != nil {
		onServing(addrs)
	}

	// Serve until a signal, or until the server fails.
	var runErr error
	select {
	case <-ctx.Done():
		a.log.Info().Msg("shutting down")
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
	}

	// Readiness fails first, so a load balancer stops sending traffic while the server
	// still answers what it was sent.
	a.health.Drain()
	stopCtx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(stopCtx); err != nil {
		a.log.Warn().Err(err).Msg("in-flight requests cut off at the shutdown timeout")
	}
	if adminSrv != nil {
		if err := adminSrv.Shutdown(stopCtx); err != nil {
			a.log.Warn().Err(err).Msg("in-flight admin requests cut off at the shutdown timeout")
		}
	}

	// No webhook arrives any more: commit what the ingester holds.
	a.ingester.Stop()

	// Running jobs finish (the sweep and the catch-up among them); past the shutdown
	// timeout they are cancelled, and River works them again later.
	if err := a.jobs.Stop(stopCtx); err != nil {
		a.log.Warn().Err(err).Msg("jobs still running at the shutdown timeout; cancelling them")
		hardCtx, hardCancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.jobs.StopAndCancel(hardCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			a.log.Error().Err(err).Msg("stop jobs")
		}
		hardCancel()
	}
	a.log.Info().Msg("stopped")
	return runErr
}

// Close releases what newApp opened: the listening sockets (when Run never served on
// them) and, last, the database pool. Call it once Run has returned; it is safe to call
// more than once.
func (a *App) Close() {
	for _, ln := range []net.Listener{a.listener, a.adminListener} {
		if ln != nil {
			_ = ln.Close() // already closed when Run served on it
		}
	}
	if a.pool != nil {
		a.pool.Close()
	}
}

// adminJobs queues the admin API's work on River.
type adminJobs struct {
	store  *postgres.Store
	client *river.Client[pgx.Tx]
}

// ReplayEvent queues a stored event again; postgres.ErrNotFound (the API answers 404) if
// keysync never stored it, and a permanent error (422) if it may not be replayed
// (checkReplayable: a type keysync does not act on, or an event it refused).
func (j adminJobs) ReplayEvent(ctx context.Context, id string) error {
	ev, err := j.store.GetEvent(ctx, id)
	if err != nil {
		return err
	}
	if err := checkReplayable(ev.Type, ev.Status); err != nil {
		return err
	}
	return requeue(ctx, j.store, j.client, []events.Event{{ID: ev.ID, Type: ev.Type}})
}

// Reconcile queues a sweep now, unless one is already queued or running.
func (j adminJobs) Reconcile(ctx context.Context) error {
	_, err := j.client.Insert(ctx, jobs.SweepArgs{}, nil)
	return err
}

// replicaID names this replica in River's tables: the host name and the listening
// port, which no other live process on the host can hold. A restarted replica (the same
// pod, the same systemd unit) gets the same id.
func replicaID(addr net.Addr) string {
	host, _ := os.Hostname()
	port := "0"
	if a, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(a.Port)
	}
	id := "keysync@" + host + ":" + port
	if len(id) > 100 { // River's limit
		id = id[len(id)-100:]
	}
	return id
}
