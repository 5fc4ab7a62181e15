package stripesim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"
	"github.com/stripe/stripe-mock/embedded"

	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// spec is the OpenAPI document of API 2023-10-16 that stripe-mock v0.183.0 embeds, made
// strict: an object schema that lists its properties refuses any other, so a field name
// that does not exist in 2023-10-16 fails validation.
var spec = sync.OnceValues(func() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(embedded.OpenAPISpec)
	if err != nil {
		return nil, err
	}
	if doc.Info.Version != "2023-10-16" {
		return nil, fmt.Errorf("spec version %s, want 2023-10-16", doc.Info.Version)
	}
	seen := map[*openapi3.Schema]bool{}
	var strict func(*openapi3.SchemaRef)
	strict = func(ref *openapi3.SchemaRef) {
		if ref == nil || ref.Value == nil || seen[ref.Value] {
			return
		}
		s := ref.Value
		seen[s] = true
		if len(s.Properties) > 0 && s.AdditionalProperties.Schema == nil {
			no := false
			s.AdditionalProperties.Has = &no
		}
		for _, p := range s.Properties {
			strict(p)
		}
		strict(s.Items)
		strict(s.AdditionalProperties.Schema)
		for _, group := range []openapi3.SchemaRefs{s.AnyOf, s.OneOf, s.AllOf} {
			for _, r := range group {
				strict(r)
			}
		}
	}
	for _, ref := range doc.Components.Schemas {
		strict(ref)
	}
	return doc, nil
})

// validate checks v (decoded JSON) against the named component schema, and a nested
// event object against its own schema.
func validate(t *testing.T, schema string, raw []byte) {
	t.Helper()
	doc, err := spec()
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	ref, ok := doc.Components.Schemas[schema]
	if !ok {
		t.Fatalf("no schema %q in the spec", schema)
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if err := ref.Value.VisitJSON(v, openapi3.MultiErrors(), openapi3.DisableSchemaErrorDetails()); err != nil {
		t.Errorf("%s does not validate against API 2023-10-16:\n%v\n%s", schema, err, truncate(raw))
	}
	if schema == "event" {
		obj := v.(map[string]any)["data"].(map[string]any)["object"].(map[string]any)
		b, _ := json.Marshal(obj)
		validate(t, obj["object"].(string), b)
	}
}

func truncate(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "..."
	}
	return string(b)
}

// playAll drives every control action, so every object and event type exists.
func playAll(t *testing.T) (*stripesim.Sim, *httptest.Server, map[string]string) {
	t.Helper()
	sim := stripesim.New(stripesim.Options{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	ids := map[string]string{}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	prod := sim.CreateProduct("Pro", map[string]string{"skm_product_id": "1234"})
	monthly, err := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 4900, Metadata: map[string]string{"skm": `{"F1":true,"MaxNoOfMachines":3}`}})
	must(err)
	yearly, err := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 49000, Interval: "year"})
	must(err)
	team, err := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 9900})
	must(err)
	calls, err := sim.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 2, UsageType: stripesim.UsageMetered})
	must(err)

	a, err := sim.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Name: "Ada", Items: []stripesim.ItemParams{{Price: monthly}},
		TrialDays: 14, ClientReferenceID: "user-1", SubscriptionMetadata: map[string]string{"plan": "pro"}})
	must(err)
	sim.Advance(15 * 24 * time.Hour)
	must(sim.ChangeQuantity(a.Subscription, 3, stripesim.ChangeOptions{}))
	sim.Advance(31 * 24 * time.Hour)
	must(sim.FailNextPayment(a.Customer))
	sim.Advance(28 * 24 * time.Hour) // past the failed renewal, before the first retry
	subA, _ := sim.Subscription(a.Subscription)
	must(sim.PayInvoice(subA.LatestInvoice))
	charges := sim.Charges(subA.LatestInvoice)
	ids["charge"] = charges[len(charges)-1].ID
	_, err = sim.Refund(ids["charge"], 1000)
	must(err)
	ids["dispute"], err = sim.Dispute(ids["charge"], "")
	must(err)
	must(sim.CloseDispute(ids["dispute"], true))
	must(sim.ChangePrice(a.Subscription, team, stripesim.ChangeOptions{InvoiceNow: true}))
	must(sim.ChangePrice(a.Subscription, yearly, stripesim.ChangeOptions{}))
	must(sim.SetSubscriptionMetadata(a.Subscription, map[string]string{"cryptolens_key": "AAAAA-BBBBB-CCCCC-DDDDD"}))
	must(sim.CancelAtPeriodEnd(a.Subscription, true))

	b, err := sim.Checkout(stripesim.CheckoutParams{Email: "bob@example.com", Items: []stripesim.ItemParams{{Price: monthly}}, CardDeclines: true})
	must(err)
	c, err := sim.Checkout(stripesim.CheckoutParams{Email: "cy@example.com", Items: []stripesim.ItemParams{{Price: monthly, Quantity: 2}}})
	must(err)
	must(sim.Pause(c.Subscription))
	must(sim.Resume(c.Subscription))
	d, err := sim.Checkout(stripesim.CheckoutParams{Email: "di@example.com", Items: []stripesim.ItemParams{{Price: monthly}}})
	must(err)
	must(sim.SetCardDeclines(d.Customer, true))
	// An invoiced customer who pays late, a paused collection, metered usage beside a
	// licensed price, and a trial moved later.
	e, err := sim.CreateSubscription(stripesim.SubscriptionParams{Email: "ed@example.com", Items: []stripesim.ItemParams{{Price: monthly}},
		CollectionMethod: stripesim.SendInvoice, DaysUntilDue: 7, Metadata: map[string]string{"skm_key_id": "7", "skm_key_globalid": "9001"}})
	must(err)
	f, err := sim.Checkout(stripesim.CheckoutParams{Email: "fa@example.com", Items: []stripesim.ItemParams{{Price: monthly}}})
	must(err)
	must(sim.SetPauseCollection(f.Subscription, stripesim.PauseMarkUncollectible, sim.Now().Add(40*24*time.Hour)))
	g, err := sim.Checkout(stripesim.CheckoutParams{Email: "gu@example.com", Items: []stripesim.ItemParams{{Price: calls}, {Price: monthly}}})
	must(err)
	subG, _ := sim.Subscription(g.Subscription)
	must(sim.ReportUsage(subG.Items[0].ID, 1234))
	h, err := sim.Checkout(stripesim.CheckoutParams{Email: "hi@example.com", Items: []stripesim.ItemParams{{Price: monthly}}, TrialDays: 7})
	must(err)
	must(sim.ExtendTrial(h.Subscription, sim.Now().Add(60*24*time.Hour)))
	sim.Advance(32 * 24 * time.Hour)
	must(sim.ExhaustDunning(d.Subscription, stripesim.StatusUnpaid))
	subE, _ := sim.Subscription(e.Subscription)
	must(sim.PayInvoice(subE.LatestInvoice))
	_, err = sim.InjectEvent("customer.subscription.updated", a.Subscription, stripesim.InjectOptions{Livemode: true})
	must(err)
	_, err = sim.InjectEvent("invoice.paid", g.Invoice, stripesim.InjectOptions{Account: "acct_1Connected"})
	must(err)
	if status, body := call(t, srv, "POST", "/v1/subscriptions/"+a.Subscription, "sk_test_sim",
		url.Values{"cancellation_details[comment]": {"moving on"}, "cancellation_details[feedback]": {"unused"}}); status != 200 {
		t.Fatalf("cancellation_details: %d %v", status, body)
	}

	// One-time purchases: a card payment with a post-payment invoice (later refunded), a
	// delayed payment that succeeds and one that fails, a guest's, and an invoice of no
	// subscription (later disputed).
	lifetime := sim.CreateProduct("Lifetime", map[string]string{"skm_product_id": "1234"})
	once, err := sim.CreatePrice(stripesim.PriceParams{Product: lifetime, UnitAmount: 19900, OneTime: true})
	must(err)
	paid, err := sim.CheckoutPayment(stripesim.PaymentParams{Email: "jo@example.com", Items: []stripesim.ItemParams{{Price: once, Quantity: 2}},
		InvoiceCreation: true})
	must(err)
	_, err = sim.Refund(paid.Charge, 0)
	must(err)
	for _, succeeded := range []bool{true, false} {
		async, err := sim.CheckoutPayment(stripesim.PaymentParams{Email: "ka@example.com", Items: []stripesim.ItemParams{{Price: once}}, Async: true})
		must(err)
		must(sim.SettleAsyncPayment(async.Session, succeeded))
	}
	guest, err := sim.CheckoutPayment(stripesim.PaymentParams{Guest: true, Email: "li@example.com", Items: []stripesim.ItemParams{{Price: once}}})
	must(err)
	oneOff, err := sim.CreateInvoice(stripesim.InvoiceParams{Email: "mo@example.com", Items: []stripesim.ItemParams{{Price: once}}})
	must(err)
	ids["oneOffCharge"] = sim.Charges(oneOff.Invoice)[0].ID
	_, err = sim.Dispute(ids["oneOffCharge"], "")
	must(err)
	ids["payment"], ids["paymentIntent"], ids["postPaymentInvoice"], ids["guest"] = paid.Session, paid.PaymentIntent, paid.Invoice, guest.Session
	ids["oneOff"], ids["oneTimePrice"] = oneOff.Invoice, once

	ids["subA"], ids["subB"], ids["subC"], ids["subD"] = a.Subscription, b.Subscription, c.Subscription, d.Subscription
	ids["subE"], ids["subF"], ids["subG"], ids["subH"] = e.Subscription, f.Subscription, g.Subscription, h.Subscription
	ids["session"], ids["customer"], ids["price"], ids["product"] = a.Session, a.Customer, monthly, prod
	return sim, srv, ids
}

func get(t *testing.T, srv *httptest.Server, path string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer sk_test_sim")
	req.Header.Set("Stripe-Version", stripesim.APIVersion) // as stripe-go v76 does
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

func TestFidelity(t *testing.T) {
	t.Parallel()
	sim, srv, ids := playAll(t)

	// Every event: validates against the spec, and stripe-go's ConstructEvent accepts it.
	types := map[string]bool{}
	for _, ev := range sim.Events() {
		types[ev.Type] = true
		validate(t, "event", ev.Payload)
		signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: ev.Payload, Secret: "whsec_x"})
		got, err := webhook.ConstructEvent(ev.Payload, signed.Header, "whsec_x")
		if err != nil {
			t.Fatalf("%s: ConstructEvent: %v", ev.Type, err)
		}
		if got.ID != ev.ID || string(got.Type) != ev.Type || got.APIVersion != stripe.APIVersion {
			t.Fatalf("decoded %s as %+v", ev.Type, got)
		}
	}
	for _, want := range []string{"customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
		"customer.subscription.paused", "customer.subscription.resumed", "invoice.created", "invoice.finalized", "invoice.paid",
		"invoice.payment_succeeded", "invoice.payment_failed", "invoice.voided", "checkout.session.completed", "charge.succeeded",
		"charge.failed", "charge.refunded", "charge.dispute.created", "charge.dispute.closed", "customer.created",
		"invoice.marked_uncollectible", "charge.pending", "checkout.session.async_payment_succeeded",
		"checkout.session.async_payment_failed"} {
		if !types[want] {
			t.Errorf("no %s event was played", want)
		}
	}

	// Every object the API serves validates and decodes into stripe-go v76's types.
	var list struct {
		Data []json.RawMessage `json:"data"`
	}
	raw := get(t, srv, "/v1/subscriptions?status=all&limit=100&expand[]=data.latest_invoice&expand[]=data.items.data.price.product")
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Data) != 8 {
		t.Fatalf("got %d subscriptions (%v), want the 8 played", len(list.Data), err)
	}
	for _, s := range list.Data {
		validate(t, "subscription", s)
		var sub stripe.Subscription
		if err := json.Unmarshal(s, &sub); err != nil {
			t.Fatal(err)
		}
		if sub.ID == "" || sub.CurrentPeriodEnd == 0 || sub.Customer == nil || sub.Customer.ID == "" ||
			sub.LatestInvoice == nil || sub.LatestInvoice.Lines == nil || sub.Items.Data[0].Price.Product.Metadata["skm_product_id"] != "1234" {
			t.Fatalf("decoded subscription lacks fields keysync reads: %+v", sub)
		}
	}
	for _, name := range []string{"A", "B", "C", "D", "E", "F", "G", "H"} {
		id := ids["sub"+name]
		raw := get(t, srv, "/v1/invoices?limit=100&subscription="+id)
		var invs struct {
			Data []json.RawMessage `json:"data"`
		}
		_ = json.Unmarshal(raw, &invs)
		if len(invs.Data) == 0 {
			t.Fatalf("subscription %s has no invoices", name)
		}
		for _, in := range invs.Data {
			validate(t, "invoice", in)
			var inv stripe.Invoice
			if err := json.Unmarshal(in, &inv); err != nil {
				t.Fatal(err)
			}
			if inv.Subscription == nil || inv.Subscription.ID != id || len(inv.Lines.Data) == 0 || inv.Lines.Data[0].Period.End == 0 {
				t.Fatalf("decoded invoice lacks fields keysync reads: %+v", inv)
			}
		}
	}
	decodeInto := map[string]any{
		"/v1/checkout/sessions/" + ids["payment"]:          &stripe.CheckoutSession{},
		"/v1/checkout/sessions/" + ids["guest"]:            &stripe.CheckoutSession{},
		"/v1/invoices/" + ids["oneOff"]:                    &stripe.Invoice{},
		"/v1/invoices/" + ids["postPaymentInvoice"]:        &stripe.Invoice{},
		"/v1/prices/" + ids["oneTimePrice"]:                &stripe.Price{},
		"/v1/charges/" + ids["oneOffCharge"]:               &stripe.Charge{},
		"/v1/charges/" + ids["charge"]:                     &stripe.Charge{},
		"/v1/disputes/" + ids["dispute"]:                   &stripe.Dispute{},
		"/v1/customers/" + ids["customer"]:                 &stripe.Customer{},
		"/v1/checkout/sessions/" + ids["session"]:          &stripe.CheckoutSession{},
		"/v1/prices/" + ids["price"] + "?expand[]=product": &stripe.Price{},
		"/v1/products/" + ids["product"]:                   &stripe.Product{},
		"/v1/events?limit=100":                             &stripe.EventList{},
	}
	schemas := map[string]string{"charges": "charge", "disputes": "dispute", "customers": "customer", "checkout": "checkout.session",
		"prices": "price", "products": "product", "invoices": "invoice"}
	paths := make([]string, 0, len(decodeInto))
	for p := range decodeInto {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, path := range paths {
		raw := get(t, srv, path)
		if err := json.Unmarshal(raw, decodeInto[path]); err != nil {
			t.Fatalf("%s: decode into %T: %v", path, decodeInto[path], err)
		}
		if res := strings.Split(path, "/")[2]; schemas[strings.Split(res, "?")[0]] != "" {
			validate(t, schemas[strings.Split(res, "?")[0]], raw)
		}
	}
	ch := decodeInto["/v1/charges/"+ids["charge"]].(*stripe.Charge)
	if ch.Invoice == nil || ch.Invoice.ID == "" || !ch.Disputed || ch.AmountRefunded != 1000 {
		t.Fatalf("decoded charge: %+v", ch)
	}
	pay := decodeInto["/v1/checkout/sessions/"+ids["payment"]].(*stripe.CheckoutSession)
	if pay.Mode != stripe.CheckoutSessionModePayment || pay.PaymentStatus != stripe.CheckoutSessionPaymentStatusPaid ||
		pay.PaymentIntent == nil || pay.PaymentIntent.ID != ids["paymentIntent"] || pay.Invoice == nil || pay.Invoice.ID != ids["postPaymentInvoice"] ||
		pay.Customer == nil || pay.LineItems != nil {
		t.Fatalf("decoded payment session: %+v", pay)
	}
	if g := decodeInto["/v1/checkout/sessions/"+ids["guest"]].(*stripe.CheckoutSession); g.Customer != nil || g.CustomerDetails.Email != "li@example.com" {
		t.Fatalf("decoded guest session: %+v", g)
	}
	if inv := decodeInto["/v1/invoices/"+ids["oneOff"]].(*stripe.Invoice); inv.Subscription != nil || inv.Status != stripe.InvoiceStatusPaid ||
		inv.Lines.Data[0].Price.Type != stripe.PriceTypeOneTime {
		t.Fatalf("decoded one-off invoice: %+v", inv)
	}
	if p := decodeInto["/v1/prices/"+ids["oneTimePrice"]].(*stripe.Price); p.Type != stripe.PriceTypeOneTime || p.Recurring != nil {
		t.Fatalf("decoded one-time price: %+v", p)
	}

	// The list calls a purchase's Sync and the sweep make.
	var items struct {
		Data []json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(get(t, srv, "/v1/checkout/sessions/"+ids["payment"]+"/line_items?limit=100&expand[]=data.price.product"), &items)
	if len(items.Data) != 1 {
		t.Fatalf("got %d line items, want 1", len(items.Data))
	}
	validate(t, "item", items.Data[0])
	var li stripe.LineItem
	if err := json.Unmarshal(items.Data[0], &li); err != nil || li.Quantity != 2 || li.Price.Type != stripe.PriceTypeOneTime ||
		li.Price.Product.Metadata["skm_product_id"] != "1234" {
		t.Fatalf("decoded line item: %+v (%v)", li, err)
	}
	var sessions stripe.CheckoutSessionList
	raw = get(t, srv, "/v1/checkout/sessions?status=complete&limit=100&created[gte]=0")
	if err := json.Unmarshal(raw, &sessions); err != nil || len(sessions.Data) < 4 {
		t.Fatalf("got %d complete sessions (%v)", len(sessions.Data), err)
	}
	var charges stripe.ChargeList
	raw = get(t, srv, "/v1/charges?payment_intent="+ids["paymentIntent"])
	if err := json.Unmarshal(raw, &charges); err != nil || len(charges.Data) != 1 || !charges.Data[0].Refunded ||
		charges.Data[0].PaymentIntent == nil || charges.Data[0].PaymentIntent.ID != ids["paymentIntent"] {
		t.Fatalf("charges of the payment: %+v (%v)", charges.Data, err)
	}
	var list2 struct {
		Data []json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(raw, &list2)
	validate(t, "charge", list2.Data[0])

	evs := decodeInto["/v1/events?limit=100"].(*stripe.EventList)
	if len(evs.Data) == 0 {
		t.Fatal("got no events from the Events API")
	}
	for i := 1; i < len(evs.Data); i++ {
		if evs.Data[i].Created > evs.Data[i-1].Created {
			t.Fatalf("events not newest first at %d", i)
		}
	}
}
