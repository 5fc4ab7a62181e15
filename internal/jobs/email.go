package jobs

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
)

// The e-mail jobs (KEYSYNC_SMTP_URL): the e-mail of each new key, the outbox scan that
// queues them, and the lost-keys form's e-mail. They run beside event jobs.

// EmailKeyArgs is the job that e-mails one new key to its customer. It names the key by
// its audit row (its create_key row, or the adopt_key row that stands for a lost one),
// so no key is ever in a job's arguments.
type EmailKeyArgs struct {
	AuditID int64 `json:"audit_id"`
}

// Kind is River's name for the job.
func (EmailKeyArgs) Kind() string { return "email_key" }

// InsertOpts keeps one job per key while it is unfinished (and for a day after, while
// River keeps finished jobs): the outbox scans queue each key many times.
func (EmailKeyArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueEvents, MaxAttempts: 10, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// EmailKeyWorker e-mails a new key.
type EmailKeyWorker struct {
	river.WorkerDefaults[EmailKeyArgs]
	// Send e-mails the key of an outbox audit row, once (delivery.Emailer.SendKey);
	// it returns an error only for River to retry.
	Send func(ctx context.Context, auditID int64) error
}

// Work e-mails the key.
func (w *EmailKeyWorker) Work(ctx context.Context, job *river.Job[EmailKeyArgs]) error {
	return w.Send(ctx, job.Args.AuditID)
}

// EmailOutboxArgs is the job that queues an EmailKeyArgs job for every new key not
// mailed yet (its create_key audit row, or the adopt_key row that stands for a lost one,
// is the outbox).
type EmailOutboxArgs struct{}

// Kind is River's name for the job.
func (EmailOutboxArgs) Kind() string { return "email_outbox" }

// InsertOpts puts the scan beside event jobs; see QueueOutboxScan for its uniqueness.
func (EmailOutboxArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueEvents, MaxAttempts: 3}
}

// QueueOutboxScan queues an outbox scan that starts after now: a key recorded before
// the call is seen by it. Scans asked for within the same second share one job, which
// cannot be running yet (it is scheduled for the next second), so a burst of new keys
// costs one scan a second and none is missed.
func QueueOutboxScan(ctx context.Context, client *river.Client[pgx.Tx]) error {
	next := time.Now().Truncate(time.Second).Add(time.Second)
	_, err := client.Insert(ctx, EmailOutboxArgs{}, &river.InsertOpts{ScheduledAt: next,
		UniqueOpts: river.UniqueOpts{ByArgs: true, ByPeriod: time.Second}})
	if err != nil {
		return fmt.Errorf("queue e-mail outbox scan: %w", err)
	}
	return nil
}

// EmailOutboxWorker runs outbox scans.
type EmailOutboxWorker struct {
	river.WorkerDefaults[EmailOutboxArgs]
	// Outbox returns the audit rows of the new keys still to be mailed
	// (delivery.Emailer.Outbox).
	Outbox func(ctx context.Context) ([]int64, error)
	// Client inserts the e-mail jobs.
	Client *river.Client[pgx.Tx]
}

// Work queues one EmailKeyArgs job per key still to be mailed; River's uniqueness
// drops those already queued.
func (w *EmailOutboxWorker) Work(ctx context.Context, _ *river.Job[EmailOutboxArgs]) error {
	ids, err := w.Outbox(ctx)
	if err != nil || len(ids) == 0 {
		return err
	}
	params := make([]river.InsertManyParams, len(ids))
	for i, id := range ids {
		params[i] = river.InsertManyParams{Args: EmailKeyArgs{AuditID: id}}
	}
	if _, err := w.Client.InsertMany(ctx, params); err != nil {
		return fmt.Errorf("queue key e-mails: %w", err)
	}
	return nil
}

// OutboxEvery is how often the leader scans the outbox besides the scans each new key
// asks for: a key whose scan was lost (a crash right after the key was recorded) is
// mailed within this.
const OutboxEvery = time.Minute

// OutboxJob is the periodic outbox scan, which River's elected leader queues.
func OutboxJob() *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(OutboxEvery),
		func() (river.JobArgs, *river.InsertOpts) { return EmailOutboxArgs{}, nil }, &river.PeriodicJobOpts{RunOnStart: true})
}

// ResendKeysArgs is the job that e-mails a customer's keys on request (the lost-keys
// form).
type ResendKeysArgs struct {
	// Address is the address as the form gave it.
	Address string `json:"address"`
	// Normalized is the address in lower case: the per-address limit compares it.
	Normalized string `json:"normalized" river:"unique"`
}

// Kind is River's name for the job.
func (ResendKeysArgs) Kind() string { return "resend_keys" }

// ResendPeriod is the per-address limit of the lost-keys form: at most one e-mail per
// address in each period of this length, across replicas.
const ResendPeriod = 10 * time.Minute

// InsertOpts make the job unique per address and ResendPeriod: a second request in the
// same period is dropped.
func (ResendKeysArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueEvents, MaxAttempts: 5, UniqueOpts: river.UniqueOpts{ByArgs: true, ByPeriod: ResendPeriod}}
}

// ResendKeysWorker e-mails a customer's keys.
type ResendKeysWorker struct {
	river.WorkerDefaults[ResendKeysArgs]
	// Resend e-mails the keys of the customers with the address
	// (delivery.Emailer.Resend); it returns an error only for River to retry.
	Resend func(ctx context.Context, address string) error
}

// Work e-mails the keys.
func (w *ResendKeysWorker) Work(ctx context.Context, job *river.Job[ResendKeysArgs]) error {
	return w.Resend(ctx, job.Args.Address)
}

// ResendQueue queues lost-keys requests through River (delivery.ResendQueue).
type ResendQueue struct {
	Client *river.Client[pgx.Tx]
}

// QueueResend queues the e-mail of address's keys, unless one was queued for the
// address in this ResendPeriod.
func (q ResendQueue) QueueResend(ctx context.Context, address string) error {
	_, err := q.Client.Insert(ctx, ResendKeysArgs{Address: address, Normalized: strings.ToLower(address)}, nil)
	if err != nil {
		return fmt.Errorf("queue lost-keys e-mail: %w", err)
	}
	return nil
}
