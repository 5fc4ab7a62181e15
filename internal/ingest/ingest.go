// Package ingest stores Stripe events durably with their jobs, committing the events
// that arrive together in one statement; webhooks, the Events API catch-up and replay
// all store events through it, so its guard (the API key's mode, no connected
// accounts) holds on every path.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
)

// ErrStopped is returned by Ingest once the ingester is stopping: the caller answers
// 503 and the sender retries against a replica that is up.
var ErrStopped = errors.New("ingester stopped")

// ErrNotStorable is returned by Ingest for an event that the database refused for its
// data or its size: no retry can store it. The other events of its batch are stored.
var ErrNotStorable = errors.New("the database refused the event")

// Store persists events with their jobs: new events, and a job for each new one of a
// handled type, atomically (jobs.Tables.IngestEvents).
type Store interface {
	IngestEvents(ctx context.Context, evs []events.Event) ([]bool, error)
}

// Config tunes group commit.
type Config struct {
	// Committers is how many batches may be in flight at once. While one commits,
	// the requests that arrive wait for the next free committer and go in together.
	Committers int
	// MaxBatch caps the events in one batch statement.
	MaxBatch int
	// Timeout bounds one batch's statement.
	Timeout time.Duration
	// Guard refuses the events of the other mode than the API key's and those of
	// connected accounts: they are stored ignored, with the reason, and get no job.
	Guard events.Guard
	// OnRefused, if set, is told the reason of each new event the guard refused (for
	// metrics).
	OnRefused func(reason string)
	// Now is the clock that events' times are checked against (nil: time.Now).
	Now func() time.Time
}

// Ingester stores events durably with their jobs. Events that arrive while a batch is
// committing are committed together in the next one (group commit), so a burst of
// webhooks costs a few commits, not one each; a lone event is committed at once,
// without waiting for company. A batch is one statement: one round trip.
type Ingester struct {
	store Store
	log   zerolog.Logger
	cfg   Config

	queue  chan *request
	mu     sync.RWMutex // guards closed against sends racing with Stop
	closed bool
	wg     sync.WaitGroup
	start  sync.Once
	stop   sync.Once
	// warned holds the refusal reasons already logged: one line per reason, not per
	// event, so that a misrouted endpoint does not flood the log.
	warned sync.Map
}

// Result says what Ingest did with an event.
type Result struct {
	// Duplicate is true when the event was already stored (a redelivery): nothing new
	// was written and no job was enqueued.
	Duplicate bool
	// Refused, when set, says why the guard refused the event: it was stored ignored.
	Refused *events.Refusal
}

type request struct {
	ev   events.Event
	done chan reply
}

type reply struct {
	res Result
	err error
}

// New returns an Ingester; Start it before use.
func New(store Store, cfg Config, log zerolog.Logger) *Ingester {
	if cfg.Committers <= 0 {
		// Measured (make bench): 2 lets one batch fill while the other commits; 1, 3
		// and 4 measured the same or worse, within the machine's noise.
		cfg.Committers = 2
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 256
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Ingester{
		store: store,
		log:   log,
		cfg:   cfg,
		queue: make(chan *request, cfg.MaxBatch*cfg.Committers),
	}
}

// Start starts the committers. Batches do not inherit ctx's cancellation: a request
// that is being committed finishes even when the server is shutting down.
func (in *Ingester) Start(ctx context.Context) {
	in.start.Do(func() {
		base := context.WithoutCancel(ctx)
		for range in.cfg.Committers {
			in.wg.Add(1)
			go in.commitLoop(base)
		}
	})
}

// Stop stops accepting events, commits those already accepted, and returns when the
// committers have finished. It is safe to call more than once.
func (in *Ingester) Stop() {
	in.stop.Do(func() {
		in.mu.Lock()
		in.closed = true
		close(in.queue)
		in.mu.Unlock()
	})
	in.wg.Wait()
}

// Ingest stores ev and, when it is new, of a handled type and not refused by the guard,
// its job, in one batch statement, and returns once that statement has committed or
// failed. It returns events.ErrInvalid (wrapped) for an event that is not a Stripe
// event, ErrNotStorable (wrapped) for one the database refused, ErrStopped after Stop,
// and the store's error (postgres.ErrUnavailable when the database is out of reach)
// when nothing was committed.
func (in *Ingester) Ingest(ctx context.Context, ev events.Event) (Result, error) {
	// Every path stores events through here, so every one checks and cleans them the
	// same way: a NUL that one path let through would stall it on that event forever.
	ev, err := events.Storable(ev, in.cfg.Now())
	if err != nil {
		return Result{}, err
	}

	// The guard next: a refused event is stored all the same (ignored, with its
	// reason) so that it is answered 200 and an operator can see it.
	ev.Refused = in.cfg.Guard.Check(ev)
	res, err := in.enqueue(ctx, ev)
	if err == nil && ev.Refused != nil {
		res.Refused = ev.Refused
		if !res.Duplicate {
			in.refused(ev)
		}
	}
	return res, err
}

// refused counts a new refused event and logs the first of each reason.
func (in *Ingester) refused(ev events.Event) {
	if in.cfg.OnRefused != nil {
		in.cfg.OnRefused(ev.Refused.Reason)
	}
	if _, seen := in.warned.LoadOrStore(ev.Refused.Reason, true); !seen {
		in.log.Warn().Str("event_id", ev.ID).Str("event_type", ev.Type).Str("reason", ev.Refused.Reason).
			Bool("livemode", ev.Livemode).Str("account", ev.Account).Str("detail", ev.Refused.Detail).
			Msg("event refused and stored as ignored; later ones refused for this reason are counted (keysync_events_refused_total), not logged")
	}
}

// enqueue hands ev to a committer and waits for its answer.
func (in *Ingester) enqueue(ctx context.Context, ev events.Event) (Result, error) {
	req := &request{ev: ev, done: make(chan reply, 1)}
	in.mu.RLock()
	if in.closed {
		in.mu.RUnlock()
		return Result{}, ErrStopped
	}
	select {
	case in.queue <- req:
	case <-ctx.Done():
		in.mu.RUnlock()
		return Result{}, ctx.Err()
	}
	in.mu.RUnlock()
	// Once queued, the event is committed or refused whatever happens to ctx: answering
	// before knowing would turn a stored event into a 503 or a lost one into a 200.
	r := <-req.done
	return r.res, r.err
}

func (in *Ingester) commitLoop(ctx context.Context) {
	defer in.wg.Done()
	batch := make([]*request, 0, in.cfg.MaxBatch)
	for first := range in.queue {
		batch = append(batch[:0], first)
	fill:
		for len(batch) < in.cfg.MaxBatch {
			select {
			case req, ok := <-in.queue:
				if !ok {
					break fill
				}
				batch = append(batch, req)
			default:
				break fill
			}
		}
		in.commit(ctx, batch)
	}
}

// commit writes one batch and answers every request in it.
func (in *Ingester) commit(ctx context.Context, batch []*request) {
	// The same event delivered twice in one batch is stored once; the second copy is
	// answered as the duplicate it is.
	first := make(map[string]int, len(batch))
	unique := make([]*request, 0, len(batch))
	for _, req := range batch {
		if _, seen := first[req.ev.ID]; !seen {
			first[req.ev.ID] = len(unique)
			unique = append(unique, req)
		}
	}
	results, err := in.write(ctx, unique)
	if err != nil && rejectedData(err) && len(unique) > 1 {
		// One bad event (say, a payload Postgres cannot store) must not cost the
		// others their delivery: write them one by one to isolate it.
		in.log.Warn().Err(err).Int("batch", len(unique)).Msg("batch insert failed; retrying events one by one")
		results = make([]Result, len(unique))
		perErr := make([]error, len(unique))
		for i, req := range unique {
			var r []Result
			if r, perErr[i] = in.write(ctx, []*request{req}); perErr[i] == nil {
				results[i] = r[0]
			}
			perErr[i] = notStorable(perErr[i])
		}
		in.answer(batch, first, results, perErr)
		return
	}
	var errs []error
	if err != nil {
		errs = make([]error, len(unique))
		for i := range errs {
			errs[i] = notStorable(err)
		}
	}
	in.answer(batch, first, results, errs)
}

// notStorable marks err as ErrNotStorable when the database refused the data itself: an
// event alone in its statement was the reason.
func notStorable(err error) error {
	if err != nil && rejectedData(err) {
		return fmt.Errorf("%w: %w", ErrNotStorable, err)
	}
	return err
}

func (in *Ingester) answer(batch []*request, first map[string]int, results []Result, errs []error) {
	answered := make([]bool, len(first))
	for _, req := range batch {
		i := first[req.ev.ID]
		var r reply
		switch {
		case errs != nil && errs[i] != nil:
			r.err = errs[i]
		case answered[i]:
			r.res = Result{Duplicate: true}
		default:
			r.res = results[i]
		}
		answered[i] = true
		req.done <- r
	}
}

// rejectedData reports whether Postgres refused the data itself (SQLSTATE class 22, data
// exception; 23, integrity violation; or 54, program limit exceeded: a value too large
// for a jsonb or an index entry), as opposed to being out of reach: only then can one
// event be the reason a batch failed.
func rejectedData(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

// write stores one batch, with jobs for the new handled events, in one statement.
func (in *Ingester) write(ctx context.Context, reqs []*request) ([]Result, error) {
	ctx, cancel := context.WithTimeout(ctx, in.cfg.Timeout)
	defer cancel()
	evs := make([]events.Event, len(reqs))
	for i, req := range reqs {
		evs[i] = req.ev
	}
	isNew, err := in.store.IngestEvents(ctx, evs)
	if err != nil {
		return nil, fmt.Errorf("store events: %w", err)
	}
	results := make([]Result, len(reqs))
	for i := range evs {
		results[i].Duplicate = !isNew[i]
	}
	return results, nil
}
