package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/metrics"
	"github.com/keysync/keysync/internal/reconcile"
	"github.com/keysync/keysync/internal/stripeapi"
)

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
	// Both credentials are optional for migrate and audit, so they are checked here,
	// by the commands that talk to Stripe and Cryptolens, and named together.
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

	// Without a plans file, prices map through their metadata alone. A plans file that
	// does not parse stops start-up with the line at fault.
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
	// Cryptolens enforces expiry only on keys whose time-limited feature is on: no
	// plan may turn it off, or its subscription keys would never expire.
	if err := mapping.RequireTimeLimited(cfg.TimeLimitedFeature); err != nil {
		return engineParts{}, fmt.Errorf("%w: CRYPTOLENS_TIME_LIMITED_FEATURE: %w", errUsage, err)
	}

	// The clients, each logging under its own component; serve also counts and times
	// their calls.
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
		policy: license.Options{BufferDays: cfg.BufferDays, BlockOnDispute: cfg.BlockOnDispute, BlockOnRefund: cfg.BlockOnRefund,
			LapseOnPausedCollection: cfg.LapseWhenPaused, TimeLimitedFeature: cfg.TimeLimitedFeature}}, nil
}

// sweeper is the sweep that serve runs on a schedule and `reconcile --once` runs now: it
// reads through these parts and queues a Sync for each drift through client.
func (p engineParts) sweeper(store reconcile.SweepStore, client *river.Client[pgx.Tx], log zerolog.Logger) *reconcile.Sweeper {
	return reconcile.NewSweeper(p.stripe, p.crypto, store, reconcile.SweeperOptions{Mapping: p.mapping,
		Policy: p.policy, Enqueue: jobs.NewEnqueuer(client).EnqueueSyncs, Now: p.crypto.Now}, log)
}
