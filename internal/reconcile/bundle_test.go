package reconcile_test

import (
	"context"
	"strings"
	"testing"

	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// The sweep judges each key of a bundle (a subscription whose items map to two
// Cryptolens products) on its own: both missing keys with every webhook lost, one
// key's drifted feature, and both mapping rows lost, which it rebuilds without
// creating a key.
func TestSweepSeesEveryKeyOfABundle(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	ctx := context.Background()
	const other = 2002
	h.w.Crypto.AddProduct(other, cryptolenssim.ProductOptions{})
	addonProduct := h.w.Stripe.CreateProduct("Add-on", map[string]string{"skm_product_id": "2002"})
	addon, _ := h.w.Stripe.CreatePrice(stripesim.PriceParams{Product: addonProduct, UnitAmount: 500, Metadata: map[string]string{"skm": `{"F5":true}`}})
	res, err := h.w.Stripe.Checkout(stripesim.CheckoutParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: h.pro}, {Price: addon}}})
	if err != nil {
		t.Fatal(err)
	}
	h.idle(t)
	sweep := func(want ...string) {
		t.Helper()
		sum, err := h.sweeper.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range sum.Drifted {
			got = append(got, d.ID()+": "+d.Reason)
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("sweep: got drift\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		h.idle(t)
	}
	sub := res.Subscription
	sweep(sub + ": product 1001: create_key; product 2002: create_key")
	if a, b := len(h.w.Crypto.Keys(simtest.Product)), len(h.w.Crypto.Keys(other)); a != 1 || b != 1 {
		t.Fatalf("got %d and %d keys, want one in each product", a, b)
	}
	sweep()

	k := h.w.Crypto.Keys(other)[0]
	h.w.Crypto.EditKey(other, k.Key, func(k *cryptolenssim.Key) { k.Features[4] = false })
	sweep(sub + ": product 2002: add_feature")
	if k, _ := h.w.Crypto.Key(other, k.Key); !k.Features[4] {
		t.Fatal("the add-on's feature was not put back")
	}

	if _, err := h.pool.Exec(ctx, "TRUNCATE subscriptions CASCADE"); err != nil {
		t.Fatal(err)
	}
	sweep(sub + ": product 1001: missing mapping row; product 2002: missing mapping row")
	sweep()
	if n := h.w.Crypto.AppliedCount(cryptolenssim.CreateKey); n != 2 {
		t.Fatalf("got %d keys created, want 2: the lost mapping comes back from the markers", n)
	}
	var bundled int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM subscription_keys WHERE subscription_id = $1`, sub).Scan(&bundled); err != nil || bundled != 1 {
		t.Fatalf("got %d bundle rows (%v), want the add-on's key recorded again", bundled, err)
	}
}
