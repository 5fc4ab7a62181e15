package postgres_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// The outbox also takes the adopt_key row that stands for a lost create_key row: a key
// found by keysync's own marker, hours old when adopted, that no create_key row names.
// Not an adoption from metadata (the vendor's or the hosted module's key), an SKGL key's
// new string, an old key found again (its create_key row exists, or it is older than
// the window), one whose age is unknown, or one already mailed. Its purchase's collected
// address comes with it: a guest's only one.
func TestOutboxTakesAdoptionsOfLostCreates(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	store := postgres.NewStore(pool)
	ctx := context.Background()
	insert := func(action, key string, ago time.Duration, params string) int64 {
		t.Helper()
		var id int64
		err := pool.QueryRow(ctx, `INSERT INTO audit_log (at, purchase_id, product_id, license_key, action, params, outcome, cause, cause_id)
			VALUES (now() - make_interval(secs => $1), 'cs_test_guest', 1001, $2, $3, $4::jsonb, 'applied', 'webhook', 'evt_2') RETURNING id`,
			ago.Seconds(), key, action, params).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	marker := `"source": "` + syncer.SourceMarker + ` stripe:cs_test_guest"`
	lost := insert("adopt_key", "KEY-LOST", time.Hour, `{`+marker+`, "created": "2026-03-02T09:00:00Z", "key_age_seconds": 60}`)
	insert("create_key", "KEY-OLD", 30*24*time.Hour, `{}`)
	insert("adopt_key", "KEY-OLD", time.Hour, `{`+marker+`, "key_age_seconds": 60}`)         // its create_key row exists
	insert("adopt_key", "KEY-AGED", time.Hour, `{`+marker+`, "key_age_seconds": 259200}`)    // three days old when found
	insert("adopt_key", "KEY-AGELESS", time.Hour, `{`+marker+`}`)                            // Cryptolens gave no creation
	insert("adopt_key", "KEY-LONG-AGO", 25*time.Hour, `{`+marker+`, "key_age_seconds": 60}`) // adopted before the window
	insert("adopt_key", "KEY-VENDOR", time.Hour, `{"source": "subscription metadata cryptolens_key", "key_age_seconds": 60}`)
	insert("adopt_key", "KEY-RENAMED", time.Hour, `{"source": "skgl key change", "old_key": "KEY-LOST"}`) // a change, not a new key
	mailed := insert("adopt_key", "KEY-MAILED", time.Hour, `{`+marker+`, "key_age_seconds": 60}`)
	if _, err := pool.Exec(ctx, `INSERT INTO key_emails (product_id, license_key, audit_id, status) VALUES (1001, 'KEY-MAILED', $1, 'sent')`, mailed); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO purchases (id, status, created, customer_email, customer_name)
		VALUES ('cs_test_guest', 'paid', now(), 'grace@example.com', 'Grace Hopper')`); err != nil {
		t.Fatal(err)
	}

	ids, err := store.KeysToEmail(ctx, 24*time.Hour, 10)
	if err != nil || !slices.Equal(ids, []int64{lost}) {
		t.Fatalf("got outbox %v (%v), want only the lost create's adoption [%d]", ids, err, lost)
	}
	k, err := store.CreatedKey(ctx, lost)
	want := delivery.CreatedKey{AuditID: lost, ProductID: 1001, Key: "KEY-LOST", Owner: delivery.Owner{Kind: delivery.OwnerPurchase, ID: "cs_test_guest"},
		Cause: syncer.CauseWebhook, CauseID: "evt_2", PurchaseEmail: "grace@example.com", PurchaseName: "Grace Hopper"}
	if err != nil || k != want {
		t.Fatalf("got %+v, %v, want %+v", k, err, want)
	}
	var renamed int64
	if err := pool.QueryRow(ctx, `SELECT id FROM audit_log WHERE license_key = 'KEY-RENAMED'`).Scan(&renamed); err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreatedKey(ctx, renamed); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("an SKGL key change: got %v, want ErrNotFound (no new key to mail)", err)
	}
}

// A guest's purchases are found by the address they collected, in any case, newest
// first; a customer's purchase with the same address is not a guest's.
func TestGuestPurchases(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(pgtest.Pool(t))
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	for i, r := range []syncer.PurchaseRow{
		{ID: "cs_test_old", Status: "paid", Created: at, CustomerEmail: "Grace@Example.com", CustomerName: "G. Hopper"},
		{ID: "cs_test_new", Status: "paid", Created: at.Add(time.Hour), CustomerEmail: "grace@example.com", CustomerName: "Grace Hopper"},
		{ID: "cs_test_customer", CustomerID: "cus_1", Status: "paid", Created: at, CustomerEmail: "grace@example.com"},
		{ID: "cs_test_other", Status: "paid", Created: at, CustomerEmail: "ada@example.com"},
	} {
		if err := savePurchase(t, store, r); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
	got, err := store.GuestPurchases(ctx, "GRACE@example.COM")
	want := []delivery.GuestPurchase{{Purchase: "cs_test_new", Email: "grace@example.com", Name: "Grace Hopper"},
		{Purchase: "cs_test_old", Email: "Grace@Example.com", Name: "G. Hopper"}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %+v, %v, want %+v", got, err, want)
	}
	if row, err := store.GetPurchase(ctx, "cs_test_new"); err != nil || row.CustomerEmail != "grace@example.com" || row.CustomerName != "Grace Hopper" {
		t.Fatalf("row: got %+v, %v, want the collected address and name", row, err)
	}
	// A later Sync that read no address keeps the one recorded.
	if err := savePurchase(t, store, syncer.PurchaseRow{ID: "cs_test_new", Status: "paid", Created: at}); err != nil {
		t.Fatal(err)
	}
	if row, _ := store.GetPurchase(ctx, "cs_test_new"); row.CustomerEmail != "grace@example.com" {
		t.Fatalf("got %q after a save without an address, want it kept", row.CustomerEmail)
	}
}
