package reconcile_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/reconcile"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// seeded is an account of n active subscriptions whose keys and mapping rows are all
// in their policy state: a sweep should find no drift.
type seeded struct {
	w        *simtest.World
	sweeper  *reconcile.Sweeper
	enqueued int
}

func seedAccount(tb testing.TB, n int) *seeded {
	tb.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.URL(tb))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	store := postgres.NewStore(pool)
	w := simtest.New(tb, simtest.Options{})
	price := w.Price("Pro", 3000, `{"F1":true,"MaxNoOfMachines":2}`)
	var rows [][]any
	for i := range n {
		res, err := w.Stripe.Checkout(stripesim.CheckoutParams{Email: fmt.Sprintf("u%d@example.com", i), Items: []stripesim.ItemParams{{Price: price}}})
		if err != nil {
			tb.Fatal(err)
		}
		inv, _ := w.Stripe.Invoice(res.Invoice)
		pt := time.Unix(inv.Lines[0].PeriodEnd, 0).UTC()
		k, _ := w.Crypto.PutKey(cryptolenssim.Key{ProductID: simtest.Product, Notes: syncer.Marker(res.Subscription),
			Expires: pt.AddDate(0, 0, 5), Features: [8]bool{true}, MaxNoOfMachines: 2})
		rows = append(rows, []any{res.Subscription, res.Customer, "active", simtest.Product, k.Key, pt})
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"subscriptions"}, []string{"id", "customer_id", "status", "product_id", "license_key", "paid_through"},
		pgx.CopyFromRows(rows)); err != nil {
		tb.Fatal(err)
	}
	// Two days on, the checkouts are past the sweep's window for one-time purchases
	// (its cursor less a day): a steady-state sweep lists only the last day's sessions
	// and invoices, here none.
	w.Stripe.Advance(48 * time.Hour)
	s := &seeded{w: w}
	sc, cc := w.Clients(tb)
	s.sweeper = reconcile.NewSweeper(sc, cc, store, reconcile.SweeperOptions{Mapping: license.NewMapping(0), Policy: license.Options{BufferDays: 5},
		Enqueue: func(_ context.Context, subs []string, _ int64) error { s.enqueued += len(subs); return nil }, Now: w.Stripe.Now}, zerolog.Nop())
	return s
}

// With no drift, a sweep costs about N/100 Stripe calls and K/99 Cryptolens calls,
// not one a subscription, plus a page of the last day's Checkout Sessions and one of
// its paid invoices (for one-time purchases).
func TestSweepCallsScaleWithPages(t *testing.T) {
	t.Parallel()
	const n = 10_000
	s := seedAccount(t, n)
	before := s.w.Stripe.Requests()
	s.w.Crypto.ResetCalls()
	sum, err := s.sweeper.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Scanned != n || len(sum.Drifted) != 0 || s.enqueued != 0 {
		t.Fatalf("got %d scanned, %d drifted (%v...): want %d and none", sum.Scanned, len(sum.Drifted), sum.Drifted[:min(3, len(sum.Drifted))], n)
	}
	stripeCalls := 0
	for route, c := range s.w.Stripe.Requests() {
		stripeCalls += c - before[route]
	}
	cryptoCalls := len(s.w.Crypto.Calls())
	const constant, purchaseLists = 5, 2
	budget := n/100 + n/99 + 1 + purchaseLists + constant
	t.Logf("%d subscriptions: %d Stripe calls, %d Cryptolens calls (budget %d)", n, stripeCalls, cryptoCalls, budget)
	if stripeCalls+cryptoCalls > budget || stripeCalls < n/100 || cryptoCalls < n/99 {
		t.Fatalf("got %d Stripe + %d Cryptolens calls, want about N/100 + K/99 = %d + %d (within %d)", stripeCalls, cryptoCalls, n/100, n/99, constant)
	}
}

// BenchmarkSweep reports a no-drift sweep of 10,000 subscriptions: time and allocations.
func BenchmarkSweep(b *testing.B) {
	s := seedAccount(b, 10_000)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.sweeper.RunOnce(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
