package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
)

// replay processes events again: one by id (fetched from Stripe if keysync never stored
// it), or every stored event since a time. The running keysync works the jobs.
func replay(ctx context.Context, cfg config, log zerolog.Logger, args []string, out io.Writer, now time.Time) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	since := fs.String("since", "", "replay every stored event since a duration back (24h, 7d) or an RFC 3339 time")
	var types multiFlag
	fs.Var(&types, "type", "with --since: only this event type (repeatable)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: replay: %v", errUsage, err)
	}
	rest := fs.Args()
	if (*since == "") == (len(rest) == 0) || len(rest) > 1 {
		return fmt.Errorf("%w: replay takes one event id (evt_...) or --since", errUsage)
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	client, err := jobs.NewClient(pool, jobs.Config{}) // insert-only
	if err != nil {
		return err
	}
	var evs []events.Event
	if *since != "" {
		from, err := parseSince(*since, now)
		if err != nil {
			return fmt.Errorf("%w: replay --since: %v", errUsage, err)
		}
		stored, err := store.EventsSince(ctx, from, types)
		if err != nil {
			return err
		}
		for _, e := range stored {
			evs = append(evs, events.Event{ID: e.ID, Type: e.Type})
		}
	} else {
		id := rest[0]
		got, err := store.GetEvent(ctx, id)
		switch {
		case err == nil:
			evs = []events.Event{{ID: got.ID, Type: got.Type}}
		case errors.Is(err, postgres.ErrNotFound):
			ev, ferr := fetchEvent(ctx, cfg, log, id)
			if ferr != nil {
				return ferr
			}
			// The webhook path stores it: dedupe, and a job only if new and handled.
			ing := ingest.New(jobs.NewTables(pool), ingest.Config{Committers: 1}, log)
			ing.Start(ctx)
			_, err := ing.Ingest(ctx, ev)
			ing.Stop()
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s was not stored: fetched it from Stripe and queued it\n", id)
			return nil
		default:
			return err
		}
	}
	var handled []events.Event
	for _, e := range evs {
		if events.Handled(e.Type) {
			handled = append(handled, e)
		}
	}
	if err := requeue(ctx, store, client, handled); err != nil {
		return err
	}
	fmt.Fprintf(out, "%d event(s) queued for processing (%d skipped: types keysync does not act on)\n", len(handled), len(evs)-len(handled))
	return nil
}

func fetchEvent(ctx context.Context, cfg config, log zerolog.Logger, id string) (events.Event, error) {
	parts, err := newParts(cfg, log, nil)
	if err != nil {
		return events.Event{}, err
	}
	ev, err := parts.stripe.GetEvent(ctx, id)
	if err != nil {
		return events.Event{}, err
	}
	payload, err := json.Marshal(ev)
	if err != nil {
		return events.Event{}, err
	}
	return events.Event{ID: ev.ID, Type: string(ev.Type), Created: time.Unix(ev.Created, 0).UTC(), Livemode: ev.Livemode,
		APIVersion: ev.APIVersion, Payload: payload, Source: events.SourceEventsAPI}, nil
}

// requeue marks stored events pending again and enqueues their jobs, in one
// transaction. The CLI and the admin API replay through it.
func requeue(ctx context.Context, store *postgres.Store, client *river.Client[pgx.Tx], evs []events.Event) error {
	ids := make([]string, len(evs))
	for i, e := range evs {
		ids[i] = e.ID
	}
	return store.InTx(ctx, func(tx pgx.Tx) error {
		if err := store.ResetEventsTx(ctx, tx, ids); err != nil {
			return err
		}
		return jobs.NewEnqueuer(client).EnqueueEventsTx(ctx, tx, evs)
	})
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
