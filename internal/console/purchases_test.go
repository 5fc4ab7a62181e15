package console_test

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// A purchase's page shows Stripe's view of the payment, its perpetual key as Cryptolens
// has it and as the policy wants it, what a Sync would do (after a full refund: block
// it), the audit trail and the events about it; Sync now does it, audited as the
// operator's, and says so, or says there was nothing to do.
func TestPurchasePageShowsPaymentKeyPreviewAuditAndEvents(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	p := e.buy(t)
	if _, err := e.world.Stripe.Refund(p.Charge, 0); err != nil {
		t.Fatal(err)
	}
	p.storeEvents(t, e)
	b := e.browser(t)
	b.login(fullToken)
	page := "/console/purchases/" + p.Session

	got := b.get(page)
	if got.status != 200 {
		t.Fatalf("got %d:\n%s", got.status, got.body)
	}
	for _, want := range []string{
		p.key, "perpetual", "never (perpetual)", "F2", // the key and the policy's wish
		">paid<", "yes, in full", p.Customer, // Stripe's view of the payment
		"block the key: purchase refunded", "- blocked   false", "+ blocked   true", // the preview, in words and as a diff
		"create_key", "webhook", // the audit trail
		"checkout.session.completed", "charge.succeeded", "charge.refunded", "invoice.paid", // the events about it
	} {
		if !strings.Contains(got.text(), want) {
			t.Fatalf("the purchase page lacks %q:\n%s", want, got.body)
		}
	}
	if k, _ := e.world.Crypto.Key(simtest.Product, p.key); k.Block {
		t.Fatal("the preview blocked the key")
	}

	// A Sync now without the session's CSRF token is refused and changes nothing.
	before := e.auditCount(t)
	if r := b.post(page+"/sync", url.Values{}); r.status != http.StatusForbidden || e.auditCount(t) != before {
		t.Fatalf("sync without CSRF: got %d and %d audit rows, want 403 and none", r.status, e.auditCount(t)-before)
	}

	// Sync now blocks the key, audited with the operator's name.
	r := b.post(page+"/sync", url.Values{"csrf": {got.csrf(t)}})
	if r.status != http.StatusSeeOther || r.header.Get("Location") != page+"?notice=synced&n=1" {
		t.Fatalf("sync: got %d to %q, want 303 back to the purchase", r.status, r.header.Get("Location"))
	}
	rows, err := e.store.QueryAudit(context.Background(), postgres.AuditFilter{Purchase: p.Session, Limit: 1})
	if err != nil || len(rows) != 1 || rows[0].Action != "block" || rows[0].Cause != "operator" || *rows[0].CauseID != "console:admin" {
		t.Fatalf("got audit %+v, %v; want a block by operator console:admin", rows, err)
	}
	if k, _ := e.world.Crypto.Key(simtest.Product, p.key); !k.Block {
		t.Fatal("Sync now did not block the refunded purchase's key")
	}
	if after := b.get(r.header.Get("Location")); !strings.Contains(after.text(), "Synced now: 1 action(s)") ||
		!strings.Contains(after.body, `<td data-label="Action">block</td>`) || !strings.Contains(after.text(), "Nothing: the key is as the policy wants.") {
		t.Fatalf("the page after the sync:\n%s", after.body)
	}

	// Nothing left: the notice says so.
	r = b.post(page+"/sync", url.Values{"csrf": {got.csrf(t)}})
	if after := b.get(r.header.Get("Location")); !strings.Contains(after.text(), "Synced now: nothing to do") {
		t.Fatalf("a second sync: went to %q:\n%s", r.header.Get("Location"), after.body)
	}

	// The post-payment invoice is part of the session's purchase: its page is the
	// session's. The audit log takes the purchase as a filter.
	if r := b.get("/console/purchases/" + p.Invoice + "?event=evt_1"); r.status != http.StatusFound || r.header.Get("Location") != page+"?event=evt_1" {
		t.Fatalf("the post-payment invoice: got %d to %q, want 302 to the session's page", r.status, r.header.Get("Location"))
	}
	if r := b.get("/console/audit?purchase=" + p.Session); r.status != 200 || !strings.Contains(r.body, `<a href="/console/purchases/`+p.Session+`">`) ||
		strings.Contains(r.body, e.sub) {
		t.Fatalf("the audit log filtered by purchase: got %d:\n%s", r.status, r.body)
	}
	for name, path := range map[string]string{"a subscription id": "/console/purchases/" + e.sub, "a customer id": "/console/purchases/" + p.Customer} {
		if r := b.get(path); r.status != http.StatusBadRequest {
			t.Fatalf("%s as a purchase: got %d, want 400", name, r.status)
		}
	}
}

// The read-only token sees a purchase's page and cannot sync it or replay its events.
func TestPurchasePageReadOnly(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	p := e.buy(t)
	if _, err := e.world.Stripe.Refund(p.Charge, 0); err != nil {
		t.Fatal(err)
	}
	b := e.browser(t)
	b.login(readToken)
	page := b.get("/console/purchases/" + p.Session)
	if page.status != 200 || !strings.Contains(page.body, p.key) || strings.Contains(page.body, "Sync now") || strings.Contains(page.body, "Replay event") {
		t.Fatalf("the read-only purchase page: got %d, want the key and no buttons:\n%s", page.status, page.body)
	}
	before := e.auditCount(t)
	if r := b.post("/console/purchases/"+p.Session+"/sync", url.Values{"csrf": {page.csrf(t)}}); r.status != http.StatusForbidden {
		t.Fatalf("read-only sync: got %d, want 403", r.status)
	}
	if k, _ := e.world.Crypto.Key(simtest.Product, p.key); k.Block || e.auditCount(t) != before {
		t.Fatal("the read-only token's sync changed something")
	}
}

// Search finds a purchase by its session or invoice id, its license key and the events
// about it, and lists a customer's purchases beside their subscriptions, by customer id
// and by e-mail.
func TestSearchFindsPurchases(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	p := e.buy(t)
	b := e.browser(t)
	b.login(fullToken)
	page := "/console/purchases/" + p.Session
	var completed, charge string
	for _, id := range p.events {
		ev, err := e.store.GetEvent(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		switch ev.Type {
		case "checkout.session.completed":
			completed = id
		case "charge.succeeded":
			charge = id
		}
	}
	subPage := "/console/subscriptions/" + e.sub
	for name, tc := range map[string]struct{ q, want string }{
		"session":         {p.Session, page},
		"invoice":         {p.Invoice, "/console/purchases/" + p.Invoice}, // its page is the session's (tested there)
		"charge":          {p.Charge, page},
		"license key":     {p.key, page},
		"session's event": {completed, page + "?event=" + completed},
		"charge's event":  {charge, page + "?event=" + charge},
		// A subscription's Checkout Session and invoices lead to the subscription.
		"subscription's session": {e.checkout.Session, subPage},
		"subscription's invoice": {e.checkout.Invoice, subPage},
		// A purchase id Stripe does not know still leads to its page, which says so.
		"unknown session": {"cs_nope", "/console/purchases/cs_nope"},
	} {
		r := b.get("/console/subscriptions?q=" + url.QueryEscape(tc.q))
		if r.status != http.StatusFound || r.header.Get("Location") != tc.want {
			t.Errorf("%s: got %d to %q, want 302 to %s", name, r.status, r.header.Get("Location"), tc.want)
		}
	}
	for name, q := range map[string]string{"customer": e.cust, "e-mail": "ada@example.com"} {
		r := b.get("/console/subscriptions?q=" + url.QueryEscape(q))
		if r.status != 200 || !strings.Contains(r.body, `<a href="/console/subscriptions/`+e.sub+`">`) ||
			!strings.Contains(r.body, `<a href="/console/purchases/`+p.Session+`">`) || !strings.Contains(r.body, p.key) ||
			!strings.Contains(r.text(), "1 one-time purchases") {
			t.Errorf("%s: got %d, want the subscription and the purchase listed:\n%s", name, r.status, r.body)
		}
	}
}

// A bundle's page shows every key, one per Cryptolens product, each with its state,
// the policy's wish and what a Sync would do; a search by the second key finds it.
func TestSubscriptionPageShowsEveryBundleKey(t *testing.T) {
	t.Parallel()
	e := setup(t, false)
	ctx := context.Background()
	const addonProduct = 2002
	e.world.Crypto.AddProduct(addonProduct, cryptolenssim.ProductOptions{})
	addon := e.world.Stripe.CreateProduct("Add-on", map[string]string{"skm_product_id": strconv.Itoa(addonProduct)})
	addonPrice, err := e.world.Stripe.CreatePrice(stripesim.PriceParams{Product: addon, UnitAmount: 500, Metadata: map[string]string{"skm": `{"F1":true,"F5":true,"MaxNoOfMachines":1}`}})
	if err != nil {
		t.Fatal(err)
	}
	pro := e.world.Price("Pro bundle", 1000, `{"F1":true,"MaxNoOfMachines":2}`)
	co, err := e.world.Stripe.Checkout(stripesim.CheckoutParams{Email: "grace@example.com", Items: []stripesim.ItemParams{{Price: pro}, {Price: addonPrice}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.engine.Sync(ctx, co.Subscription, syncer.Cause{Kind: syncer.CauseOperator, ID: "test"}); err != nil {
		t.Fatal(err)
	}
	keys, err := e.store.SubscriptionKeys(ctx, co.Subscription)
	if err != nil || len(keys) != 2 {
		t.Fatalf("got keys %+v, %v; want one per product", keys, err)
	}
	e.world.Stripe.Advance(32 * 24 * time.Hour) // renewed: both keys are a month short

	b := e.browser(t)
	b.login(fullToken)
	page := b.get("/console/subscriptions/" + co.Subscription)
	if page.status != 200 {
		t.Fatalf("got %d:\n%s", page.status, page.body)
	}
	for _, want := range []string{"Cryptolens product 1001", "Cryptolens product 2002", *keys[0].LicenseKey, *keys[1].LicenseKey,
		"its items map to 2 Cryptolens products", "F1+F5"} {
		if !strings.Contains(page.text(), want) {
			t.Fatalf("the bundle's page lacks %q:\n%s", want, page.body)
		}
	}
	if n := strings.Count(page.text(), "extend by"); n != 2 {
		t.Fatalf("the preview extends %d keys, want both:\n%s", n, page.body)
	}
	if n := strings.Count(page.body, `<span class="del">- expires`); n != 2 {
		t.Fatalf("the diff shows %d keys' expiry, want both:\n%s", n, page.body)
	}

	// The second product's key is in subscription_keys only: the search finds it there.
	if r := b.get("/console/subscriptions?q=" + url.QueryEscape(*keys[1].LicenseKey)); r.status != http.StatusFound ||
		r.header.Get("Location") != "/console/subscriptions/"+co.Subscription {
		t.Fatalf("search by the bundle's second key: got %d to %q", r.status, r.header.Get("Location"))
	}
}
