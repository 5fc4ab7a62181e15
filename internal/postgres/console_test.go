package postgres_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
)

// The events that touched a subscription: its own, the invoices and sessions that name
// it (in 2023-10-16 and, under parent, in basil), and older ones only through the
// audit rows they caused; never another subscription's.
func TestEventsTouching(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	insert := func(id string, age time.Duration, payload string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO stripe_events (id, type, created, livemode, payload, source, status)
			VALUES ($1, 'x', now() - make_interval(secs => $2), false, $3, 'webhook', 'processed')`, id, age.Seconds(), payload); err != nil {
			t.Fatal(err)
		}
	}
	day := 24 * time.Hour
	insert("evt_sub", day, `{"data":{"object":{"object":"subscription","id":"sub_1"}}}`)
	insert("evt_invoice", 2*day, `{"data":{"object":{"object":"invoice","id":"in_1","subscription":"sub_1"}}}`)
	insert("evt_basil", 3*day, `{"data":{"object":{"object":"invoice","id":"in_2","parent":{"subscription_details":{"subscription":"sub_1"}}}}}`)
	insert("evt_session", 4*day, `{"data":{"object":{"object":"checkout.session","id":"cs_1","subscription":"sub_1"}}}`)
	insert("evt_charge_acted", 5*day, `{"data":{"object":{"object":"charge","id":"ch_1"}}}`)
	insert("evt_old_acted", 60*day, `{"data":{"object":{"object":"invoice","id":"in_0","subscription":"sub_1"}}}`)
	insert("evt_old_quiet", 61*day, `{"data":{"object":{"object":"invoice","id":"in_00","subscription":"sub_1"}}}`)
	insert("evt_other", day, `{"data":{"object":{"object":"subscription","id":"sub_2"}}}`)
	insert("evt_other_id", day, `{"data":{"object":{"object":"customer","id":"sub_1"}}}`) // an id that only looks like it
	for _, cause := range []string{"evt_charge_acted", "evt_old_acted"} {
		if _, err := pool.Exec(ctx, `INSERT INTO audit_log (subscription_id, action, outcome, cause, cause_id) VALUES ('sub_1', 'extend', 'applied', 'webhook', $1)`, cause); err != nil {
			t.Fatal(err)
		}
	}

	got, err := postgres.NewStore(pool).EventsTouching(ctx, "sub_1", 50)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range got {
		ids = append(ids, e.ID)
	}
	want := []string{"evt_sub", "evt_invoice", "evt_basil", "evt_session", "evt_charge_acted", "evt_old_acted"}
	if !slices.Equal(ids, want) {
		t.Fatalf("got %v, want %v (newest first)", ids, want)
	}
	if got, _ := postgres.NewStore(pool).EventsTouching(ctx, "sub_1", 2); len(got) != 2 {
		t.Fatalf("limit 2: got %d events", len(got))
	}
}

// A search by key or customer finds the subscription through its row, and through the
// audit log once the row has moved on (a key replaced, a row lost).
func TestSubscriptionSearches(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (id, customer_id, status, product_id, license_key, last_synced_at)
		VALUES ('sub_1', 'cus_1', 'active', 1001, 'KEY-NEW', now()), ('sub_3', 'cus_3', 'canceled', 1001, 'KEY-3', now() - interval '1 day')`); err != nil {
		t.Fatal(err)
	}
	// sub_1 is a bundle: its second product's key is in subscription_keys only.
	if _, err := pool.Exec(ctx, `INSERT INTO subscription_keys (subscription_id, product_id, license_key) VALUES ('sub_1', 2002, 'KEY-ADDON')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (subscription_id, customer_id, license_key, action, outcome, cause) VALUES
		('sub_1', 'cus_1', 'KEY-OLD', 'create_key', 'applied', 'webhook'),
		('sub_2', 'cus_1', 'KEY-2', 'create_key', 'applied', 'webhook')`); err != nil {
		t.Fatal(err)
	}
	store := postgres.NewStore(pool)
	ids := func(hits []postgres.SubscriptionHit, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, h := range hits {
			out = append(out, h.ID)
		}
		return out
	}
	for name, tc := range map[string]struct {
		got  []string
		want []string
	}{
		"the row's key":                {ids(store.SubscriptionsByKey(ctx, "KEY-NEW")), []string{"sub_1"}},
		"a key it had before":          {ids(store.SubscriptionsByKey(ctx, "KEY-OLD")), []string{"sub_1"}},
		"a key only the audit log has": {ids(store.SubscriptionsByKey(ctx, "KEY-2")), []string{"sub_2"}},
		"a bundle's other key":         {ids(store.SubscriptionsByKey(ctx, "KEY-ADDON")), []string{"sub_1"}},
		"an unknown key":               {ids(store.SubscriptionsByKey(ctx, "KEY-NONE")), nil},
		"customers, newest sync first": {ids(store.SubscriptionsByCustomer(ctx, []string{"cus_1", "cus_3"})), []string{"sub_1", "sub_3", "sub_2"}},
	} {
		if !slices.Equal(tc.got, tc.want) {
			t.Errorf("%s: got %v, want %v", name, tc.got, tc.want)
		}
	}
	hits, _ := store.SubscriptionsByKey(ctx, "KEY-2")
	if len(hits) != 1 || hits[0].Known || hits[0].Status != "" {
		t.Fatalf("a subscription without a row: got %+v, want Known false", hits)
	}
	hits, _ = store.SubscriptionsByKey(ctx, "KEY-NEW")
	if len(hits) != 1 || *hits[0].LicenseKey != "KEY-NEW" || !slices.Equal(hits[0].BundleKeys, []string{"KEY-ADDON"}) {
		t.Fatalf("a bundle: got %+v, want its row's key and the other product's", hits)
	}
}

// A search finds purchases by customer and by key: through their rows and keys, and
// through the audit log for a purchase keysync has no row for.
func TestPurchaseSearches(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO purchases (id, customer_id, status, created) VALUES
		('cs_1', 'cus_1', 'paid', now() - interval '2 days'), ('in_1', 'cus_1', 'paid', now() - interval '1 day'),
		('cs_guest', NULL, 'paid', now())`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO purchase_keys (purchase_id, product_id, license_key) VALUES
		('cs_1', 1001, 'KEY-A'), ('cs_1', 2002, 'KEY-B'), ('cs_guest', 1001, 'KEY-G')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (purchase_id, subscription_id, customer_id, license_key, action, outcome, cause) VALUES
		('cs_2', NULL, 'cus_1', 'KEY-2', 'create_key', 'applied', 'webhook'),
		(NULL, 'sub_1', 'cus_1', 'KEY-S', 'create_key', 'applied', 'webhook')`); err != nil {
		t.Fatal(err)
	}
	store := postgres.NewStore(pool)
	ids := func(hits []postgres.PurchaseHit, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, h := range hits {
			out = append(out, h.ID)
		}
		return out
	}
	for name, tc := range map[string]struct {
		got  []string
		want []string
	}{
		"a customer's, newest first":   {ids(store.PurchasesByCustomer(ctx, []string{"cus_1"})), []string{"in_1", "cs_1", "cs_2"}},
		"a key":                        {ids(store.PurchasesByKey(ctx, "KEY-B")), []string{"cs_1"}},
		"a guest's key":                {ids(store.PurchasesByKey(ctx, "KEY-G")), []string{"cs_guest"}},
		"a key only the audit log has": {ids(store.PurchasesByKey(ctx, "KEY-2")), []string{"cs_2"}},
		"a subscription's key":         {ids(store.PurchasesByKey(ctx, "KEY-S")), nil},
		"another customer":             {ids(store.PurchasesByCustomer(ctx, []string{"cus_9"})), nil},
	} {
		if !slices.Equal(tc.got, tc.want) {
			t.Errorf("%s: got %v, want %v", name, tc.got, tc.want)
		}
	}
	hits, _ := store.PurchasesByKey(ctx, "KEY-A")
	if len(hits) != 1 || !hits[0].Known || hits[0].Status != "paid" || !slices.Equal(hits[0].LicenseKeys, []string{"KEY-A", "KEY-B"}) {
		t.Fatalf("got %+v, want cs_1 paid with both its keys", hits)
	}
	hits, _ = store.PurchasesByKey(ctx, "KEY-2")
	if len(hits) != 1 || hits[0].Known || len(hits[0].LicenseKeys) != 0 {
		t.Fatalf("a purchase without a row: got %+v, want Known false and no keys", hits)
	}
}

// The events that touched a purchase: its session's or invoice's own, its post-payment
// invoice's, its payment's charges and their disputes, and older ones only through the
// audit rows they caused; never another purchase's.
func TestEventsTouchingPurchase(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	insert := func(id string, age time.Duration, payload string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO stripe_events (id, type, created, livemode, payload, source, status)
			VALUES ($1, 'x', now() - make_interval(secs => $2), false, $3, 'webhook', 'processed')`, id, age.Seconds(), payload); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO purchases (id, status, invoice_id, created) VALUES ('cs_1', 'paid', 'in_post', now())`); err != nil {
		t.Fatal(err)
	}
	hour := time.Hour
	insert("evt_session", 1*hour, `{"data":{"object":{"object":"checkout.session","id":"cs_1","payment_intent":"pi_1"}}}`)
	insert("evt_charge", 2*hour, `{"data":{"object":{"object":"charge","id":"ch_1","payment_intent":"pi_1"}}}`)
	insert("evt_dispute", 3*hour, `{"data":{"object":{"object":"dispute","id":"dp_1","charge":"ch_1","payment_intent":null}}}`)
	insert("evt_post_invoice", 4*hour, `{"data":{"object":{"object":"invoice","id":"in_post","payment_intent":null}}}`)
	insert("evt_acted_old", 60*24*hour, `{"data":{"object":{"object":"charge","id":"ch_0"}}}`)
	insert("evt_quiet_old", 61*24*hour, `{"data":{"object":{"object":"checkout.session","id":"cs_1"}}}`)
	insert("evt_other", hour, `{"data":{"object":{"object":"checkout.session","id":"cs_2","payment_intent":"pi_2"}}}`)
	insert("evt_other_charge", hour, `{"data":{"object":{"object":"charge","id":"ch_2","payment_intent":"pi_2"}}}`)
	insert("evt_lookalike", hour, `{"data":{"object":{"object":"customer","id":"cs_1"}}}`) // an id that only looks like it
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (purchase_id, action, outcome, cause, cause_id) VALUES ('cs_1', 'block', 'applied', 'webhook', 'evt_acted_old')`); err != nil {
		t.Fatal(err)
	}
	// An invoice purchase: its charge names the invoice.
	insert("evt_invoice", 5*hour, `{"data":{"object":{"object":"invoice","id":"in_9","payment_intent":"pi_9"}}}`)
	insert("evt_invoice_charge", 6*hour, `{"data":{"object":{"object":"charge","id":"ch_9","invoice":"in_9","payment_intent":null}}}`)

	store := postgres.NewStore(pool)
	for id, want := range map[string][]string{
		"cs_1": {"evt_session", "evt_charge", "evt_dispute", "evt_post_invoice", "evt_acted_old"},
		"in_9": {"evt_invoice", "evt_invoice_charge"},
	} {
		got, err := store.EventsTouchingPurchase(ctx, id, 50)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range got {
			ids = append(ids, e.ID)
		}
		if !slices.Equal(ids, want) {
			t.Errorf("%s: got %v, want %v (newest first)", id, ids, want)
		}
	}
	if got, _ := store.EventsTouchingPurchase(ctx, "cs_1", 2); len(got) != 2 {
		t.Fatalf("limit 2: got %d events", len(got))
	}
}

// The overview counts the last hour's and day's events by status, every open one, and
// the failed actions; the runs come newest first, per kind.
func TestConsoleOverviewAndRecentRuns(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	for i, ev := range []struct {
		age    time.Duration
		status string
	}{
		{10 * time.Minute, "pending"}, {20 * time.Minute, "failed"}, {30 * time.Minute, "processed"},
		{5 * time.Hour, "pending"}, {6 * time.Hour, "processed"},
		{3 * 24 * time.Hour, "failed"}, {4 * 24 * time.Hour, "processed"},
	} {
		if _, err := pool.Exec(ctx, `INSERT INTO stripe_events (id, type, created, livemode, payload, source, status, received_at)
			VALUES ('evt_' || $1::int, 'invoice.paid', now(), false, '{}', 'webhook', $2, now() - make_interval(secs => $3))`, i, ev.status, ev.age.Seconds()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (action, outcome, cause, at) VALUES
		('extend', 'failed', 'webhook', now() - interval '5 minutes'), ('extend', 'failed', 'webhook', now() - interval '2 hours'),
		('extend', 'applied', 'webhook', now()), ('extend', 'failed', 'webhook', now() - interval '2 days')`); err != nil {
		t.Fatal(err)
	}
	store := postgres.NewStore(pool)
	o, err := store.ConsoleOverview(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := postgres.Overview{LastHour: postgres.EventCounts{Received: 3, Pending: 1, Failed: 1},
		LastDay: postgres.EventCounts{Received: 5, Pending: 2, Failed: 1}, PendingNow: 2, FailedNow: 2, FailedActionsHour: 1, FailedActionsDay: 2}
	oldest := o.OldestPending
	o.OldestPending, o.Now = 0, time.Time{}
	if o != want || oldest < 5*time.Hour || oldest > 5*time.Hour+time.Minute {
		t.Fatalf("got %+v, oldest pending %s; want %+v, about 5h", o, oldest, want)
	}

	for _, r := range []struct {
		kind string
		ago  int
	}{{"sweep", 3}, {"sweep", 2}, {"sweep", 1}, {"catch_up", 2}, {"catch_up", 1}, {"sweep", 4}} {
		if _, err := pool.Exec(ctx, `INSERT INTO sync_runs (kind, started_at) VALUES ($1, now() - make_interval(hours => $2))`, r.kind, r.ago); err != nil {
			t.Fatal(err)
		}
	}
	runs, err := store.RecentRuns(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range runs {
		got = append(got, r.Kind+"@"+time.Since(r.StartedAt).Round(time.Hour).String())
	}
	if want := []string{"sweep@1h0m0s", "sweep@2h0m0s", "catch_up@1h0m0s", "catch_up@2h0m0s"}; !slices.Equal(got, want) {
		t.Fatalf("got runs %v, want %v", got, want)
	}
}
