package jobs

import (
	"context"
	"time"

	"github.com/riverqueue/river"
)

// The periodic jobs: sweep, catch-up and prune. serve schedules them on the elected
// leader; a sweep is also asked for by the admin API and by a catch-up whose cursor is
// too old. Each is unique while one is unfinished, so a run that outlasts its interval,
// or a request during a run, does not start a second one.

// SweepArgs is the job that runs one sweep.
type SweepArgs struct{}

// Kind is River's name for the job.
func (SweepArgs) Kind() string { return "sweep" }

// InsertOpts makes a sweep unique while one is pending or running.
func (SweepArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: unfinishedStates}}
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
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: unfinishedStates}}
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
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: unfinishedStates}}
}

// PruneWorker prunes processed events older than the retention.
type PruneWorker struct {
	river.WorkerDefaults[PruneArgs]
	// Run prunes (postgres.Store.PruneEvents with the cutoff).
	Run func(ctx context.Context) error
}

// Work prunes once.
func (w *PruneWorker) Work(ctx context.Context, _ *river.Job[PruneArgs]) error { return w.Run(ctx) }
