package syncer_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// sessionsList is the simulator's route of Stripe's list of Checkout Sessions.
const sessionsList = "GET /v1/checkout/sessions"

// A post-payment invoice keysync recorded as its session's (the session synced first)
// is sent to the session by keysync's own record: no second key, no row of its own,
// and no listing of the customer's sessions, which a guest, who has no customer, could
// not be found by. Preview says the same.
func TestPostPaymentInvoiceFoundByRecordFirst(t *testing.T) {
	t.Parallel()
	s := setupShop(t, pgtest.Pool(t), nil)
	res, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Email: "a@example.com", Items: []stripesim.ItemParams{{Price: s.app}},
		InvoiceCreation: true})
	first := s.syncPurchase(t, res.Session)
	if len(first.Keys) != 1 {
		t.Fatalf("session: got %+v, want its key", first)
	}

	listed := s.stripe.Requests()[sessionsList]
	got := s.syncPurchase(t, res.Invoice)
	if len(got.Keys) != 1 || got.Keys[0] != first.Keys[0] || s.crypto.AppliedCount(cryptolenssim.CreateKey) != 1 {
		t.Fatalf("invoice: got %+v and %d creates, want the session's key and one create", got, s.crypto.AppliedCount(cryptolenssim.CreateKey))
	}
	p, err := s.syncer.PreviewPurchase(context.Background(), res.Invoice)
	if err != nil || p.Session != res.Session {
		t.Fatalf("preview: got %+v, %v, want the session %s", p, err, res.Session)
	}
	if n := s.stripe.Requests()[sessionsList] - listed; n != 0 {
		t.Fatalf("got %d listings of Checkout Sessions, want none: keysync's record names the invoice's session", n)
	}
	if _, err := s.store.GetPurchase(context.Background(), res.Invoice); err == nil {
		t.Fatal("the invoice got a row of its own")
	}
}

// A Sync that created a key and lost its commit leaves no create_key row; the Sync that
// finds the key again by its marker records an adopt_key row that says so (the marker,
// the key's creation and its age on Cryptolens' clock), which is what the e-mail
// outbox mails from, and tells the KeyCreated hook, as a create does.
func TestAdoptionByMarkerRecordsTheKeyAge(t *testing.T) {
	t.Parallel()
	pool, proxy := proxiedPool(t)
	var cut atomic.Bool
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r)
			if cut.Load() && strings.HasSuffix(r.URL.Path, "/"+cryptolenssim.CreateKey) {
				proxy.Cut() // the key is created and answered; the commit will fail
			}
		})
	}
	s := setupShop(t, pool, wrap)
	var told atomic.Int32
	sc, cc := s.world.Clients(t)
	s.syncer = syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: s.store, Mapping: s.mapping, Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5, TimeLimitedFeature: 1}, Now: s.stripe.Now,
			KeyCreated: func(context.Context) { told.Add(1) }})
	res, _ := s.stripe.CheckoutPayment(stripesim.PaymentParams{Guest: true, Email: "g@example.com", Items: []stripesim.ItemParams{{Price: s.app}}})
	cut.Store(true)
	if _, err := s.syncer.SyncPurchase(context.Background(), res.Session, syncer.Cause{Kind: syncer.CauseCustomer, ID: res.Session}); err == nil {
		t.Fatal("got nil error with the database gone before the commit")
	}
	cut.Store(false)
	proxy.Restore()
	told.Store(0)
	s.stripe.Advance(90 * time.Minute) // the retry comes an hour and a half later
	s.syncPurchase(t, res.Session)

	audit, _ := s.store.AuditFor(context.Background(), res.Session)
	if len(audit) != 1 || audit[0].Action != "adopt_key" {
		t.Fatalf("audit: got %+v, want one adopt_key", audit)
	}
	p := audit[0].Params
	age, _ := p["key_age_seconds"].(float64)
	if p["source"] != syncer.SourceMarker+" "+syncer.Marker(res.Session) || p["created"] == nil || age < 90*60 || age > 91*60 {
		t.Fatalf("adopt_key params: got %v, want the marker, the key's creation and an age of 90 minutes", p)
	}
	if n := told.Load(); n != 1 {
		t.Fatalf("the KeyCreated hook heard %d times of the adoption, want 1", n)
	}
	s.syncPurchase(t, res.Session)
	if n := told.Load(); n != 1 {
		t.Fatalf("the KeyCreated hook heard %d times after a Sync with nothing to adopt, want still 1", n)
	}
}
