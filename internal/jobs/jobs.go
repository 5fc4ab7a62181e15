// Package jobs is keysync's use of River: the job kinds, their workers, the client that
// inserts and runs them on the shared Postgres pool, and the one place that knows
// River's tables (tables.go).
package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/syncer"
)

// QueueEvents is the River queue for stored Stripe events.
const QueueEvents = "events"

// EventArgs is the job that processes one stored Stripe event.
type EventArgs struct {
	EventID string `json:"event_id"`
	Type    string `json:"type"`
}

// Kind is River's name for the job.
func (EventArgs) Kind() string { return "stripe_event" }

// InsertOpts puts event jobs on their own queue.
func (EventArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueEvents, MaxAttempts: MaxAttempts}
}

// EventStore is what the event worker needs from the store.
type EventStore interface {
	EventPayload(ctx context.Context, id string) (typ, source string, payload []byte, err error)
	MarkEventProcessed(ctx context.Context, id string) error
	MarkEventFailed(ctx context.Context, id, lastError string) error
	NoteEventAttempt(ctx context.Context, id, lastError string) error
}

// Engine is the sync engine as the worker uses it.
type Engine interface {
	TargetFor(ctx context.Context, typ string, payload []byte) (syncer.Target, error)
	Sync(ctx context.Context, subscription string, cause syncer.Cause) (syncer.Result, error)
	SyncPurchase(ctx context.Context, purchase string, cause syncer.Cause) (syncer.Result, error)
}

// EventWorker processes a stored event: it finds the subscription or one-time purchase
// the event is about and syncs it. A permanent failure marks the event failed with its error (it stays
// visible; replay it once fixed). An outage of Stripe or Cryptolens (5xx, 429, timeouts)
// snoozes the job: it is tried again within a minute and does not use up an attempt,
// however long the outage lasts. Any other failure is retried with backoff.
type EventWorker struct {
	river.WorkerDefaults[EventArgs]
	Store  EventStore
	Engine Engine
	// Snooze is the wait after the n-th snooze in a row for an outage (default SnoozeFor).
	Snooze func(n int) time.Duration
	// Applied, if set, is told how long after its storage an event was synced: the
	// job was inserted in the event's own transaction (for metrics).
	Applied func(took time.Duration)
}

// MaxAttempts bounds an event job's attempts: with NextRetry's schedule, about 13 hours.
const MaxAttempts = 20

// Work processes one event. It returns an error only for River to retry the job.
func (w *EventWorker) Work(ctx context.Context, job *river.Job[EventArgs]) error {
	id := job.Args.EventID
	typ, source, payload, err := w.Store.EventPayload(ctx, id)
	if err != nil {
		return fmt.Errorf("event %s: %w", id, err)
	}
	target, err := w.Engine.TargetFor(ctx, typ, payload)
	if err == nil {
		cause := syncer.Cause{Kind: syncer.CauseWebhook, ID: id}
		if source == string(events.SourceEventsAPI) {
			cause.Kind = syncer.CauseCatchUp
		}
		switch {
		case target.Subscription != "":
			_, err = w.Engine.Sync(ctx, target.Subscription, cause)
		case target.Purchase != "":
			_, err = w.Engine.SyncPurchase(ctx, target.Purchase, cause)
		}
	}
	switch {
	case err == nil:
		if w.Applied != nil && target != (syncer.Target{}) {
			w.Applied(time.Since(job.CreatedAt))
		}
		return w.Store.MarkEventProcessed(ctx, id)
	case Classify(err) == Permanent || job.Attempt >= job.MaxAttempts:
		if markErr := w.Store.MarkEventFailed(ctx, id, err.Error()); markErr != nil {
			return markErr
		}
		return nil
	case Classify(err) == Outage && ctx.Err() == nil:
		_ = w.Store.NoteEventAttempt(ctx, id, err.Error())
		snooze := w.Snooze
		if snooze == nil {
			snooze = SnoozeFor
		}
		return river.JobSnooze(snooze(snoozes(job.Metadata)))
	default:
		_ = w.Store.NoteEventAttempt(ctx, id, err.Error())
		return fmt.Errorf("event %s: %w", id, err)
	}
}

// SnoozeFor is the wait after the n-th snooze in a row (0 for the first): 5 seconds,
// doubling up to a minute, with jitter, so that keys catch up within a minute of an
// outage's end.
func SnoozeFor(n int) time.Duration {
	d := min(5*time.Second<<min(n, 4), time.Minute)
	return d/2 + rand.N(d/2+1)
}

// snoozes reads how often River has snoozed the job (its "snoozes" metadata).
func snoozes(metadata []byte) int {
	var m struct {
		Snoozes int `json:"snoozes"`
	}
	_ = json.Unmarshal(metadata, &m)
	return m.Snoozes
}

// NextRetry backs off from seconds to an hour, with jitter: minutes to hours of
// retries, not River's default days of silence.
func (w *EventWorker) NextRetry(job *river.Job[EventArgs]) time.Time {
	d := min(10*time.Second<<min(job.Attempt, 12), time.Hour)
	return time.Now().Add(d/2 + rand.N(d/2+1))
}

// Config configures the River client.
type Config struct {
	// ID names the client in River's tables (attempted_by, leader election). It must be
	// unique among live processes; empty: River makes one up.
	ID string
	// Workers registers the job kinds this client works. Nil makes an insert-only
	// client (no queues are worked).
	Workers *river.Workers
	// EventWorkers is how many event jobs run at once in this process.
	EventWorkers int
	// Logger receives River's own log lines.
	Logger *slog.Logger
	// Periodic jobs run on the elected leader only (one replica at a time).
	Periodic []*river.PeriodicJob
	// JobTimeout cancels a job that runs longer (default 2 minutes). A job left running
	// by a replica that died is worked again RescueMargin after its timeout.
	JobTimeout time.Duration
}

// FetchCooldown is the least time between two fetches of new jobs by one queue.
const FetchCooldown = 5 * time.Millisecond

// RescueMargin is how long after its timeout a job still marked running is taken to be
// stuck (its replica died) and worked again.
const RescueMargin = 30 * time.Second

// NewClient returns a River client on pool. It works the events queue when cfg.Workers
// is set. The client is started with Start and stopped with Stop by the caller.
func NewClient(pool *pgxpool.Pool, cfg Config) (*river.Client[pgx.Tx], error) {
	timeout := cfg.JobTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	rc := &river.Config{
		ID:                   cfg.ID,
		Logger:               cfg.Logger,
		JobTimeout:           timeout,
		RescueStuckJobsAfter: timeout + RescueMargin,
		// River fetches at most every 100ms by default, so a webhook's job waited 50ms
		// on average before a worker took it: most of an event's time to its key.
		// 5ms costs a few more fetch queries under load and keeps that wait small.
		FetchCooldown:               FetchCooldown,
		CompletedJobRetentionPeriod: 24 * time.Hour,
	}
	if cfg.Workers != nil {
		n := cfg.EventWorkers
		if n <= 0 {
			n = 10
		}
		rc.Workers = cfg.Workers
		rc.PeriodicJobs = cfg.Periodic
		rc.Queues = map[string]river.QueueConfig{
			QueueEvents:        {MaxWorkers: n},
			river.QueueDefault: {MaxWorkers: 2},
		}
	}
	client, err := river.NewClient(riverpgxv5.New(pool), rc)
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	return client, nil
}
