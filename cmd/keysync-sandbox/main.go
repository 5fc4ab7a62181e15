// Command keysync-sandbox serves the Stripe and Cryptolens simulators and their control
// API on loopback, and prints the environment a keysync needs to use them. Both worlds
// share one test clock: advancing Stripe's moves Cryptolens' too.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "keysync-sandbox: %v\n", err)
		os.Exit(1)
	}
}

// Sandbox credentials: test values that only this sandbox accepts.
const (
	stripeKey       = "sk_test_sandbox"
	cryptolensToken = "sandbox_cryptolens_token"
	webhookSecret   = "whsec_sandbox_0123456789abcdef"
)

// ready describes a running sandbox.
type ready struct {
	Stripe, Cryptolens, Control string
	Env                         map[string]string
}

func run(ctx context.Context, args []string, out io.Writer, onReady func(ready)) error {
	fs := flag.NewFlagSet("keysync-sandbox", flag.ContinueOnError)
	stripeAddr := fs.String("stripe-addr", "127.0.0.1:12111", "Stripe API listen address (loopback)")
	cryptolensAddr := fs.String("cryptolens-addr", "127.0.0.1:12112", "Cryptolens API listen address (loopback)")
	controlAddr := fs.String("control-addr", "127.0.0.1:12113", "control API listen address (loopback)")
	product := fs.Int("cryptolens-product", 1001, "Cryptolens product id to create")
	blockExpired := fs.Bool("block-expired", false, `the product's "Block Expired Licenses" option`)
	timeLimited := fs.Int("time-limited-feature", 1, "the product's time-limited feature (1..8), which Block Expired Licenses acts on")
	skgl := fs.Bool("skgl", false, "the product uses the legacy SKGL algorithm: ExtendLicense and AddFeature change the key string")
	wholeDays := fs.Bool("whole-days", false, "Cryptolens keeps dates as whole days (midnight) instead of seconds")
	webhookURL := fs.String("webhook-url", "", "deliver Stripe events to this URL (keysync's /webhooks/stripe)")
	seed := fs.Uint64("seed", 1, "seed for ids and faults")
	envFile := fs.String("env-file", "", "also write the keysync environment to this file")
	listenAny := fs.Bool("listen-any", false, "allow non-loopback addresses: only inside an isolated container network (docker compose)")
	publicHost := fs.String("public-host", "", "host name to print in the environment instead of the listen address (e.g. sandbox in compose)")
	eventVersion := fs.String("event-version", stripesim.APIVersion,
		"the Stripe account's default API version: events (Events API, webhooks) are created in it ("+stripesim.APIVersion+" or "+stripesim.VersionBasil+")")
	webhookVersion := fs.String("webhook-api-version", "", "pin the webhook endpoint's api_version (default: follow -event-version)")
	dropRate := fs.Float64("webhook-drop-rate", 0, "lose this share of webhooks for good (0 to 1), as an endpoint that was down too long: keysync's catch-up must find them")
	canceledMetadata := fs.Bool("canceled-metadata", false, "let canceled subscriptions take metadata updates (Stripe since 2026; refused in 2023-24)")
	invoiceGrace := fs.Duration("invoice-grace", 0, "how long an invoiced subscription stays past_due after the due date before it is canceled (0: stays past_due)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, v := range []string{*eventVersion, *webhookVersion} {
		if v == "" {
			continue
		}
		if err := stripesim.CheckVersion(v); err != nil {
			return err
		}
	}
	if *dropRate < 0 || *dropRate > 1 {
		return fmt.Errorf("-webhook-drop-rate %v: want a share from 0 to 1", *dropRate)
	}
	for _, a := range []string{*stripeAddr, *cryptolensAddr, *controlAddr} {
		if err := loopbackOnly(a); err != nil && !*listenAny {
			return err
		}
	}

	stripe := stripesim.New(stripesim.Options{APIKey: stripeKey, Start: time.Now(), Seed: *seed, AccountAPIVersion: *eventVersion,
		CanceledMetadata: *canceledMetadata, Dunning: stripesim.Dunning{InvoiceGrace: *invoiceGrace}})
	defer stripe.Close()
	cryptoOpts := []cryptolenssim.Option{cryptolenssim.WithClock(stripe.Now), cryptolenssim.WithSeed(*seed)}
	if *wholeDays {
		cryptoOpts = append(cryptoOpts, cryptolenssim.WithWholeDays())
	}
	crypto := cryptolenssim.New(cryptoOpts...)
	crypto.AddProduct(*product, cryptolenssim.ProductOptions{BlockExpired: *blockExpired, TimeLimitedFeature: *timeLimited, SKGL: *skgl})
	crypto.AddToken(cryptolensToken, cryptolenssim.Token{ProductID: *product})
	if *webhookURL != "" {
		stripe.AddEndpoint(*webhookURL, stripesim.EndpointOptions{Secrets: []string{webhookSecret}, APIVersion: *webhookVersion, DropRate: *dropRate})
	}

	control := http.NewServeMux()
	control.Handle("/stripe/", http.StripPrefix("/stripe", stripe.ControlHandler()))
	control.Handle("/cryptolens/", http.StripPrefix("/cryptolens", crypto.ControlHandler()))

	// The addresses are bound first and served only once the environment file is
	// written: a caller that sees the sandbox answer can read the file at once.
	var servers []*http.Server
	var serve []func()
	listen := func(addr string, h http.Handler) (string, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return "", err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		serve = append(serve, func() { go func() { _ = srv.Serve(ln) }() })
		return "http://" + ln.Addr().String(), nil
	}
	defer func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}()
	r := ready{}
	var err error
	if r.Stripe, err = listen(*stripeAddr, stripe); err != nil {
		return err
	}
	if r.Cryptolens, err = listen(*cryptolensAddr, crypto); err != nil {
		return err
	}
	if r.Control, err = listen(*controlAddr, control); err != nil {
		return err
	}
	if *publicHost != "" {
		swap := func(u string) string {
			_, port, _ := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
			return "http://" + net.JoinHostPort(*publicHost, port)
		}
		r.Stripe, r.Cryptolens, r.Control = swap(r.Stripe), swap(r.Cryptolens), swap(r.Control)
	}
	r.Env = map[string]string{
		"STRIPE_API_BASE":        r.Stripe,
		"STRIPE_API_KEY":         stripeKey,
		"STRIPE_WEBHOOK_SECRETS": webhookSecret,
		"CRYPTOLENS_API_BASE":    r.Cryptolens,
		"CRYPTOLENS_TOKEN":       cryptolensToken,
		"CRYPTOLENS_PRODUCT_ID":  fmt.Sprint(*product),
	}
	var env strings.Builder
	for _, k := range []string{"STRIPE_API_BASE", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRETS", "CRYPTOLENS_API_BASE", "CRYPTOLENS_TOKEN", "CRYPTOLENS_PRODUCT_ID"} {
		fmt.Fprintf(&env, "%s=%s\n", k, r.Env[k])
	}
	if *envFile != "" {
		// Written whole, then renamed into place: a reader never sees half of it.
		tmp := *envFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(env.String()), 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, *envFile); err != nil {
			return err
		}
	}
	for _, start := range serve {
		start()
	}
	fmt.Fprintf(out, "keysync sandbox (test credentials; loopback only)\n  Stripe API      %s\n  Cryptolens API  %s\n  control API     %s (/stripe/..., /cryptolens/...)\n",
		r.Stripe, r.Cryptolens, r.Control)
	if *webhookURL != "" {
		fmt.Fprintf(out, "  webhooks to     %s\n", *webhookURL)
		if *dropRate > 0 {
			fmt.Fprintf(out, "  webhooks lost   %.0f%% (for good: the catch-up must find them)\n", *dropRate*100)
		}
	}
	if *eventVersion != stripesim.APIVersion || *webhookVersion != "" {
		fmt.Fprintf(out, "  event versions  account %s, webhook endpoint %s\n", *eventVersion, cmp.Or(*webhookVersion, *eventVersion))
	}
	fmt.Fprintf(out, "\nEnvironment for keysync:\n%s", env.String())
	if onReady != nil {
		onReady(r)
	}
	<-ctx.Done()
	return nil
}

// loopbackOnly refuses addresses that are not on the loopback interface: the sandbox
// accepts test credentials and must not be reachable from elsewhere.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return errors.New("the sandbox listens on loopback only, got " + addr)
	}
	return nil
}
