package jobs

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/syncer"
)

// Enqueuer inserts jobs through River's client where keysync does not ingest: a
// replay's event jobs, in the transaction that marks the events pending again (so an
// event is never pending without its job), and the Syncs of what a sweep found
// drifted. A new event gets its job in its own statement instead (Tables.IngestEvents).
type Enqueuer struct {
	client *river.Client[pgx.Tx]
}

// NewEnqueuer returns an Enqueuer inserting through client.
func NewEnqueuer(client *river.Client[pgx.Tx]) *Enqueuer {
	return &Enqueuer{client: client}
}

// EnqueueEventsTx inserts one job per event in tx. It returns River's error.
func (e *Enqueuer) EnqueueEventsTx(ctx context.Context, tx pgx.Tx, evs []events.Event) error {
	if len(evs) == 0 {
		return nil
	}
	params := make([]river.InsertManyParams, len(evs))
	for i, ev := range evs {
		params[i] = river.InsertManyParams{Args: EventArgs{EventID: ev.ID, Type: ev.Type}}
	}
	if _, err := e.client.InsertManyTx(ctx, tx, params); err != nil {
		return fmt.Errorf("enqueue events: %w", err)
	}
	return nil
}

// EnqueueSyncs inserts one SyncArgs job per subscription or purchase (syncer.IsPurchase
// tells them apart), caused by sweep run runID.
func (e *Enqueuer) EnqueueSyncs(ctx context.Context, ids []string, runID int64) error {
	params := make([]river.InsertManyParams, len(ids))
	for i, id := range ids {
		args := SyncArgs{Subscription: id, Cause: syncer.CauseSweep, CauseID: fmt.Sprint(runID), RunID: runID}
		if syncer.IsPurchase(id) {
			args.Subscription, args.Purchase = "", id
		}
		params[i] = river.InsertManyParams{Args: args}
	}
	if _, err := e.client.InsertMany(ctx, params); err != nil {
		return fmt.Errorf("enqueue syncs: %w", err)
	}
	return nil
}
