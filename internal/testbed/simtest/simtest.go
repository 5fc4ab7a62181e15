// Package simtest gives tests both simulators on one test clock, served over HTTP, and
// keysync's own clients for them.
package simtest

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// The world's fixed names.
const (
	Product         = 1001
	CryptolensToken = "tok"
	StripeKey       = "sk_test_sim"
)

// Options shape a World.
type Options struct {
	// Start is the test clock's start (default: the simulator's).
	Start time.Time
	// StripeKey replaces the Stripe secret key.
	StripeKey string
	// CryptolensToken replaces the Cryptolens token.
	CryptolensToken string
	// BlockExpired sets the product's "Block Expired Licenses" option.
	BlockExpired bool
	// SKGL makes the product use the legacy SKGL algorithm: changes give keys new strings.
	SKGL bool
	// WholeDays makes Cryptolens keep dates as whole days (cryptolenssim.WithWholeDays).
	WholeDays bool
	// WrapCryptolens, if set, wraps the Cryptolens simulator's handler (to inject
	// behaviour around its calls).
	WrapCryptolens func(http.Handler) http.Handler
}

// World is a Stripe and a Cryptolens that share one clock.
type World struct {
	Stripe        *stripesim.Sim
	Crypto        *cryptolenssim.Sim
	StripeURL     string
	CryptolensURL string
	opts          Options
}

// New starts a World; everything stops when t ends.
func New(t testing.TB, o Options) *World {
	t.Helper()
	if o.StripeKey == "" {
		o.StripeKey = StripeKey
	}
	if o.CryptolensToken == "" {
		o.CryptolensToken = CryptolensToken
	}
	w := &World{opts: o}
	w.Stripe = stripesim.New(stripesim.Options{Start: o.Start, APIKey: o.StripeKey})
	t.Cleanup(w.Stripe.Close)
	copts := []cryptolenssim.Option{cryptolenssim.WithClock(w.Stripe.Now)}
	if o.WholeDays {
		copts = append(copts, cryptolenssim.WithWholeDays())
	}
	w.Crypto = cryptolenssim.New(copts...)
	w.Crypto.AddProduct(Product, cryptolenssim.ProductOptions{BlockExpired: o.BlockExpired, SKGL: o.SKGL})
	w.Crypto.AddToken(o.CryptolensToken, cryptolenssim.Token{})
	var crypto http.Handler = w.Crypto
	if o.WrapCryptolens != nil {
		crypto = o.WrapCryptolens(crypto)
	}
	ss, cs := httptest.NewServer(w.Stripe), httptest.NewServer(crypto)
	t.Cleanup(ss.Close)
	t.Cleanup(cs.Close)
	w.StripeURL, w.CryptolensURL = ss.URL, cs.URL
	return w
}

// Clients returns new keysync clients for the world (one set per replica), unpaced and
// without retries, so tests see every failure.
func (w *World) Clients(t testing.TB) (*stripeapi.Client, *cryptolens.Client) {
	t.Helper()
	sc, err := stripeapi.New(stripeapi.Config{APIKey: w.opts.StripeKey, BaseURL: w.StripeURL, RateLimit: 1000, Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cryptolens.New(cryptolens.Config{BaseURL: w.CryptolensURL, Token: w.opts.CryptolensToken, RateLimit: -1, ReadRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	return sc, cc
}

// Price creates a product mapped to Product (metadata skm_product_id) and a monthly
// price on it with the given skm metadata ("" for none), and returns the price id.
func (w *World) Price(name string, amount int64, skm string) string {
	prod := w.Stripe.CreateProduct(name, map[string]string{"skm_product_id": "1001"})
	md := map[string]string{}
	if skm != "" {
		md["skm"] = skm
	}
	price, _ := w.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: amount, Metadata: md})
	return price
}
