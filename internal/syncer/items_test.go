package syncer_test

import (
	"testing"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// A subscription embeds only its first 20 items (items.has_more beyond); the mapping
// must see every item: the 23rd adds F5, and every item a machine.
func TestMoreThanTwentyItemsAllMap(t *testing.T) {
	t.Parallel()
	e := setup(t)
	prod := e.stripe.CreateProduct("Add-ons", map[string]string{"skm_product_id": "1001"})
	var items []stripesim.ItemParams
	for i := range 23 {
		skm := `{"F2":true,"MaxNoOfMachines":1}`
		if i == 22 {
			skm = `{"F5":true,"MaxNoOfMachines":1}`
		}
		p, err := e.stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 100, Metadata: map[string]string{"skm": skm}})
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, stripesim.ItemParams{Price: p})
	}
	res, err := e.stripe.Checkout(stripesim.CheckoutParams{Email: "many@example.com", Items: items})
	if err != nil {
		t.Fatal(err)
	}
	e.sync(t, res.Subscription)
	k := e.key(t, res.Subscription)
	if !k.Features[1] || !k.Features[4] || k.MaxNoOfMachines != 23 {
		t.Fatalf("got F2=%v F5=%v and %d machines, want F2 and F5 on and 23 machines (one per item)", k.Features[1], k.Features[4], k.MaxNoOfMachines)
	}
}
