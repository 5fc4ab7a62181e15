package syncer_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// Crash safety: Sync is interrupted after Cryptolens applied a change and before the
// database committed it (the database goes away at that instant), then run again. No
// second key, no second extension.
func TestInterruptedAfterCryptolensBeforeCommit(t *testing.T) {
	t.Parallel()
	pool, proxy := proxiedPool(t)
	var cutAfter atomic.Value // the method whose success cuts the database
	cutAfter.Store("")
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r)
			if m := cutAfter.Load().(string); m != "" && strings.HasSuffix(r.URL.Path, "/"+m) {
				proxy.Cut() // the change is applied and answered; the commit will fail
			}
		})
	}
	e := setupWith(t, pool, wrap)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "c@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	ctx := context.Background()
	retry := func(step string) {
		t.Helper()
		cutAfter.Store("")
		proxy.Restore()
		if _, err := e.syncer.Sync(ctx, res.Subscription, syncer.Cause{Kind: "webhook", ID: "evt_retry"}); err != nil {
			t.Fatalf("%s: retry: %v", step, err)
		}
	}

	cutAfter.Store(cryptolenssim.CreateKey)
	if _, err := e.syncer.Sync(ctx, res.Subscription, syncer.Cause{Kind: "webhook", ID: "evt_1"}); err == nil {
		t.Fatal("got nil error with the database gone before the commit")
	}
	retry("create")
	if n := e.crypto.AppliedCount(cryptolenssim.CreateKey); n != 1 || len(e.crypto.Keys(product)) != 1 {
		t.Fatalf("got %d creates and %d keys after the interrupted create, want 1 and 1", n, len(e.crypto.Keys(product)))
	}

	e.pastRenewal(t, res.Subscription)
	cutAfter.Store(cryptolenssim.ExtendLicense)
	if _, err := e.syncer.Sync(ctx, res.Subscription, syncer.Cause{Kind: "webhook", ID: "evt_2"}); err == nil {
		t.Fatal("got nil error with the database gone before the commit")
	}
	retry("extend")
	retry("extend again")
	if n := e.crypto.AppliedCount(cryptolenssim.ExtendLicense); n != 1 {
		t.Fatalf("got %d extensions after the interrupted one, want 1", n)
	}
	e.wantExpiry(t, res.Subscription, "after the interrupted extension")
}

// proxiedPool returns a pool for a fresh database reached through a proxy that can cut
// the connections at any instant.
func proxiedPool(t *testing.T) (*pgxpool.Pool, *pgtest.Proxy) {
	t.Helper()
	url := pgtest.URL(t)
	hp, err := pgtest.HostPort(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := pgtest.NewProxy(t, hp)
	cfg, _ := pgxpool.ParseConfig(pgtest.WithHostPort(url, proxy.Addr()))
	cfg.ConnConfig.ConnectTimeout = time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, proxy
}

// The expiry block keysync sees is recorded before any Cryptolens call: a Sync that
// extends the key, fails to unblock it, and then loses the database before its final
// commit leaves a key that no longer looks expired; only the early record tells the
// retry that the block is Cryptolens' expiry block, to lift.
func TestExpiryBlockRecordedBeforeCalls(t *testing.T) {
	t.Parallel()
	pool, proxy := proxiedPool(t)
	var failing atomic.Bool
	wrap := func(next http.Handler) http.Handler {
		unblock := failUnblock(&failing)(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			unblock.ServeHTTP(w, r)
			if failing.Load() && strings.HasSuffix(r.URL.Path, "/"+cryptolenssim.ExtendLicense) {
				proxy.Cut() // extended and answered; the final commit will fail
			}
		})
	}
	e := setupWith(t, pool, wrap)
	res, _ := e.stripe.Checkout(stripesim.CheckoutParams{Email: "e@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}})
	ctx := context.Background()
	e.sync(t, res.Subscription)
	e.lapse(t, res) // blocked for expiry after the last Sync: keysync has not seen the block
	e.payLatest(t, res)

	failing.Store(true)
	if _, err := e.syncer.Sync(ctx, res.Subscription, syncer.Cause{Kind: "webhook", ID: "evt_paid"}); err == nil {
		t.Fatal("got nil error with UnblockKey failing and the database gone")
	}
	if ks := e.crypto.Keys(product); len(ks) != 1 || !ks[0].Block || !ks[0].Expires.After(e.stripe.Now()) {
		t.Fatalf("got %+v, want one key, extended and still blocked", ks)
	}
	failing.Store(false)
	proxy.Restore()
	e.sync(t, res.Subscription)
	if k := e.key(t, res.Subscription); k.Block {
		t.Fatal("the retry left the expiry block on a paid, extended key")
	}
	if n := e.crypto.AppliedCount(cryptolenssim.ExtendLicense); n != 1 {
		t.Fatalf("got %d extensions, want 1", n)
	}
}
