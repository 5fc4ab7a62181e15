package stripesim

import (
	"cmp"
	"net/url"
	"slices"
)

// listCustomers is GET /v1/customers: every customer, newest first, or with email=
// those whose address is exactly it (Stripe documents the filter as case-sensitive).
func (s *Sim) listCustomers(q url.Values) (any, *apiError) {
	var custs []*Customer
	for _, c := range s.customers {
		if q.Has("email") && c.Email != q.Get("email") {
			continue
		}
		custs = append(custs, c)
	}
	// Newest first; customers made in the same second in the order of their ids (a
	// guess: Stripe documents only "sorted by creation date").
	slices.SortFunc(custs, func(a, b *Customer) int { return cmp.Or(cmp.Compare(b.Created, a.Created), cmp.Compare(b.ID, a.ID)) })
	ids := make([]string, len(custs))
	for i, c := range custs {
		ids[i] = c.ID
	}
	lo, hi, more, err := page(ids, q)
	if err != nil {
		return nil, err
	}
	data := make([]any, 0, hi-lo)
	for _, c := range custs[lo:hi] {
		data = append(data, s.renderCustomer(c))
	}
	return list("/v1/customers", data, more), nil
}
