// Package postgres is keysync's store: the SQL on keysync's tables, the transaction
// helper, the migrations (River's too), and the translation of driver errors into the
// package's sentinels. Statements on River's tables live in package jobs.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/syncer"
)

// ErrUnavailable means the database could not be reached or refused to work (connection
// refused or lost, server shutting down, too many connections). Callers answer 503 and
// let the sender retry; nothing was committed.
var ErrUnavailable = errors.New("database unavailable")

// ErrNotFound means no such row: the store returns it (wrapped) wherever a query finds
// nothing, and pgx.ErrNoRows never leaves this package. It is syncer.ErrNotFound, as
// os.ErrNotExist is fs.ErrNotExist: syncer declares the store it needs and tests for
// the sentinel without importing postgres.
var ErrNotFound = syncer.ErrNotFound

// PoolConfig tunes the connection pool.
type PoolConfig struct {
	MaxConns int32
	// ConnectTimeout bounds a single connection attempt, so an outage fails fast
	// instead of holding webhook requests open.
	ConnectTimeout time.Duration
}

// Open connects a pool to url and checks that the server answers. It returns
// ErrUnavailable (wrapped) when the server cannot be reached, and a plain error when the
// URL is malformed. The error never contains the URL's password.
func Open(ctx context.Context, url string, pc PoolConfig) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's parse errors can quote the URL; say only what is wrong with it.
		return nil, errors.New("DATABASE_URL is not a valid PostgreSQL connection string")
	}
	if pc.MaxConns > 0 {
		cfg.MaxConns = pc.MaxConns
	}
	if pc.ConnectTimeout > 0 {
		cfg.ConnConfig.ConnectTimeout = pc.ConnectTimeout
	} else if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", translate(err))
	}
	pingCtx, cancel := context.WithTimeout(ctx, cfg.ConnConfig.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping database: %w", translate(err))
	}
	return pool, nil
}

// Store runs keysync's queries on a pool.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store on pool. The caller owns the pool and closes it.
func NewStore(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool}
}

// Pool returns the underlying pool, for River, which shares it.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// InTx runs fn in one transaction and commits it when fn returns nil. Errors from the
// database are translated (ErrUnavailable when it cannot be reached); fn's own errors
// are returned as they are, after rollback.
func (s *Store) InTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", translate(err))
	}
	return finishTx(ctx, tx, fn)
}

// inTx runs fn in a transaction on q (a pool or a held connection).
func inTx(ctx context.Context, q interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, fn func(tx pgx.Tx) error) error {
	tx, err := q.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", translate(err))
	}
	return finishTx(ctx, tx, fn)
}

func finishTx(ctx context.Context, tx pgx.Tx, fn func(tx pgx.Tx) error) error {
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", translate(err))
	}
	return nil
}

// begin starts a transaction, trying once more when the first attempt failed before
// anything reached the server: after an outage the pool may hand out a connection that
// died meanwhile, and that should not cost a webhook a 503.
func (s *Store) begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil && pgconn.SafeToRetry(err) && ctx.Err() == nil {
		tx, err = s.pool.Begin(ctx)
	}
	return tx, err
}

// Ping checks that the database answers. It tries twice: after an outage the pool's
// first idle connection may be a dead one, and that is no reason to report not ready.
func (s *Store) Ping(ctx context.Context) error {
	err := s.pool.Ping(ctx)
	if err != nil && ctx.Err() == nil {
		err = s.pool.Ping(ctx)
	}
	return translate(err)
}

// Translate maps driver errors to the package's sentinels, as translate does, for the
// statements on River's tables that package jobs runs on the same database: one
// vocabulary for "the database is out of reach", wherever the SQL lives.
func Translate(err error) error { return translate(err) }

// translate maps driver errors to the package's sentinels: no row becomes ErrNotFound,
// anything that says the server is out of reach becomes ErrUnavailable; SQL errors stay
// as they are.
func translate(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotFound) {
		return err
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code[:2] == "08", // connection exception
			pgErr.Code[:2] == "53", // insufficient resources (too many connections, disk full)
			pgErr.Code == "57P01",  // admin shutdown
			pgErr.Code == "57P02",  // crash shutdown
			pgErr.Code == "57P03":  // cannot connect now (starting up)
			return fmt.Errorf("%w: %s", ErrUnavailable, pgErr.Code)
		}
		return err
	}
	// Everything without a SQLSTATE (refused or lost connection, timeout, closed pool,
	// broken pipe) is the connection failing, not the statement.
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
