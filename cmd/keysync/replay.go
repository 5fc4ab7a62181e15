package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
)

// replayCmd processes events again: one by id (fetched from Stripe if keysync never
// stored it), or every stored event since a time. The running keysync works the jobs.
type replayCmd struct {
	now   time.Time // --since counts back from it
	since string
	types multiFlag
	id    string
	from  time.Time
}

func (c *replayCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.since, "since", "", "replay every stored event since a duration back (24h, 7d) or an RFC 3339 time")
	fs.Var(&c.types, "type", "with --since: only this event type (repeatable)")
}

func (c *replayCmd) args(rest []string) error {
	if (c.since == "") == (len(rest) == 0) || len(rest) > 1 {
		return errors.New("replay takes one event id (evt_...) or --since")
	}
	if len(rest) == 1 {
		c.id = rest[0]
		return nil
	}
	var err error
	if c.from, err = postgres.ParseSince(c.since, c.now); err != nil {
		return fmt.Errorf("replay --since: %w", err)
	}
	return nil
}

func (c *replayCmd) run(ctx context.Context, e cmdEnv) error {
	// Two connections: replay reads events and queues jobs, one transaction at a time.
	pool, err := postgres.Open(ctx, e.cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	store := postgres.NewStore(pool)

	// Insert-only: the running keysync serve works the jobs.
	client, err := jobs.NewClient(pool, jobs.Config{})
	if err != nil {
		return err
	}

	// The events to replay: every stored one since a time, or the one asked for. Only
	// the replayable ones get a job (checkReplayable).
	var handled []events.Event
	skipped := 0
	add := func(id, typ, status string) {
		if checkReplayable(typ, status) == nil {
			handled = append(handled, events.Event{ID: id, Type: typ})
		} else {
			skipped++
		}
	}
	if c.id == "" {
		stored, err := store.EventsSince(ctx, c.from, c.types)
		if err != nil {
			return err
		}
		for _, st := range stored {
			add(st.ID, st.Type, st.Status)
		}
	} else {
		got, err := store.GetEvent(ctx, c.id)
		switch {
		case err == nil:
			add(got.ID, got.Type, got.Status)
		case errors.Is(err, postgres.ErrNotFound):
			return c.ingestFromStripe(ctx, e, store)
		default:
			return err
		}
	}

	if err := requeue(ctx, store, client, handled); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d event(s) queued for processing (%d skipped: types keysync does not act on, or events stored as ignored)\n",
		len(handled), skipped)
	return nil
}

// ingestFromStripe fetches an event keysync never stored and ingests it as a webhook
// would: the webhook path dedupes it, and queues a job only if it is new and handled.
func (c *replayCmd) ingestFromStripe(ctx context.Context, e cmdEnv, store *postgres.Store) error {
	ev, err := fetchEvent(ctx, e.cfg, e.log, c.id)
	if err != nil {
		return err
	}
	guard := events.Guard{Livemode: stripeapi.KeyLivemode(e.cfg.StripeAPIKey)}
	ing := ingest.New(jobs.NewTables(store.Pool()), ingest.Config{Committers: 1, Guard: guard}, e.log)
	ing.Start(ctx)
	res, err := ing.Ingest(ctx, ev)
	ing.Stop()
	if err != nil {
		return err
	}
	if res.Refused != nil {
		fmt.Fprintf(e.stdout, "%s was not stored: fetched it from Stripe and stored it as ignored (%s)\n", c.id, res.Refused.Detail)
		return nil
	}
	fmt.Fprintf(e.stdout, "%s was not stored: fetched it from Stripe and queued it\n", c.id)
	return nil
}

// fetchEvent reads one event from Stripe's Events API in the shape a webhook delivers
// it, so that it is stored and worked like any other.
func fetchEvent(ctx context.Context, cfg config, log zerolog.Logger, id string) (events.Event, error) {
	parts, err := newParts(cfg, log, nil)
	if err != nil {
		return events.Event{}, err
	}

	// Stripe's object, marshalled back: the payload a webhook would have carried.
	ev, err := parts.stripe.GetEvent(ctx, id)
	if err != nil {
		return events.Event{}, err
	}
	payload, err := json.Marshal(ev)
	if err != nil {
		return events.Event{}, err
	}
	return events.Event{ID: ev.ID, Type: string(ev.Type), Created: time.Unix(ev.Created, 0).UTC(), Livemode: ev.Livemode,
		APIVersion: ev.APIVersion, Account: ev.Account, Payload: payload, Source: events.SourceEventsAPI}, nil
}

// Why a stored event is not replayed (both are permanent: the admin API answers 422).
var (
	errNotActedOn = fmt.Errorf("%w: keysync does not act on events of this type; a replay would store and skip it again",
		syncer.ErrPermanent)
	errRefused = fmt.Errorf("%w: the event was stored as ignored (another mode than the API key's, or a connected account) and is not replayed",
		syncer.ErrPermanent)
)

// checkReplayable says whether a stored event of type typ and status may be replayed:
// errNotActedOn for a type keysync does not act on, errRefused for an event of a
// handled type stored as ignored (ingest's guard refused it: a replay must not carry
// it to a key). The CLI and the admin API both decide through it.
func checkReplayable(typ, status string) error {
	switch {
	case !events.Handled(typ):
		return errNotActedOn
	case status == string(events.StatusIgnored):
		return errRefused
	}
	return nil
}

// requeue marks stored events pending again and enqueues their jobs, in one
// transaction. The CLI and the admin API replay through it.
func requeue(ctx context.Context, store *postgres.Store, client *river.Client[pgx.Tx], evs []events.Event) error {
	// One transaction: an event pending again without its job would never be worked.
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

// multiFlag is a repeatable string flag: --type a --type b.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
