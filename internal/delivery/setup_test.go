package delivery_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

const product = simtest.Product

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// env is a keysync's customer side on real Postgres and both simulators: the sync
// engine, the keys it recorded, and what the delivery package logs.
type env struct {
	pool     *pgxpool.Pool
	store    *postgres.Store
	stripe   *stripesim.Sim
	crypto   *cryptolenssim.Sim
	sc       *stripeapi.Client
	engine   *syncer.Syncer
	licenses delivery.Licenses
	price    string // Pro: F1, 3 machines
	// lifetime is a one-time price mapped by skm metadata: a perpetual key with F2 and
	// 2 machines (F1, the time-limited feature, off).
	lifetime string
	// logs is everything the delivery package logged (the engine logs elsewhere: its
	// lines name keys, as operators need).
	logs *lockedBuffer
	log  zerolog.Logger
}

func setup(t *testing.T) *env {
	t.Helper()
	pool := pgtest.Pool(t)
	w := simtest.New(t, simtest.Options{Start: t0})
	sc, cc := w.Clients(t)
	e := &env{pool: pool, store: postgres.NewStore(pool), stripe: w.Stripe, crypto: w.Crypto, sc: sc, logs: &lockedBuffer{}}
	e.log = zerolog.New(e.logs)
	e.price = w.Price("Pro", 3000, `{"F1":true,"MaxNoOfMachines":3}`)
	lifetime := w.Stripe.CreateProduct("Lifetime", map[string]string{"skm_product_id": "1001"})
	var err error
	e.lifetime, err = w.Stripe.CreatePrice(stripesim.PriceParams{Product: lifetime, UnitAmount: 19900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F2":true,"MaxNoOfMachines":2}`}})
	if err != nil {
		t.Fatal(err)
	}
	e.engine = syncer.New(syncer.Deps{Stripe: sc, Cryptolens: cc, Store: e.store, Mapping: license.NewMapping(0), Log: zerolog.Nop()},
		syncer.Options{Policy: license.Options{BufferDays: 5, TimeLimitedFeature: 1}, Now: w.Stripe.Now})
	e.licenses = delivery.Licenses{Store: keys{e.store}, Cryptolens: cc, TimeLimitedFeature: 1}
	t.Cleanup(func() {
		// No key ever reaches a log line of the delivery package.
		for _, k := range e.crypto.Keys(product) {
			if strings.Contains(e.logs.String(), k.Key) {
				t.Errorf("the delivery package logged key %s:\n%s", k.Key, e.logs)
			}
		}
	})
	return e
}

// checkout plays a paid Checkout of the Pro price and returns it.
func (e *env) checkout(t *testing.T, p stripesim.CheckoutParams) stripesim.CheckoutResult {
	t.Helper()
	if p.Email == "" {
		p.Email, p.Name = "ada@example.com", "Ada Lovelace"
	}
	if p.Items == nil {
		p.Items = []stripesim.ItemParams{{Price: e.price}}
	}
	res, err := e.stripe.Checkout(p)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// purchase plays a one-time Checkout (payment mode) of the Lifetime price and returns
// it. Nothing is synced: no webhook endpoint listens.
func (e *env) purchase(t *testing.T, p stripesim.PaymentParams) stripesim.PaymentResult {
	t.Helper()
	if p.Email == "" {
		p.Email, p.Name = "grace@example.com", "Grace Hopper"
	}
	if p.Items == nil {
		p.Items = []stripesim.ItemParams{{Price: e.lifetime}}
	}
	res, err := e.stripe.CheckoutPayment(p)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// page serves the license page with opts (Now: the simulators' clock) until t ends.
func (e *env) page(t *testing.T, opts delivery.PageOptions) string {
	t.Helper()
	if opts.Now == nil {
		opts.Now = e.stripe.Now
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+delivery.Path, delivery.NewPage(e.sc, engine{e.engine}, e.licenses, opts, e.log))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// keyOf returns the key keysync recorded for a subscription.
func (e *env) keyOf(t *testing.T, sub string) cryptolenssim.Key {
	t.Helper()
	row, err := e.store.GetSubscription(context.Background(), sub)
	if err != nil || row.LicenseKey == nil {
		t.Fatalf("no key recorded for %s (%v)", sub, err)
	}
	k, ok := e.crypto.Key(product, *row.LicenseKey)
	if !ok {
		t.Fatalf("key of %s missing in Cryptolens", sub)
	}
	return k
}

// keys reads recorded keys as serve does: a subscription's and a purchase's, from the
// store (serve also names them after the Stripe products; here they keep the page's
// "Product <id>").
type keys struct{ store *postgres.Store }

func (k keys) OwnerKeys(ctx context.Context, o delivery.Owner) ([]delivery.KeyRef, error) {
	return k.store.OwnerKeyRefs(ctx, o)
}

func (k keys) CustomerKeys(ctx context.Context, customer string) ([]delivery.KeyRef, error) {
	return k.store.CustomerKeyRefs(ctx, customer)
}

// engine runs the page's Syncs on the sync engine, as serve does.
type engine struct{ s *syncer.Syncer }

func (e engine) SyncSubscription(ctx context.Context, id string, cause syncer.Cause) (delivery.Synced, error) {
	res, err := e.s.Sync(ctx, id, cause)
	return delivery.Synced{Unmapped: res.Unmapped}, err
}

func (e engine) SyncPurchase(ctx context.Context, id string, cause syncer.Cause) (delivery.Synced, error) {
	res, err := e.s.SyncPurchase(ctx, id, cause)
	return delivery.Synced{Unmapped: res.Unmapped}, err
}

// fetch makes a request and returns the answer with its body read.
func fetch(t *testing.T, method, url, accept string, body io.Reader, contentType string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
