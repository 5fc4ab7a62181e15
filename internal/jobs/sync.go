package jobs

import (
	"context"
	"fmt"

	"github.com/riverqueue/river"

	"github.com/keysync/keysync/internal/syncer"
)

// SyncArgs is the job that syncs one subscription, or one one-time purchase, outside the
// event path (a sweep's drift, an operator's request).
type SyncArgs struct {
	Subscription string `json:"subscription,omitempty"`
	// Purchase is a purchase to sync instead (a Checkout Session or an invoice).
	Purchase string           `json:"purchase,omitempty"`
	Cause    syncer.CauseKind `json:"cause"`
	CauseID  string           `json:"cause_id,omitempty"`
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

// Work syncs the subscription or purchase; permanent failures are counted on the run,
// not retried.
func (w *SyncWorker) Work(ctx context.Context, job *river.Job[SyncArgs]) error {
	cause := syncer.Cause{Kind: job.Args.Cause, ID: job.Args.CauseID}
	id := job.Args.Subscription
	var err error
	if job.Args.Purchase != "" {
		id = job.Args.Purchase
		_, err = w.Engine.SyncPurchase(ctx, id, cause)
	} else {
		_, err = w.Engine.Sync(ctx, id, cause)
	}
	final := err == nil || Classify(err) == Permanent || job.Attempt >= job.MaxAttempts
	if final && job.Args.RunID != 0 {
		_ = w.Runs.CountRunResult(ctx, job.Args.RunID, err == nil)
	}
	if err != nil && !final {
		return fmt.Errorf("sync %s: %w", id, err)
	}
	return nil
}
