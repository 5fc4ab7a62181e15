package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/metrics"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/reconcile"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/webhook"
)

// serve runs the daemon until ctx is cancelled, then shuts down in order: stop
// accepting webhooks and finish the requests in flight, commit what the ingester
// holds, let running jobs finish (then cancel them), close the pool.
func serve(ctx context.Context, cfg config, log zerolog.Logger, onServing func(addr string)) error {
	m := metrics.New()
	parts, err := newParts(cfg, log, m)
	if err != nil {
		return err
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: int32(cfg.DBMaxConns)})
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := postgres.Migrate(ctx, pool, slogFor(log, "migrate"))
	if err != nil {
		return err
	}
	log.Info().Str("migrations", st.String()).Msg("database schema current")

	store := postgres.NewStore(pool)
	tables := jobs.NewTables(pool)
	sync := syncer.New(syncer.Deps{Stripe: parts.stripe, Cryptolens: parts.crypto, Store: store, Mapping: parts.mapping,
		Log: log.With().Str("component", "sync").Logger()},
		syncer.Options{Policy: parts.policy, DryRun: cfg.DryRun, WriteStripeMetadata: cfg.WriteStripeMetadata, Now: parts.crypto.Now,
			ObserveAction: func(kind string, outcome syncer.Outcome) { m.Actions.WithLabelValues(kind, string(outcome)).Inc() }})
	log.Info().Int("plans_file_entries", parts.mapping.Entries()).Bool("dry_run", cfg.DryRun).Int("buffer_days", cfg.BufferDays).
		Dur("reconcile_interval", cfg.ReconcileInterval).Dur("catch_up_interval", cfg.CatchUpInterval).Msg("sync engine ready")

	// The sweep enqueues Syncs and the catch-up ingests events through the River client
	// and the ingester made below; the closures see them once they exist.
	var riverClient *river.Client[pgx.Tx]
	var ingester *ingest.Ingester
	sweeper := reconcile.NewSweeper(parts.stripe, parts.crypto, store, reconcile.SweeperOptions{Mapping: parts.mapping, Policy: parts.policy,
		Enqueue: func(ctx context.Context, subs []string, runID int64) error {
			return jobs.NewEnqueuer(riverClient).EnqueueSyncs(ctx, subs, runID)
		}, Now: parts.crypto.Now}, log.With().Str("component", "sweep").Logger())
	catchUp := reconcile.NewCatchUp(parts.stripe, ingestFunc(func(ctx context.Context, ev events.Event) (ingest.Result, error) {
		return ingester.Ingest(ctx, ev)
	}), store, reconcile.CatchUpOptions{ForceSweep: func(ctx context.Context) error {
		_, err := riverClient.Insert(ctx, jobs.SweepArgs{}, nil)
		return err
	}}, log.With().Str("component", "catch_up").Logger())
	workers := river.NewWorkers()
	sweeper.OnRun = func(sum reconcile.Summary) {
		m.SweepDrift.Set(float64(len(sum.Drifted)))
		m.SweepOrphans.Set(float64(len(sum.Orphans)))
		m.SweepSeconds.Set(sum.Took.Seconds())
	}
	m.Watch(store, tables, catchUp.Lag)
	river.AddWorker(workers, &jobs.EventWorker{Store: store, Engine: sync, Applied: func(d time.Duration) { m.EventToApplied.Observe(d.Seconds()) }})
	river.AddWorker(workers, &jobs.SyncWorker{Engine: sync, Runs: store})
	river.AddWorker(workers, &jobs.SweepWorker{Run: func(ctx context.Context) error { _, err := sweeper.RunOnce(ctx); return err }})
	river.AddWorker(workers, &jobs.CatchUpWorker{Run: func(ctx context.Context) error { _, err := catchUp.RunOnce(ctx); return err }})
	river.AddWorker(workers, &jobs.PruneWorker{Run: func(ctx context.Context) error {
		n, err := store.PruneEvents(ctx, time.Now().Add(-cfg.EventRetention))
		if n > 0 {
			log.Info().Int64("deleted", n).Dur("retention", cfg.EventRetention).Msg("pruned processed events")
		}
		return err
	}})
	periodic := []*river.PeriodicJob{
		river.NewPeriodicJob(river.PeriodicInterval(time.Hour),
			func() (river.JobArgs, *river.InsertOpts) { return jobs.PruneArgs{}, nil }, &river.PeriodicJobOpts{RunOnStart: true}),
		river.NewPeriodicJob(river.PeriodicInterval(cfg.ReconcileInterval),
			func() (river.JobArgs, *river.InsertOpts) { return jobs.SweepArgs{}, nil }, nil),
		river.NewPeriodicJob(river.PeriodicInterval(cfg.CatchUpInterval),
			func() (river.JobArgs, *river.InsertOpts) { return jobs.CatchUpArgs{}, nil }, &river.PeriodicJobOpts{RunOnStart: true}),
	}
	// Bind the address before anything runs: no other live process can hold it, so the
	// replica id derived from it is this process's alone, and jobs still running under
	// that id were left by a predecessor that died. They are worked again at once
	// rather than after River's rescue delay.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	defer ln.Close()
	id := replicaID(ln.Addr())
	if n, err := tables.ReclaimJobs(ctx, id); err != nil {
		return err
	} else if n > 0 {
		log.Warn().Int64("jobs", n).Str("replica", id).Msg("working again the jobs this replica's previous process left running")
	}
	riverClient, err = jobs.NewClient(pool, jobs.Config{ID: id, Workers: workers, Logger: slogFor(log, "river"), Periodic: periodic, JobTimeout: cfg.JobTimeout})
	if err != nil {
		return err
	}
	// Jobs must not be cancelled the moment a signal arrives: shutdown stops them in
	// order below.
	if err := riverClient.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("start river: %w", err)
	}

	ingester = ingest.New(tables, ingest.Config{}, log)
	ingester.Start(ctx)

	health := admin.NewHealth(store)
	health.CatchUpLag = catchUp.Lag
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", health.Healthz)
	mux.HandleFunc("GET /readyz", health.Readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	if api := admin.NewAPI(cfg.AdminToken, store, sync, adminJobs{store: store, client: riverClient}, log.With().Str("component", "admin").Logger()); api != nil {
		api.Mount(mux)
	} else {
		log.Info().Msg("KEYSYNC_ADMIN_TOKEN is unset: the admin API is off")
	}
	if len(cfg.StripeWebhookSecrets) > 0 {
		h, err := webhook.NewHandler(webhook.Config{
			Secrets:           cfg.StripeWebhookSecrets,
			AcceptAPIVersions: cfg.StripeAcceptVersions,
			Observe: func(typ, outcome string, took time.Duration) {
				if !events.Handled(typ) && typ != "" {
					typ = "other" // bound the label's values
				}
				m.Webhooks.WithLabelValues(typ, outcome).Inc()
				m.IngestSeconds.Observe(took.Seconds())
			},
		}, ingester, log.With().Str("component", "webhook").Logger())
		if err != nil {
			return err
		}
		mux.Handle("POST /webhooks/stripe", h)
	} else {
		log.Warn().Dur("catch_up_interval", cfg.CatchUpInterval).
			Msg("STRIPE_WEBHOOK_SECRETS is unset: polling mode, no webhook endpoint; events come from the Events API")
	}

	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Requests must not inherit the signal context: an in-flight webhook finishes.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info().Str("addr", ln.Addr().String()).Str("version", version).Msg("keysync serving")
	if onServing != nil {
		onServing(ln.Addr().String())
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
	}

	health.Drain()
	stopCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(stopCtx); err != nil {
		log.Warn().Err(err).Msg("in-flight requests cut off at the shutdown timeout")
	}
	ingester.Stop()
	if err := riverClient.Stop(stopCtx); err != nil {
		log.Warn().Err(err).Msg("jobs still running at the shutdown timeout; cancelling them")
		hardCtx, hardCancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := riverClient.StopAndCancel(hardCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.Error().Err(err).Msg("stop jobs")
		}
		hardCancel()
	}
	log.Info().Msg("stopped")
	return runErr
}

// engineParts are the sync engine's pieces that do not depend on the database. newParts
// builds them; a missing credential or a malformed plans file is a configuration error
// that stops start-up.
type engineParts struct {
	stripe  *stripeapi.Client
	crypto  *cryptolens.Client
	mapping *license.Mapping
	policy  license.Options
}

// newParts builds the engine's pieces; m, if set, receives the clients' observations.
func newParts(cfg config, log zerolog.Logger, m *metrics.Metrics) (engineParts, error) {
	var missing []string
	if cfg.StripeAPIKey == "" {
		missing = append(missing, "STRIPE_API_KEY")
	}
	if cfg.CryptolensToken == "" {
		missing = append(missing, "CRYPTOLENS_TOKEN")
	}
	if len(missing) > 0 {
		return engineParts{}, fmt.Errorf("%w: keysync needs %s", errUsage, strings.Join(missing, " and "))
	}
	mapping := license.NewMapping(cfg.CryptolensProductID)
	if cfg.PlansFile != "" {
		data, err := os.ReadFile(cfg.PlansFile)
		if err != nil {
			return engineParts{}, fmt.Errorf("%w: KEYSYNC_PLANS_FILE: cannot read %s", errUsage, cfg.PlansFile)
		}
		if mapping, err = license.ParsePlans(cfg.PlansFile, data, cfg.CryptolensProductID); err != nil {
			return engineParts{}, fmt.Errorf("%w: KEYSYNC_PLANS_FILE: %w", errUsage, err)
		}
	}
	sconf := stripeapi.Config{APIKey: cfg.StripeAPIKey, BaseURL: cfg.StripeAPIBase, RateLimit: cfg.StripeRateLimit,
		Logger: log.With().Str("component", "stripe").Logger()}
	cconf := cryptolens.Config{BaseURL: cfg.CryptolensAPIBase, Token: cfg.CryptolensToken,
		RateLimit: cfg.CryptolensRateLimit, Timeout: cfg.CryptolensTimeout, Logger: log.With().Str("component", "cryptolens").Logger()}
	if m != nil {
		sconf.Observe = func(route, outcome string, took time.Duration) {
			m.StripeCalls.WithLabelValues(route, outcome).Inc()
			m.StripeTime.WithLabelValues(route).Observe(took.Seconds())
		}
		cconf.Observe = func(method, outcome string, took time.Duration) {
			m.CryptolensCalls.WithLabelValues(method, outcome).Inc()
			m.CryptolensTime.WithLabelValues(method).Observe(took.Seconds())
		}
	}
	sc, err := stripeapi.New(sconf)
	if err != nil {
		return engineParts{}, fmt.Errorf("%w: %w", errUsage, err)
	}
	cc, err := cryptolens.New(cconf)
	if err != nil {
		return engineParts{}, fmt.Errorf("%w: %w", errUsage, err)
	}
	return engineParts{stripe: sc, crypto: cc, mapping: mapping,
		policy: license.Options{BufferDays: cfg.BufferDays, BlockOnDispute: cfg.BlockOnDispute, BlockOnRefund: cfg.BlockOnRefund}}, nil
}

// ingestFunc adapts a function to reconcile.Ingest.
type ingestFunc func(ctx context.Context, ev events.Event) (ingest.Result, error)

func (f ingestFunc) Ingest(ctx context.Context, ev events.Event) (ingest.Result, error) {
	return f(ctx, ev)
}

// adminJobs queues the admin API's work on River.
type adminJobs struct {
	store  *postgres.Store
	client *river.Client[pgx.Tx]
}

func (j adminJobs) ReplayEvent(ctx context.Context, id string) error {
	ev, err := j.store.GetEvent(ctx, id)
	if err != nil {
		return err // postgres.ErrNotFound for an unknown event: the API answers 404
	}
	return requeue(ctx, j.store, j.client, []events.Event{{ID: ev.ID, Type: ev.Type}})
}

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
