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

// The outbox of new keys' e-mails: applied create_key rows of the window whose key has
// no e-mail row, or a pending one. An older key, a dry run, a key claimed or sent is
// not listed; a claim is won once. The e-mail's vocabulary (email_key, the customer's
// cause) fits audit_log's CHECK constraints.
func TestKeyEmailOutbox(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	store := postgres.NewStore(pool)
	ctx := context.Background()
	insert := func(key, outcome string, age time.Duration) int64 {
		t.Helper()
		var id int64
		err := pool.QueryRow(ctx, `INSERT INTO audit_log (at, subscription_id, customer_id, product_id, license_key, action, outcome, cause, cause_id)
			VALUES (now() - make_interval(secs => $1), 'sub_1', 'cus_1', 1001, $2, 'create_key', $3, 'webhook', 'evt_1') RETURNING id`,
			age.Seconds(), key, outcome).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	recent := insert("KEY-RECENT", "applied", time.Hour)
	insert("KEY-OLD", "applied", 25*time.Hour)
	insert("KEY-DRY", "dry_run", time.Hour)
	second := insert("KEY-SECOND", "applied", time.Minute)

	ids, err := store.KeysToEmail(ctx, 24*time.Hour, 10)
	if err != nil || !slices.Equal(ids, []int64{recent, second}) {
		t.Fatalf("got outbox %v (%v), want [%d %d]", ids, err, recent, second)
	}
	k, err := store.CreatedKey(ctx, recent)
	want := delivery.CreatedKey{AuditID: recent, ProductID: 1001, Key: "KEY-RECENT", CustomerID: "cus_1",
		Owner: delivery.Owner{Kind: delivery.OwnerSubscription, ID: "sub_1"}, Cause: syncer.CauseWebhook, CauseID: "evt_1"}
	if err != nil || k != want {
		t.Fatalf("got %+v, %v, want %+v", k, err, want)
	}

	// Claimed once; while claimed, out of the outbox; given back, in again.
	for i, wantClaim := range []bool{true, false} {
		if got, err := store.ClaimKeyEmail(ctx, k); err != nil || got != wantClaim {
			t.Fatalf("claim %d: got %v, %v, want %v", i+1, got, err, wantClaim)
		}
	}
	if ids, _ := store.KeysToEmail(ctx, 24*time.Hour, 10); !slices.Equal(ids, []int64{second}) {
		t.Fatalf("with the first claimed: got outbox %v, want [%d]", ids, second)
	}
	if err := store.FinishKeyEmail(ctx, k, delivery.KeyEmail{Status: delivery.EmailPending, Error: "try later"}, nil); err != nil {
		t.Fatal(err)
	}
	if ids, _ := store.KeysToEmail(ctx, 24*time.Hour, 10); !slices.Equal(ids, []int64{recent, second}) {
		t.Fatalf("with the first given back: got outbox %v", ids)
	}
	if got, err := store.ClaimKeyEmail(ctx, k); err != nil || !got {
		t.Fatalf("claim after giving back: got %v, %v", got, err)
	}
	audit := &syncer.AuditRow{CustomerID: "cus_1", ProductID: 1001, LicenseKey: "KEY-RECENT", Action: "email_key",
		Outcome: syncer.OutcomeApplied, Cause: syncer.CauseCustomer, CauseID: "resend"}
	if err := store.FinishKeyEmail(ctx, k, delivery.KeyEmail{Status: delivery.EmailSent, Recipient: "a@example.com"}, audit); err != nil {
		t.Fatalf("got %v, want email_key with the customer's cause stored", err)
	}
	var status string
	var attempts int
	var sentAt *time.Time
	if err := pool.QueryRow(ctx, `SELECT status, attempts, sent_at FROM key_emails WHERE license_key = 'KEY-RECENT'`).Scan(&status, &attempts, &sentAt); err != nil ||
		status != "sent" || attempts != 2 || sentAt == nil {
		t.Fatalf("got %s after %d attempts, sent at %v (%v), want sent after 2", status, attempts, sentAt, err)
	}
	rows, err := store.QueryAudit(ctx, postgres.AuditFilter{Action: "email_key"})
	if err != nil || len(rows) != 1 || rows[0].SubscriptionID != nil || rows[0].Cause != "customer" {
		t.Fatalf("got %+v, %v, want one email_key row naming no subscription", rows, err)
	}
	if _, err := store.CreatedKey(ctx, 999999); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("no such row: got %v, want ErrNotFound", err)
	}
}
