package stripeapi

import (
	"net/http"
	"testing"

	"github.com/stripe/stripe-go/v76"
)

// The metrics' route label is built from the path keysync's code spells out, never
// from an id: any id, of any shape, becomes {id}, so the label has a bounded set of
// values whatever ids reach Stripe.
func TestRouteNeverCarriesIDs(t *testing.T) {
	t.Parallel()
	tests := map[string]struct{ path, want string }{
		"a subscription":              {stripe.FormatURLPath("/v1/subscriptions/%s", "sub_1Abc"), "GET /v1/subscriptions/{id}"},
		"an id without an underscore": {stripe.FormatURLPath("/v1/subscriptions/%s", "notasub"), "GET /v1/subscriptions/{id}"},
		"an id with slashes":          {stripe.FormatURLPath("/v1/subscriptions/%s", "a/b/c/d"), "GET /v1/subscriptions/{id}"},
		"an id with a query":          {stripe.FormatURLPath("/v1/customers/%s", "x?y=1#z"), "GET /v1/customers/{id}"},
		"a list":                      {"/v1/events", "GET /v1/events"},
		"a nested list":               {stripe.FormatURLPath("/v1/invoices/%s/lines", "in_1"), "GET /v1/invoices/{id}/lines"},
		"a namespaced object":         {stripe.FormatURLPath("/v1/checkout/sessions/%s", "cs_1"), "GET /v1/checkout/sessions/{id}"},
		"behind a path prefix":        {stripe.FormatURLPath("/proxy/v1/prices/%s", "price1"), "GET /v1/prices/{id}"},
		"no version":                  {"/weird", "GET (other)"},
	}
	for name, tc := range tests {
		req, err := http.NewRequest(http.MethodGet, "https://api.stripe.com"+tc.path, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := route(req); got != tc.want {
			t.Errorf("%s: got %q, want %q", name, got, tc.want)
		}
	}
}
