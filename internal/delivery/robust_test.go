package delivery_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/smtpsim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// Robustness of the customer side: the key's record and e-mail survive a customer who
// leaves the license page, a crash between CreateKey and the commit, and a guest's
// Checkout that makes no Stripe customer.

// robust is an env whose database and Cryptolens tests may interfere with, whose
// license page and e-mails serve purchases as serve does, and which also sells a
// one-time price (lifetime: perpetual, F2, one machine).
type robust struct {
	*env
	lifetime string
	// keyCreated counts the engine's KeyCreated hook calls.
	keyCreated atomic.Int32
}

func setupRobust(t *testing.T, pool *pgxpool.Pool, wrap func(http.Handler) http.Handler) *robust {
	t.Helper()
	w := simtest.New(t, simtest.Options{Start: t0, WrapCryptolens: wrap})
	sc, cc := w.Clients(t)
	e := &env{pool: pool, store: postgres.NewStore(pool), stripe: w.Stripe, crypto: w.Crypto, sc: sc, logs: &lockedBuffer{}}
	e.log = zerolog.New(e.logs)
	e.price = w.Price("Pro", 3000, `{"F1":true,"MaxNoOfMachines":3}`)
	r := &robust{env: e}
	prod := w.Stripe.CreateProduct("App, lifetime", map[string]string{"skm_product_id": "1001"})
	var err error
	if r.lifetime, err = w.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 9900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F2":true,"MaxNoOfMachines":1}`}}); err != nil {
		t.Fatal(err)
	}
	e.engine = syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: e.store, Mapping: license.NewMapping(0), Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5, TimeLimitedFeature: 1}, Now: w.Stripe.Now,
			KeyCreated: func(context.Context) { r.keyCreated.Add(1) }})
	e.licenses = delivery.Licenses{Store: keys{e.store}, Cryptolens: cc, TimeLimitedFeature: 1}
	t.Cleanup(func() {
		for _, k := range e.crypto.Keys(product) {
			if strings.Contains(e.logs.String(), k.Key) {
				t.Errorf("the delivery package logged key %s:\n%s", k.Key, e.logs)
			}
		}
	})
	return r
}

// pageHandler is the license page on the env, as serve mounts it.
func (r *robust) pageHandler(opts delivery.PageOptions) *delivery.Page {
	if opts.Now == nil {
		opts.Now = r.stripe.Now
	}
	return delivery.NewPage(r.sc, engine{r.engine}, r.licenses, opts, r.log)
}

// auditOf returns the audit rows of a subscription or purchase, newest first.
func (r *robust) auditOf(t *testing.T, id string) []postgres.AuditEntry {
	t.Helper()
	rows, err := r.store.AuditFor(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// afterCreateKey wraps Cryptolens so that do runs once CreateKey has made a key and
// answered, while armed.
func afterCreateKey(armed *atomic.Bool, do func()) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r)
			if strings.HasSuffix(r.URL.Path, "/"+cryptolenssim.CreateKey) && armed.CompareAndSwap(true, false) {
				if f, ok := w.(http.Flusher); ok {
					f.Flush()
				}
				do()
			}
		})
	}
}

// A customer who leaves the license page (closes the tab) while its Sync runs does not
// cut the Sync: the key made by CreateKey is recorded, with its create_key row, the
// e-mail outbox's, in the same request, and the answer is the key.
func TestLicensePageSyncOutlivesTheCustomer(t *testing.T) {
	t.Parallel()
	var armed atomic.Bool
	var leave atomic.Pointer[context.CancelFunc]
	r := setupRobust(t, pgtest.Pool(t), afterCreateKey(&armed, func() { (*leave.Load())() }))
	res := r.checkout(t, stripesim.CheckoutParams{})
	page := r.pageHandler(delivery.PageOptions{})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leave.Store(&cancel)
	armed.Store(true)
	req := httptest.NewRequestWithContext(ctx, "GET", "/license?session_id="+res.Session, nil)
	req.Header.Set("Accept", "application/json")
	rec := httptest.NewRecorder()
	page.ServeHTTP(rec, req)
	if ctx.Err() == nil || armed.Load() {
		t.Fatal("the customer never left: the test did not cut the request after CreateKey")
	}
	var got struct {
		Status   string             `json:"status"`
		Licenses []delivery.License `json:"licenses"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != 200 || got.Status != "ready" || len(got.Licenses) != 1 {
		t.Fatalf("got %d %s (%v), want 200 with the key the page's Sync made", rec.Code, rec.Body, err)
	}
	k := r.keyOf(t, res.Subscription)
	rows := r.auditOf(t, res.Subscription)
	if len(rows) != 1 || rows[0].Action != "create_key" || *rows[0].LicenseKey != k.Key || rows[0].Cause != "customer" {
		t.Fatalf("got audit %+v, want the create_key row of %s, the customer's", rows, k.Key)
	}
	em, _ := r.emailer(t, smtpsim.Options{})
	if ids, err := em.Outbox(context.Background()); err != nil || len(ids) != 1 {
		t.Fatalf("outbox: got %v, %v, want the new key", ids, err)
	}
}

// A Sync that cannot finish within the page's time answers 202, asking again (not a
// cut connection past the listener's WriteTimeout); the next request shows the key.
func TestLicensePageOutOfTimeAsksAgain(t *testing.T) {
	t.Parallel()
	var slow atomic.Bool
	release := make(chan struct{})
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if slow.Load() && strings.HasSuffix(r.URL.Path, "/"+cryptolenssim.CreateKey) {
				// Cryptolens hangs until the caller gives up (the server sees that once
				// the request's body is read) or the test ends; it makes no key.
				_, _ = io.Copy(io.Discard, r.Body)
				select {
				case <-r.Context().Done():
				case <-release:
				}
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	r := setupRobust(t, pgtest.Pool(t), wrap)
	t.Cleanup(func() { close(release) }) // before the simulators' servers close
	res := r.checkout(t, stripesim.CheckoutParams{})
	srv := httptest.NewServer(r.pageHandler(delivery.PageOptions{Timeout: 300 * time.Millisecond}))
	defer srv.Close()

	slow.Store(true)
	began := time.Now()
	resp, body := fetch(t, "GET", srv.URL+"/license?session_id="+res.Session, "application/json", nil, "")
	if resp.StatusCode != 202 || resp.Header.Get("Retry-After") != "5" || strings.TrimSpace(body) != `{"retry_after":5,"status":"processing"}` {
		t.Fatalf("out of time: got %d Retry-After %q %s, want 202 processing", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("the answer took %s, want about the page's 300ms", took)
	}
	wantPrivate(t, resp)

	// Asked again (with the page's own 20 seconds: a loaded test machine may be slow).
	slow.Store(false)
	again := httptest.NewServer(r.pageHandler(delivery.PageOptions{}))
	defer again.Close()
	if resp, body = fetch(t, "GET", again.URL+"/license?session_id="+res.Session, "application/json", nil, ""); resp.StatusCode != 200 {
		t.Fatalf("asked again: got %d %s, want 200 with the key", resp.StatusCode, body)
	}
	if n := len(r.crypto.Keys(product)); n != 1 {
		t.Fatalf("got %d keys, want 1", n)
	}
}

// A Sync that created a key and lost its commit (the database went away) leaves no
// create_key row: the next Sync finds the key by its marker and records adopt_key,
// which the outbox mails as the new key it is, once; the engine asks for the outbox
// scan as it does after a create.
func TestKeyOfALostCommitIsEmailed(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	hp, err := pgtest.HostPort(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := pgtest.NewProxy(t, hp)
	cfg, _ := pgxpool.ParseConfig(pgtest.WithHostPort(url, proxy.Addr()))
	cfg.ConnConfig.ConnectTimeout = time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var armed atomic.Bool
	r := setupRobust(t, pool, afterCreateKey(&armed, proxy.Cut))
	res := r.checkout(t, stripesim.CheckoutParams{})
	ctx := context.Background()

	armed.Store(true)
	if _, err := r.engine.Sync(ctx, res.Subscription, syncer.Cause{Kind: syncer.CauseCustomer, ID: res.Session}); err == nil {
		t.Fatal("got nil error with the database gone before the commit")
	}
	proxy.Restore()
	r.keyCreated.Store(0)
	if _, err := r.engine.Sync(ctx, res.Subscription, syncer.Cause{Kind: syncer.CauseWebhook, ID: "evt_retry"}); err != nil {
		t.Fatal(err)
	}
	if n := r.keyCreated.Load(); n != 1 {
		t.Fatalf("the adopting Sync told the KeyCreated hook %d times, want 1 (an outbox scan)", n)
	}

	em, smtp := r.emailer(t, smtpsim.Options{})
	ids, err := em.Outbox(ctx)
	if err != nil || len(ids) != 1 {
		t.Fatalf("outbox: got %v, %v, want the adopted key", ids, err)
	}
	for range 2 {
		if err := em.SendKey(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	k := r.keyOf(t, res.Subscription)
	msgs := smtp.Wait(t, 1, 10*time.Second)
	if len(msgs) != 1 || msgs[0].To[0] != "ada@example.com" || !strings.Contains(msgs[0].Part("text/plain"), "License key: "+k.Key) {
		t.Fatalf("got %d messages, the first to %v, want one to ada@example.com with the key", len(msgs), msgs[0].To)
	}
	audits := r.emailAudits(t, k.Key)
	if len(audits) != 1 || audits[0].Outcome != "applied" || *audits[0].CauseID != "evt_retry" || *audits[0].SubscriptionID != res.Subscription {
		t.Fatalf("got audit rows %+v, want one applied email_key with the adoption's cause", audits)
	}
	if ids, _ := em.Outbox(ctx); len(ids) != 0 {
		t.Fatalf("got outbox %v after sending, want empty", ids)
	}
}

// A guest's Checkout makes no Stripe customer: the purchase keeps the address and
// name Checkout collected, the new key is e-mailed there, and the lost-keys form finds
// the guest's purchases by that address, in any case. An unknown address gets nothing.
func TestGuestGetsTheKeyByEmail(t *testing.T) {
	t.Parallel()
	r := setupRobust(t, pgtest.Pool(t), nil)
	res, err := r.stripe.CheckoutPayment(stripesim.PaymentParams{Guest: true, Email: "grace@example.com", Name: "Grace Hopper",
		Items: []stripesim.ItemParams{{Price: r.lifetime}}})
	if err != nil || res.Customer != "" {
		t.Fatalf("got %+v, %v, want a guest's payment (no customer)", res, err)
	}
	ctx := context.Background()

	// The license page makes the key; the purchase records the guest's address.
	srv := httptest.NewServer(r.pageHandler(delivery.PageOptions{}))
	defer srv.Close()
	resp, body := fetch(t, "GET", srv.URL+"/license?session_id="+res.Session, "application/json", nil, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"perpetual":true`) {
		t.Fatalf("got %d %s, want the perpetual key", resp.StatusCode, body)
	}
	row, err := r.store.GetPurchase(ctx, res.Session)
	if err != nil || row.CustomerID != "" || row.CustomerEmail != "grace@example.com" || row.CustomerName != "Grace Hopper" || len(row.Keys) != 1 {
		t.Fatalf("purchase row: got %+v, %v, want the guest's address and name and the key", row, err)
	}
	key := *row.Keys[0].LicenseKey

	// The new key's e-mail goes to the address Checkout collected.
	em, smtp := r.emailer(t, smtpsim.Options{})
	ids, err := em.Outbox(ctx)
	if err != nil || len(ids) != 1 {
		t.Fatalf("outbox: got %v, %v", ids, err)
	}
	if err := em.SendKey(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	msgs := smtp.Wait(t, 1, 10*time.Second)
	text := msgs[0].Part("text/plain")
	if msgs[0].To[0] != "grace@example.com" || !strings.Contains(text, "Hello Grace Hopper,") || !strings.Contains(text, "License key: "+key) {
		t.Fatalf("got a message to %v:\n%s\nwant the key to grace@example.com", msgs[0].To, text)
	}
	audits := r.emailAudits(t, key)
	if len(audits) != 1 || audits[0].Outcome != "applied" || *audits[0].PurchaseID != res.Session || audits[0].Params["to"] != "grace@example.com" {
		t.Fatalf("got audit rows %+v, want one applied email_key of the purchase to the guest", audits)
	}

	// The lost-keys form: the guest's address in another case finds the purchase;
	// an unknown one gets nothing.
	for _, a := range []string{"GRACE@example.com", "nobody@example.com"} {
		if err := em.Resend(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	msgs = smtp.Wait(t, 2, 10*time.Second)
	if len(msgs) != 2 || msgs[1].To[0] != "grace@example.com" || msgs[1].Header().Get("Subject") != "Your license keys" ||
		!strings.Contains(msgs[1].Part("text/plain"), key) {
		t.Fatalf("got %d messages, want the guest's key resent to grace@example.com and nothing to nobody", len(msgs))
	}
	resent := r.emailAudits(t, key)
	if len(resent) != 2 || resent[0].Cause != "customer" || *resent[0].CauseID != "resend" || *resent[0].PurchaseID != res.Session {
		t.Fatalf("got audit rows %+v, want the resend's email_key naming the purchase", resent)
	}
}
