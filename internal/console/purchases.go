package console

import (
	"fmt"
	"net/http"
	"net/url"

	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

const notAPurchase = "A purchase id is a Checkout Session's (cs_…) or an invoice's (in_…)."

type purchasePage struct {
	ID      string
	Preview syncer.PurchasePreview
	// PreviewError says why Stripe or Cryptolens could not be read: the rest of the
	// page is keysync's own and still shown.
	PreviewError string
	// Keys are the perpetual keys the policy wants, one per Cryptolens product.
	Keys  []keyCard
	Trail trail
}

// purchase is a one-time purchase's page: Stripe's view of the payment, its keys as
// Cryptolens has them and as the policy wants them, what a Sync would do now, and the
// audit rows and events about it. The post-payment invoice of a Checkout Session is
// part of the session's purchase: its page is the session's.
func (c *Console) purchase(r *http.Request) (string, any, error) {
	ctx := r.Context()
	id := r.PathValue("id")
	if !syncer.IsPurchase(id) || len(id) > 255 {
		return "", nil, badRequest(notAPurchase)
	}
	event := r.URL.Query().Get("event")
	p := purchasePage{ID: id}

	// 1. What a Sync would see and do now; Stripe or Cryptolens may fail to answer,
	// and keysync's own part of the page is still worth showing.
	var err error
	p.Preview, err = c.o.Engine.PreviewPurchase(ctx, id)
	switch {
	case err == nil && p.Preview.Session != "":
		to := "/console/purchases/" + url.PathEscape(p.Preview.Session)
		if event != "" {
			to += "?event=" + url.QueryEscape(event)
		}
		return "", nil, redirectTo(to)
	case err != nil:
		_, p.PreviewError = c.explain(r, err)
	default:
		p.Keys = keyCards(p.Preview.Keys)
	}

	// 2. keysync's own: its audit rows and the events about it.
	p.Trail = trail{Back: "/console/purchases/" + id, AllAudit: "/console/audit?purchase=" + url.QueryEscape(id), Event: event,
		EventsNote: fmt.Sprintf("Events of the last %d days about this purchase (its Checkout Session or invoice, its payment's charges and their disputes), and every event that caused an audited action on it.",
			int(postgres.TouchWindow.Hours()/24))}
	if p.Trail.Audit, err = c.o.Store.QueryAudit(ctx, postgres.AuditFilter{Purchase: id, Limit: 50}); err != nil {
		return "", nil, err
	}
	if p.Trail.Events, err = c.o.Store.EventsTouchingPurchase(ctx, id, 50); err != nil {
		return "", nil, err
	}
	return "purchase", p, nil
}
