package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/riverqueue/river"
)

// The periodic jobs: sweep, catch-up and prune. serve schedules them on the elected
// leader; a sweep is also asked for by the admin API and by a catch-up whose cursor is
// too old. Each is unique while one is unfinished, so a run that outlasts its interval,
// or a request during a run, does not start a second one.

// SweepArgs is the job that runs one sweep.
type SweepArgs struct {
	// IfOlderThan, when set, makes the sweep conditional: it runs only when the last
	// completed sweep (in sync_runs, on any replica) finished longer ago than this, or
	// never. The leader's schedule queues these, so the sweep's cadence is kept in the
	// database and survives restarts. An operator's sweep, or the catch-up's, is
	// unconditional (zero).
	IfOlderThan time.Duration `json:"if_older_than,omitempty"`
}

// Kind is River's name for the job.
func (SweepArgs) Kind() string { return "sweep" }

// InsertOpts makes a sweep unique, by its condition, while one is pending or running:
// a conditional sweep never queues twice, and an operator's request is not swallowed
// by a pending conditional one that may decide not to run. A conditional sweep gets one
// attempt: the schedule's next check retries a failed one, so a failing sweep is not
// also retried back to back.
func (a SweepArgs) InsertOpts() river.InsertOpts {
	attempts := 3
	if a.IfOlderThan > 0 {
		attempts = 1
	}
	return river.InsertOpts{MaxAttempts: attempts, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: unfinishedStates}}
}

// SweepRuns reports the last completed sweep (postgres.Store).
type SweepRuns interface {
	LastSweep(ctx context.Context) (age time.Duration, completed bool, err error)
}

// SweepWorker runs sweeps.
type SweepWorker struct {
	river.WorkerDefaults[SweepArgs]
	// Run runs one sweep (reconcile.Sweeper.RunOnce).
	Run func(ctx context.Context) error
	// Runs tells a conditional sweep whether it is due.
	Runs SweepRuns
}

// Work runs one sweep, or for a conditional one, returns at once when a recent enough
// sweep has completed. Two sweeps never run at once: River keeps one conditional sweep
// unfinished at a time, and Run holds the sweep's run lock across replicas.
func (w *SweepWorker) Work(ctx context.Context, job *river.Job[SweepArgs]) error {
	if d := job.Args.IfOlderThan; d > 0 {
		age, completed, err := w.Runs.LastSweep(ctx)
		if err != nil {
			return fmt.Errorf("sweep due: %w", err)
		}
		if completed && age < d {
			return nil
		}
	}
	return w.Run(ctx)
}

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

// Schedule is how often the elected leader queues each periodic job.
type Schedule struct {
	// Sweep is the most time between two completed sweeps (KEYSYNC_RECONCILE_INTERVAL).
	Sweep time.Duration
	// CatchUp is the time between two catch-ups.
	CatchUp time.Duration
	// Prune is the time between two prunes of processed events.
	Prune time.Duration
}

// SweepCheck is how often the leader asks whether a sweep is due: a quarter of the
// interval, at least a minute (but no longer than the interval). A sweep then completes
// at most about 1.25 intervals (plus its own run time) after the last one, however
// often replicas restart or leadership moves.
func SweepCheck(interval time.Duration) time.Duration {
	return min(max(interval/4, time.Minute), interval)
}

// PeriodicJobs returns the jobs River's elected leader queues, so that one replica at a
// time prunes, sweeps and catches up. River's schedule lives in the leader's memory and
// starts over with every deploy or change of leader, so each job also runs when a
// leader starts: the catch-up, to read at once the events missed while no replica ran;
// the sweep, as a conditional sweep that runs only when the last completed sweep is
// older than the interval (always on a fresh install, whose first catch-up looks back
// only an hour: the sweep is what finds the subscriptions that existed before). The
// conditional sweep is asked for again every SweepCheck, which keeps the cadence on the
// database's record of completed sweeps rather than on the leader's uptime.
func PeriodicJobs(s Schedule) []*river.PeriodicJob {
	every := func(d time.Duration, args river.JobArgs) *river.PeriodicJob {
		return river.NewPeriodicJob(river.PeriodicInterval(d),
			func() (river.JobArgs, *river.InsertOpts) { return args, nil }, &river.PeriodicJobOpts{RunOnStart: true})
	}
	return []*river.PeriodicJob{
		every(s.Prune, PruneArgs{}),
		every(SweepCheck(s.Sweep), SweepArgs{IfOlderThan: s.Sweep}),
		every(s.CatchUp, CatchUpArgs{}),
	}
}
