package jobs

import (
	"context"
	"fmt"

	"github.com/riverqueue/river"

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
	final := err == nil || Classify(err) == Permanent || job.Attempt >= job.MaxAttempts
	if final && job.Args.RunID != 0 {
		_ = w.Runs.CountRunResult(ctx, job.Args.RunID, err == nil)
	}
	if err != nil && !final {
		return fmt.Errorf("sync %s: %w", job.Args.Subscription, err)
	}
	return nil
}
