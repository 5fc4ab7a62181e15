package syncer_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// A license key is a credential: the Sync's log lines name it by its fingerprint, never
// whole, through its life (created, extended, blocked), at every log level.
func TestLogsNameKeysByFingerprint(t *testing.T) {
	t.Parallel()
	w := simtest.New(t, simtest.Options{Start: t0})
	sc, cc := w.Clients(t)
	var logs bytes.Buffer
	store := postgres.NewStore(pgtest.Pool(t))
	s := syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: store, Mapping: license.NewMapping(0),
		Log: zerolog.New(&logs).Level(zerolog.TraceLevel)},
		syncer.Options{Policy: license.Options{BufferDays: 5}, WriteStripeMetadata: true, Now: w.Stripe.Now})
	price := w.Price("App", 3000, `{"F1":true,"MaxNoOfMachines":2}`)
	co, err := w.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cause := context.Background(), syncer.Cause{Kind: syncer.CauseOperator, ID: "test"}
	res, err := s.Sync(ctx, co.Subscription, cause)
	if err != nil || res.Key == "" {
		t.Fatalf("sync: %+v, %v", res, err)
	}
	w.Stripe.Advance(40 * 24 * time.Hour) // a renewal: the key is extended
	if _, err := s.Sync(ctx, co.Subscription, cause); err != nil {
		t.Fatal(err)
	}
	if err := w.Stripe.CancelNow(co.Subscription); err != nil { // the end: the key is blocked
		t.Fatal(err)
	}
	if _, err := s.Sync(ctx, co.Subscription, cause); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if strings.Contains(out, res.Key) {
		t.Fatalf("a log line names the key %s whole:\n%s", cryptolens.KeyFingerprint(res.Key), out)
	}
	if n := strings.Count(out, cryptolens.KeyFingerprint(res.Key)); n < 3 {
		t.Fatalf("the key's fingerprint is in %d log lines, want one for each change (create, extend, block) at least:\n%s", n, out)
	}
}
