package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/webhook"
)

// serve runs the daemon until ctx is cancelled, then shuts down in order: stop
// accepting webhooks and finish the requests in flight, commit what the ingester
// holds, let running jobs finish (then cancel them), close the pool.
func serve(ctx context.Context, cfg config, log zerolog.Logger, onServing func(addr string)) error {
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
	workers := river.NewWorkers()
	river.AddWorker(workers, &jobs.EventWorker{Store: store})
	riverClient, err := jobs.NewClient(pool, jobs.Config{Workers: workers, Logger: slogFor(log, "river")})
	if err != nil {
		return err
	}
	// Jobs must not be cancelled the moment a signal arrives: shutdown stops them in
	// order below.
	if err := riverClient.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("start river: %w", err)
	}

	ingester := webhook.NewIngester(store, jobs.NewEnqueuer(riverClient), log, webhook.IngesterConfig{})
	ingester.Start(ctx)

	health := admin.NewHealth(store)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", health.Healthz)
	mux.HandleFunc("GET /readyz", health.Readyz)
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	if len(cfg.StripeWebhookSecrets) > 0 {
		h, err := webhook.NewHandler(webhook.Config{
			Secrets:           cfg.StripeWebhookSecrets,
			AcceptAPIVersions: cfg.StripeAcceptVersions,
		}, ingester, log.With().Str("component", "webhook").Logger())
		if err != nil {
			return err
		}
		mux.Handle("POST /webhooks/stripe", h)
	} else {
		log.Warn().Msg("STRIPE_WEBHOOK_SECRETS is unset: no webhook endpoint")
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
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
