package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"
	"riverqueue.com/riverui"

	"github.com/keysync/keysync/internal/admin"
	"github.com/keysync/keysync/internal/console"
	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/metrics"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
)

// consoleParts are the pieces of the daemon the operator console drives.
type consoleParts struct {
	store   *postgres.Store
	engine  *syncer.Syncer
	client  *river.Client[pgx.Tx]
	tables  *jobs.Tables
	stripe  *stripeapi.Client
	metrics *metrics.Metrics
	guard   *admin.Guard // the admin listener's tokens
}

// mountConsole serves the operator console under /console/ on the admin listener's
// mux, and River UI under /console/jobs/ behind the console's login. Like the admin API
// it exists only with a token, and it takes the same tokens (the read-only one sees
// everything and changes nothing). River UI's background services run until ctx ends.
func mountConsole(ctx context.Context, mux *http.ServeMux, cfg config, p consoleParts, log zerolog.Logger) error {
	if p.guard == nil {
		return nil
	}
	log = log.With().Str("component", "console").Logger()

	// River UI reads River's tables through the daemon's own client.
	ui, err := riverui.NewHandler(&riverui.HandlerOpts{Endpoints: riverui.NewEndpoints(p.client, nil), Logger: slogFor(log, "riverui"),
		Prefix: "/console/jobs"})
	if err != nil {
		return fmt.Errorf("river ui: %w", err)
	}
	if err := ui.Start(ctx); err != nil {
		return fmt.Errorf("river ui: %w", err)
	}

	c, err := console.New(console.Options{Auth: p.guard, SessionKey: p.guard.SessionKey(), Store: p.store, Engine: p.engine,
		Jobs: adminJobs{store: p.store, client: p.client}, Queue: p.tables, Customers: p.stripe, JobsUI: ui, DryRun: cfg.DryRun,
		Calls: func() []console.CallCount {
			s, c := p.metrics.CallCounts()
			return []console.CallCount{{System: "Stripe", Calls: s.Calls, Errors: s.Errors}, {System: "Cryptolens", Calls: c.Calls, Errors: c.Errors}}
		}, Log: log})
	if err != nil {
		return err
	}
	c.Mount(mux)
	return nil
}

// ReplayFailed queues every failed event again (the 1,000 latest), leaving out those
// that must not be replayed, and says how many it queued.
func (j adminJobs) ReplayFailed(ctx context.Context) (int, error) {
	failed, err := j.store.FailedEvents(ctx, 1000)
	if err != nil {
		return 0, err
	}
	var evs []events.Event
	for _, ev := range failed {
		if events.Handled(ev.Type) && checkReplayable(ev.Type, ev.Status) == nil {
			evs = append(evs, events.Event{ID: ev.ID, Type: ev.Type})
		}
	}
	if len(evs) == 0 {
		return 0, nil
	}
	return len(evs), requeue(ctx, j.store, j.client, evs)
}
