package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/postgres"
)

// CatchUpStripe is what the catch-up reads from Stripe.
type CatchUpStripe interface {
	Events(ctx context.Context, since time.Time, types []string) ([]*stripe.Event, error)
}

// Ingest stores events as webhooks are stored (dedupe, job, one statement):
// ingest.Ingester.
type Ingest interface {
	Ingest(ctx context.Context, ev events.Event) (ingest.Result, error)
}

// CatchUpStore is what the catch-up reads and records.
type CatchUpStore interface {
	StartRun(ctx context.Context, kind string) (int64, error)
	FinishRun(ctx context.Context, id int64, sum postgres.RunSummary) error
	CatchUpCursor(ctx context.Context) (time.Time, bool, error)
	TryLockRun(ctx context.Context, kind string) (*postgres.RunLock, bool, error)
}

// Stripe keeps events for 30 days; keysync warns well before.
const (
	eventRetention = 30 * 24 * time.Hour
	cursorWarnAge  = 25 * 24 * time.Hour
	// overlap re-reads a minute before the cursor: events created in the same second
	// may be listed late, and ingest dedupes what was already stored.
	overlap = time.Minute
)

// CatchUp lists the events Stripe has and keysync may not, and ingests them.
type CatchUp struct {
	stripe     CatchUpStripe
	ingest     Ingest
	store      CatchUpStore
	forceSweep func(ctx context.Context) error
	now        func() time.Time
	log        zerolog.Logger
	// lag is the cursor's age at the last run, in seconds, for metrics and /readyz.
	lag atomic.Int64
}

// CatchUpOptions configures a CatchUp.
type CatchUpOptions struct {
	// ForceSweep runs (or schedules) a full sweep when the cursor has fallen out of
	// Stripe's 30 days of events (nil: none; the cursor is reset all the same).
	ForceSweep func(ctx context.Context) error
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// NewCatchUp returns a CatchUp.
func NewCatchUp(st CatchUpStripe, in Ingest, store CatchUpStore, opts CatchUpOptions, log zerolog.Logger) *CatchUp {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &CatchUp{stripe: st, ingest: in, store: store, forceSweep: opts.ForceSweep, now: opts.Now, log: log}
}

// CatchUpSummary is what one catch-up did.
type CatchUpSummary struct {
	Listed, Inserted int
	Cursor           time.Time
	// Reset is true when the cursor was older than Stripe's retention: a sweep was
	// forced instead.
	Reset bool
	// Skipped is true when another catch-up was running (on any replica): this one did
	// nothing, and the cursor was not touched.
	Skipped bool
	// Refused counts the listed events that ingest refused for good: no Stripe event's
	// envelope, or data the database cannot store. They are logged and passed over, so
	// that one of them cannot hold the cursor back forever; the sweep repairs what they
	// were about.
	Refused int
}

// Lag returns the cursor's age at the last run.
func (c *CatchUp) Lag() time.Duration { return time.Duration(c.lag.Load()) * time.Second }

// RunOnce lists the handled events created since the cursor (the first run starts an
// hour back), ingests the ones keysync does not have as source events_api, and moves
// the cursor. It returns an error when Stripe or the database failed; the cursor then
// stays where it was.
func (c *CatchUp) RunOnce(ctx context.Context) (CatchUpSummary, error) {
	lock, ok, err := c.store.TryLockRun(ctx, runCatchUp)
	if err != nil {
		return CatchUpSummary{}, err
	}
	if !ok {
		c.log.Info().Msg("catch-up skipped: another catch-up is running")
		return CatchUpSummary{Skipped: true}, nil
	}
	defer lock.Release()
	now := c.now().UTC()
	cursor, ok, err := c.store.CatchUpCursor(ctx)
	if err != nil {
		return CatchUpSummary{}, err
	}
	if !ok {
		cursor = now.Add(-time.Hour)
	}
	runID, err := c.store.StartRun(ctx, runCatchUp)
	if err != nil {
		return CatchUpSummary{}, err
	}
	sum := CatchUpSummary{Cursor: cursor}
	age := now.Sub(cursor)
	c.lag.Store(int64(age / time.Second))
	switch {
	case age > eventRetention:
		c.log.Warn().Dur("cursor_age", age).Msg("catch-up cursor is older than Stripe's 30 days of events: forcing a full sweep and resetting it")
		sum.Reset, sum.Cursor = true, now
		if c.forceSweep != nil {
			if err = c.forceSweep(ctx); err != nil {
				err = fmt.Errorf("force sweep: %w", err)
			}
		}
	default:
		if age > cursorWarnAge {
			c.log.Warn().Dur("cursor_age", age).Msg("catch-up cursor is older than 25 days: events older than 30 days cannot be fetched")
		}
		err = c.catchUp(ctx, &sum, now)
	}
	rs := postgres.RunSummary{Scanned: sum.Listed, Drifted: sum.Inserted, Failed: sum.Refused, Cursor: strconv.FormatInt(sum.Cursor.Unix(), 10)}
	if err != nil {
		rs.Error, rs.Cursor = err.Error(), ""
	}
	if ferr := c.store.FinishRun(ctx, runID, rs); ferr != nil {
		err = errors.Join(err, ferr)
	}
	if err == nil {
		c.lag.Store(int64(now.Sub(sum.Cursor) / time.Second))
	}
	c.log.Info().Int("listed", sum.Listed).Int("inserted", sum.Inserted).Int("refused", sum.Refused).Time("cursor", sum.Cursor).Msg("catch-up finished")
	return sum, err
}

func (c *CatchUp) catchUp(ctx context.Context, sum *CatchUpSummary, now time.Time) error {
	evs, err := c.stripe.Events(ctx, sum.Cursor.Add(-overlap), events.HandledTypes())
	if err != nil {
		return fmt.Errorf("list events: %w", err)
	}
	latest := sum.Cursor
	for _, ev := range evs {
		sum.Listed++
		// The event as Stripe rendered it, in whatever version that was (stripe-go keeps
		// data.object verbatim): the worker reads the object again when the version is
		// not keysync's, and ingest's guard refuses another mode or a connected account.
		payload, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("event %s: %w", ev.ID, err)
		}
		res, err := c.ingest.Ingest(ctx, events.Event{ID: ev.ID, Type: string(ev.Type), Created: time.Unix(ev.Created, 0).UTC(),
			Livemode: ev.Livemode, APIVersion: ev.APIVersion, Account: ev.Account, Payload: payload, Source: events.SourceEventsAPI})
		switch {
		case errors.Is(err, events.ErrInvalid), errors.Is(err, ingest.ErrNotStorable):
			// Listing it again would be refused again: stopping here would stall the
			// catch-up on this event for good.
			sum.Refused++
			c.log.Error().Err(err).Str("event_id", ev.ID).Str("event_type", string(ev.Type)).
				Msg("catch-up passed over an event that cannot be stored; the sweep repairs what it was about")
			continue
		case err != nil:
			return fmt.Errorf("ingest %s: %w", ev.ID, err)
		}
		if !res.Duplicate {
			sum.Inserted++
		}
		if created := time.Unix(ev.Created, 0).UTC(); created.After(latest) {
			latest = created
		}
	}
	// The cursor is how far keysync has looked: up to the newest event, or to a minute
	// ago when nothing newer exists.
	if lookedTo := now.Add(-overlap); lookedTo.After(latest) {
		latest = lookedTo
	}
	sum.Cursor = latest
	return nil
}
