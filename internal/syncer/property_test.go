package syncer_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// lifecycle plays a random subscription life, step by step. After each step, deliver is
// handed the events emitted so far that it has not consumed.
type lifecycle struct {
	steps []string
	trial bool
}

func randomLifecycle(rng *rand.Rand) lifecycle {
	l := lifecycle{trial: rng.IntN(2) == 0}
	choices := []string{"renew", "renew", "fail_then_pay", "upgrade", "downgrade", "seats"}
	for range 3 + rng.IntN(5) {
		l.steps = append(l.steps, choices[rng.IntN(len(choices))])
	}
	if rng.IntN(2) == 0 {
		l.steps = append(l.steps, "cancel_at_period_end")
	}
	return l
}

// play runs l on e; after the checkout and after each step, deliver(events) is called
// with every event emitted since the last call.
func play(t *testing.T, e *env, l lifecycle, seats *rand.Rand, deliver func([]stripesim.Event)) string {
	t.Helper()
	seen := 0
	flush := func() {
		evs := e.stripe.Events()
		deliver(evs[seen:])
		seen = len(evs)
	}
	trial := 0
	if l.trial {
		trial = 7
	}
	res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "p@example.com", Items: []stripesim.ItemParams{{Price: e.pro}}, TrialDays: trial})
	if err != nil {
		t.Fatal(err)
	}
	flush()
	for _, step := range l.steps {
		var err error
		switch step {
		case "renew":
			e.pastRenewal(t, res.Subscription)
		case "fail_then_pay":
			_ = e.stripe.FailNextPayment(res.Customer)
			e.pastRenewal(t, res.Subscription)
			if s, _ := e.stripe.Subscription(res.Subscription); s.Status == stripesim.StatusPastDue {
				err = e.stripe.PayInvoice(s.LatestInvoice)
			}
		case "upgrade":
			err = e.stripe.ChangePrice(res.Subscription, e.team, stripesim.ChangeOptions{})
		case "downgrade":
			err = e.stripe.ChangePrice(res.Subscription, e.pro, stripesim.ChangeOptions{})
		case "seats":
			err = e.stripe.ChangeQuantity(res.Subscription, 1+seats.Int64N(4), stripesim.ChangeOptions{})
		case "cancel_at_period_end":
			if err = e.stripe.CancelAtPeriodEnd(res.Subscription, true); err == nil {
				e.pastRenewal(t, res.Subscription)
			}
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		flush()
	}
	return res.Subscription
}

// handle is what the event worker does with one delivered event.
func (e *env) handle(t *testing.T, ev stripesim.Event) {
	t.Helper()
	ctx := context.Background()
	sub, err := e.syncer.SubscriptionFor(ctx, ev.Type, ev.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if sub == "" {
		return
	}
	if _, err := e.syncer.Sync(ctx, sub, syncer.Cause{Kind: "webhook", ID: ev.ID}); err != nil {
		t.Fatalf("sync on %s: %v", ev.Type, err)
	}
}

// checkBound fails if the key's expiry is beyond paid-through + buffer + 1 day.
func (e *env) checkBound(t *testing.T, sub, when string) {
	t.Helper()
	row, err := e.store.GetSubscription(context.Background(), sub)
	if err != nil || row.LicenseKey == nil {
		return
	}
	k, _ := e.crypto.Key(product, *row.LicenseKey)
	if limit := e.stripe.PaidThrough(sub).AddDate(0, 0, 6); k.Expires.After(limit) {
		t.Fatalf("%s: key expires %s, beyond paid-through + 5 days + 1 day (%s)", when, k.Expires, limit)
	}
}

// Any permutation of a lifecycle's webhook deliveries, each delivered 1-3 times and
// some held back across later steps, ends with the key of in-order delivery: the same
// block, features and machines, one key created once, and an expiry in the same
// one-day window [paid-through + 5 days, + 1 day). (To the second the expiries may
// differ: an event held back past the key's expiry makes Cryptolens count from today.)
func TestDeliveryOrderDoesNotMatter(t *testing.T) {
	t.Parallel()
	for seed := range uint64(10) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			l := randomLifecycle(rand.New(rand.NewPCG(seed, 1)))

			inOrder := setup(t)
			subA := play(t, inOrder, l, rand.New(rand.NewPCG(seed, 2)), func(evs []stripesim.Event) {
				for _, ev := range evs {
					inOrder.handle(t, ev)
				}
			})

			shuffled := setup(t)
			rng := rand.New(rand.NewPCG(seed, 3))
			var held []stripesim.Event
			var subB string
			subB = play(t, shuffled, l, rand.New(rand.NewPCG(seed, 2)), func(evs []stripesim.Event) {
				held = append(held, evs...)
				rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
				n := rng.IntN(len(held) + 1) // deliver some now, hold the rest for later
				for _, ev := range held[:n] {
					for range 1 + rng.IntN(3) {
						shuffled.handle(t, ev)
					}
				}
				held = append([]stripesim.Event(nil), held[n:]...)
				if subB != "" {
					shuffled.checkBound(t, subB, "mid-lifecycle")
				}
			})
			rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			for _, ev := range held {
				shuffled.handle(t, ev)
			}

			a, b := inOrder.key(t, subA), shuffled.key(t, subB)
			inOrder.checkBound(t, subA, "in order")
			shuffled.checkBound(t, subB, "shuffled")
			if a.Block != b.Block || a.Features != b.Features || a.MaxNoOfMachines != b.MaxNoOfMachines {
				t.Fatalf("steps %v:\n in order %+v\n shuffled %+v", l.steps, a, b)
			}
			if !a.Block {
				for name, pair := range map[string]struct {
					e   *env
					sub string
					k   cryptolenssim.Key
				}{"in order": {inOrder, subA, a}, "shuffled": {shuffled, subB, b}} {
					target := pair.e.stripe.PaidThrough(pair.sub).AddDate(0, 0, 5)
					if pair.k.Expires.Before(target) || pair.k.Expires.Sub(target) >= 24*time.Hour {
						t.Fatalf("steps %v: %s key expires %s, want within a day after %s", l.steps, name, pair.k.Expires, target)
					}
				}
			}
			for name, e := range map[string]*env{"in order": inOrder, "shuffled": shuffled} {
				if n := e.crypto.AppliedCount(cryptolenssim.CreateKey); n != 1 || len(e.crypto.Keys(product)) != 1 {
					t.Fatalf("%s: %d creates and %d keys, want 1 and 1", name, n, len(e.crypto.Keys(product)))
				}
			}
		})
	}
}
