package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/syncer"
)

// The store serves Sync: these fail to compile if it stops doing so.
var (
	_ syncer.Store        = (*Store)(nil)
	_ syncer.Lock         = (*SubscriptionLock)(nil)
	_ syncer.PurchaseLock = (*PurchaseLock)(nil)
)

// syncLockSpace namespaces the per-subscription (and per-purchase) advisory locks: the
// ids never collide (sub_, cs_, in_).
const syncLockSpace int32 = 0x6b73 // "ks"

// runLockSpace namespaces the locks that keep one sweep, and one catch-up, running at a
// time across replicas.
const runLockSpace int32 = 0x6b72 // "kr"

// advisoryLock is a session advisory lock held on its own pooled connection, so that
// it goes with the connection if the process dies.
type advisoryLock struct {
	conn  *pgxpool.Conn
	space int32
	id    string
}

// tryLock takes the lock (space, hashtext(id)) on a connection of its own, or reports
// that another session holds it.
func (s *Store) tryLock(ctx context.Context, space int32, id string) (*advisoryLock, bool, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, false, translate(err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, hashtext($2))", space, id).Scan(&ok); err != nil {
		conn.Release()
		return nil, false, translate(err)
	}
	if !ok {
		conn.Release()
		return nil, false, nil
	}
	return &advisoryLock{conn: conn, space: space, id: id}, true, nil
}

// Release frees the lock. A lock whose connection died is freed by Postgres itself.
func (l *advisoryLock) Release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.conn.Exec(ctx, "SELECT pg_advisory_unlock($1, hashtext($2))", l.space, l.id); err != nil {
		// Do not hand a connection that may still hold the lock back to the pool.
		_ = l.conn.Conn().Close(ctx)
	}
	l.conn.Release()
}

// RunLock is held while one sweep or catch-up runs; Release frees it.
type RunLock struct{ *advisoryLock }

// TryLockRun takes the lock of a run kind ("sweep", "catch_up") unless a run of that
// kind holds it on some replica; then ok is false.
func (s *Store) TryLockRun(ctx context.Context, kind string) (*RunLock, bool, error) {
	l, ok, err := s.tryLock(ctx, runLockSpace, kind)
	if err != nil || !ok {
		if err != nil {
			err = fmt.Errorf("lock %s: %w", kind, err)
		}
		return nil, false, err
	}
	return &RunLock{l}, true, nil
}

// SubscriptionLock is held while one Sync runs; the Sync does its database work on the
// lock's connection (see subscriptions.go). Release frees it. It implements syncer.Lock.
type SubscriptionLock struct{ *advisoryLock }

// LockSubscription waits until no other Sync of the subscription runs on any replica,
// then holds its lock (a *SubscriptionLock) until Release. It returns ErrUnavailable (wrapped) when the
// database cannot be reached, and the context's error when ctx ends first.
//
// It polls and holds no connection while it waits (see waitLock).
func (s *Store) LockSubscription(ctx context.Context, id string) (syncer.Lock, error) {
	l, err := s.waitLock(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("lock subscription: %w", err)
	}
	return &SubscriptionLock{l}, nil
}

// PurchaseLock is held while one SyncPurchase runs; the Sync does its database work on
// the lock's connection (see purchases.go). Release frees it. It implements
// syncer.PurchaseLock.
type PurchaseLock struct {
	*advisoryLock
}

// LockPurchase waits until no other Sync of the purchase runs on any replica, then
// holds its lock (a *PurchaseLock) until Release, as LockSubscription does.
func (s *Store) LockPurchase(ctx context.Context, id string) (syncer.PurchaseLock, error) {
	l, err := s.waitLock(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("lock purchase: %w", err)
	}
	return &PurchaseLock{l}, nil
}

// waitLock waits for the Sync lock of id. It polls with pg_try_advisory_lock and holds
// no connection while it waits: waiters blocked inside pg_advisory_lock would hold every
// pooled connection and starve the lock's holder of the one it needs to finish.
func (s *Store) waitLock(ctx context.Context, id string) (*advisoryLock, error) {
	wait := 5 * time.Millisecond
	for {
		l, ok, err := s.tryLock(ctx, syncLockSpace, id)
		if err != nil {
			return nil, err
		}
		if ok {
			return l, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}
