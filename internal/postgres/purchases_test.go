package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

func strp(s string) *string { return &s }

// savePurchase saves row and audits through the purchase's lock, as SyncPurchase does.
func savePurchase(t *testing.T, store *postgres.Store, row syncer.PurchaseRow, audits ...syncer.AuditRow) error {
	t.Helper()
	lock, err := store.LockPurchase(context.Background(), row.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	return lock.SavePurchase(context.Background(), row, audits)
}

// A purchase's row, its keys and its audit rows round-trip; a key claimed by a second
// purchase is refused; the audit is found by the purchase's id.
func TestPurchaseRows(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(pgtest.Pool(t))
	ctx := context.Background()
	created := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	row := syncer.PurchaseRow{ID: "cs_test_1", CustomerID: "cus_1", Status: syncer.PurchasePaid, InvoiceID: strp("in_1"), Created: created,
		Keys: []syncer.KeyRow{{ProductID: 1001, LicenseKey: strp("AAAAA")}, {ProductID: 2002, LicenseKey: strp("BBBBB"), BlockedByKeysync: true}}}
	if err := savePurchase(t, store, row, syncer.AuditRow{PurchaseID: row.ID, CustomerID: "cus_1", ProductID: 1001, LicenseKey: "AAAAA",
		Action: "create_key", Outcome: syncer.OutcomeApplied, Cause: syncer.CauseWebhook}); err != nil {
		t.Fatal(err)
	}
	got, err := store.GetPurchase(ctx, row.ID)
	if err != nil || got.Status != "paid" || *got.InvoiceID != "in_1" || !got.Created.Equal(created) || len(got.Keys) != 2 ||
		*got.Keys[1].LicenseKey != "BBBBB" || !got.Keys[1].BlockedByKeysync || got.Keys[0].BlockedByKeysync {
		t.Fatalf("got %+v, %v", got, err)
	}
	keys, err := store.PurchaseKeys(ctx, row.ID)
	if err != nil || len(keys) != 2 || keys[0].ProductID != 1001 {
		t.Fatalf("PurchaseKeys: got %+v, %v", keys, err)
	}

	// A guest's purchase has no customer; a second purchase claiming the key fails.
	guest := syncer.PurchaseRow{ID: "cs_test_2", Status: syncer.PurchasePaid, Created: created,
		Keys: []syncer.KeyRow{{ProductID: 1001, LicenseKey: strp("AAAAA")}}}
	if err := savePurchase(t, store, guest); err == nil || !strings.Contains(err.Error(), "purchase_keys_key") {
		t.Fatalf("a second claim on a key: got %v, want the unique index to refuse it", err)
	}
	guest.Keys = nil
	if err := savePurchase(t, store, guest); err != nil {
		t.Fatal(err)
	}
	if got, err := store.GetPurchase(ctx, guest.ID); err != nil || got.CustomerID != "" || len(got.Keys) != 0 {
		t.Fatalf("guest: got %+v, %v", got, err)
	}

	rows, err := store.QueryAudit(ctx, postgres.AuditFilter{Purchase: row.ID})
	if err != nil || len(rows) != 1 || *rows[0].PurchaseID != row.ID || rows[0].SubscriptionID != nil {
		t.Fatalf("audit by purchase: got %+v, %v", rows, err)
	}
	if rows, _ := store.QueryAudit(ctx, postgres.AuditFilter{Subscription: row.ID}); len(rows) != 0 {
		t.Fatalf("audit by subscription of a purchase id: got %d rows", len(rows))
	}
	if entries, err := store.AuditFor(ctx, row.ID); err != nil || len(entries) != 1 || *entries[0].ProductID != 1001 {
		t.Fatalf("AuditFor: got %+v, %v", entries, err)
	}
	if _, err := store.GetPurchase(ctx, "in_none"); !errors.Is(err, syncer.ErrNotFound) {
		t.Fatalf("an unknown purchase: got %v, want ErrNotFound", err)
	}
}

// The sweep's index holds the purchases of its window and every unsettled one: a
// payment on its way, an open invoice, a failed Sync, whenever made.
func TestPurchaseIndex(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(pgtest.Pool(t))
	old, recent := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	synced := recent
	for _, r := range []syncer.PurchaseRow{
		{ID: "cs_old_paid", Status: "paid", Created: old, LastSyncedAt: &synced},
		{ID: "cs_old_processing", Status: "processing", Created: old, LastSyncedAt: &synced},
		{ID: "in_old_open_unmapped", Status: "open", Created: old, LastSyncedAt: &synced, UnmappedAt: &synced},
		{ID: "in_old_failed", Status: "paid", Created: old, LastSyncedAt: &synced, LastError: strp("plan mapping: no")},
		{ID: "cs_old_never", Status: "paid", Created: old},
		{ID: "cs_recent_paid", Status: "paid", Created: recent, LastSyncedAt: &synced, InvoiceID: strp("in_receipt")},
	} {
		if err := savePurchase(t, store, r); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := store.PurchaseIndex(context.Background(), recent.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"cs_old_processing": false, "in_old_failed": false, "cs_old_never": false, "cs_recent_paid": true}
	if len(idx) != len(want) {
		t.Fatalf("got %+v, want %v", idx, want)
	}
	for id, settled := range want {
		if b, ok := idx[id]; !ok || b.Settled() != settled {
			t.Errorf("%s: got %+v (in index %v), want settled %v", id, b, ok, settled)
		}
	}
	if idx["cs_recent_paid"].InvoiceID != "in_receipt" {
		t.Errorf("got %+v, want the session's invoice", idx["cs_recent_paid"])
	}
}

// A bundle's other keys round-trip with its subscription's row: SaveSync records
// exactly the row's bundle, and SubscriptionKeys lists the row's key first.
func TestBundleRows(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(pgtest.Pool(t))
	ctx := context.Background()
	product := 1001
	row := syncer.SubscriptionRow{ID: "sub_b", CustomerID: "cus_b", Status: "active", ProductID: &product, LicenseKey: strp("FIRST"),
		Bundle: []syncer.KeyRow{{ProductID: 2002, LicenseKey: strp("SECOND"), ExpiryBlockSeen: true}, {ProductID: 3003, LicenseKey: strp("THIRD"), BlockedByKeysync: true}}}
	if err := store.SaveSync(ctx, row, nil); err != nil {
		t.Fatal(err)
	}
	keys, err := store.SubscriptionKeys(ctx, row.ID)
	if err != nil || len(keys) != 3 || *keys[0].LicenseKey != "FIRST" || !keys[1].ExpiryBlockSeen || !keys[2].BlockedByKeysync {
		t.Fatalf("got %+v, %v, want the row's key, then the bundle's", keys, err)
	}
	row.Bundle = row.Bundle[1:] // product 2002 left the subscription
	if err := store.SaveSync(ctx, row, nil); err != nil {
		t.Fatal(err)
	}
	got, err := store.GetSubscription(ctx, row.ID)
	if err != nil || len(got.Bundle) != 1 || got.Bundle[0].ProductID != 3003 {
		t.Fatalf("got %+v, %v, want 3003's key alone in the bundle", got.Bundle, err)
	}
	idx, err := store.SubscriptionIndex(ctx)
	if k, ok := idx[row.ID].Key(3003); err != nil || !ok || k.LicenseKey != "THIRD" || len(idx[row.ID].Keys()) != 2 {
		t.Fatalf("index: got %+v, %v", idx[row.ID], err)
	}
	if keys, err := store.SubscriptionKeys(ctx, "sub_none"); err != nil || len(keys) != 0 {
		t.Fatalf("an unknown subscription: got %+v, %v, want none", keys, err)
	}
}
