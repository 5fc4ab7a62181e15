package stripesim_test

import (
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// GET /v1/customers?email= finds the customers with exactly that address, newest
// first: the spec's filter is case-sensitive.
func TestAPICustomersByEmail(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stripesim.Options{})
	srv := httptest.NewServer(w.sim)
	defer srv.Close()
	var ada []string
	for _, email := range []string{"ada@example.com", "bob@example.com", "ada@example.com", "Ada@example.com"} {
		res, err := w.sim.Checkout(stripesim.CheckoutParams{Email: email, Items: []stripesim.ItemParams{{Price: w.monthly}}})
		if err != nil {
			t.Fatal(err)
		}
		if email == "ada@example.com" {
			ada = append(ada, res.Customer)
		}
		w.sim.Advance(time.Second) // a second apart: the newest first is a real order
	}
	status, body := call(t, srv, "GET", "/v1/customers?email=ada@example.com", "sk_test_sim", nil)
	if got, want := ids(body), []string{ada[1], ada[0]}; status != 200 || !slices.Equal(got, want) || body["url"] != "/v1/customers" {
		t.Fatalf("got %d %v (url %v), want 200 with %v", status, got, body["url"], want)
	}
	_, page := call(t, srv, "GET", "/v1/customers?email=ada@example.com&limit=1", "sk_test_sim", nil)
	if got := ids(page); len(got) != 1 || got[0] != ada[1] || page["has_more"] != true {
		t.Fatalf("limit=1: got %v has_more %v, want [%s] and more", got, page["has_more"], ada[1])
	}
	_, all := call(t, srv, "GET", "/v1/customers?limit=100", "sk_test_sim", nil)
	if n := len(ids(all)); n != 4 {
		t.Fatalf("no filter: got %d customers, want 4", n)
	}
}
