package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/keysync/keysync/internal/syncer"
)

// SyncArgs is the job that syncs one subscription outside the event path (a sweep's
// drift, an operator's request).
type SyncArgs struct {
	Subscription string           `json:"subscription"`
	Cause        syncer.CauseKind `json:"cause"`
	CauseID      string           `json:"cause_id,omitempty"`
	// RunID is the sweep run that found the drift (0: none).
	RunID int64 `json:"run_id,omitempty"`
}

// Kind is River's name for the job.
func (SyncArgs) Kind() string { return "sync_subscription" }

// InsertOpts puts sync jobs beside event jobs.
func (SyncArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueEvents, MaxAttempts: MaxAttempts}
}

// RunCounter records the outcome of a sweep's Syncs.
type RunCounter interface {
	CountRunResult(ctx context.Context, runID int64, ok bool) error
}

// SyncWorker runs SyncArgs jobs.
type SyncWorker struct {
	river.WorkerDefaults[SyncArgs]
	Engine Engine
	Runs   RunCounter
}

// Work syncs the subscription; permanent failures are counted on the run, not retried.
func (w *SyncWorker) Work(ctx context.Context, job *river.Job[SyncArgs]) error {
	_, err := w.Engine.Sync(ctx, job.Args.Subscription, syncer.Cause{Kind: job.Args.Cause, ID: job.Args.CauseID})
	final := err == nil || syncer.IsPermanent(err) || job.Attempt >= job.MaxAttempts
	if final && job.Args.RunID != 0 {
		_ = w.Runs.CountRunResult(ctx, job.Args.RunID, err == nil)
	}
	if err != nil && !final {
		return fmt.Errorf("sync %s: %w", job.Args.Subscription, err)
	}
	return nil
}

// EnqueueSyncs inserts one SyncArgs job per subscription, caused by sweep run runID.
func (e *Enqueuer) EnqueueSyncs(ctx context.Context, subscriptions []string, runID int64) error {
	params := make([]river.InsertManyParams, len(subscriptions))
	for i, s := range subscriptions {
		params[i] = river.InsertManyParams{Args: SyncArgs{Subscription: s, Cause: syncer.CauseSweep, CauseID: fmt.Sprint(runID), RunID: runID}}
	}
	if _, err := e.client.InsertMany(ctx, params); err != nil {
		return fmt.Errorf("enqueue syncs: %w", err)
	}
	return nil
}

// pendingStates keeps one sweep (or catch-up) queued or running at a time.
var pendingStates = []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStatePending,
	rivertype.JobStateRunning, rivertype.JobStateRetryable, rivertype.JobStateScheduled}

// SweepArgs is the job that runs one sweep.
type SweepArgs struct{}

// Kind is River's name for the job.
func (SweepArgs) Kind() string { return "sweep" }

// InsertOpts makes a sweep unique while one is pending or running.
func (SweepArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: pendingStates}}
}

// SweepWorker runs sweeps.
type SweepWorker struct {
	river.WorkerDefaults[SweepArgs]
	// Run runs one sweep (reconcile.Sweeper.RunOnce).
	Run func(ctx context.Context) error
}

// Work runs one sweep.
func (w *SweepWorker) Work(ctx context.Context, _ *river.Job[SweepArgs]) error { return w.Run(ctx) }

// RunTimeout bounds one sweep or catch-up, which page through whole accounts at the
// rate limits and may outlast the job timeout. A run that River rescues while it still
// runs finds the run lock taken and does nothing.
const RunTimeout = time.Hour

// Timeout is RunTimeout.
func (w *SweepWorker) Timeout(*river.Job[SweepArgs]) time.Duration { return RunTimeout }

// CatchUpArgs is the job that runs one catch-up.
type CatchUpArgs struct{}

// Kind is River's name for the job.
func (CatchUpArgs) Kind() string { return "catch_up" }

// InsertOpts makes a catch-up unique while one is pending or running.
func (CatchUpArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: pendingStates}}
}

// CatchUpWorker runs catch-ups.
type CatchUpWorker struct {
	river.WorkerDefaults[CatchUpArgs]
	// Run runs one catch-up (reconcile.CatchUp.RunOnce).
	Run func(ctx context.Context) error
}

// Work runs one catch-up.
func (w *CatchUpWorker) Work(ctx context.Context, _ *river.Job[CatchUpArgs]) error { return w.Run(ctx) }

// Timeout is RunTimeout.
func (w *CatchUpWorker) Timeout(*river.Job[CatchUpArgs]) time.Duration { return RunTimeout }

// PruneArgs is the job that prunes old processed events.
type PruneArgs struct{}

// Kind is River's name for the job.
func (PruneArgs) Kind() string { return "prune_events" }

// InsertOpts makes a prune unique while one is pending or running.
func (PruneArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: pendingStates}}
}

// PruneWorker prunes processed events older than the retention.
type PruneWorker struct {
	river.WorkerDefaults[PruneArgs]
	// Run prunes (postgres.Store.PruneEvents with the cutoff).
	Run func(ctx context.Context) error
}

// Work prunes once.
func (w *PruneWorker) Work(ctx context.Context, _ *river.Job[PruneArgs]) error { return w.Run(ctx) }
