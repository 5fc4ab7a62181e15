package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// SweepOptions configures the sweep benchmark.
type SweepOptions struct {
	// KeysyncBin is the keysync binary; the sweep runs as `keysync reconcile --once`,
	// its own process.
	KeysyncBin string
	// PeakRSS is the command that runs another and prints its peak RSS ("peak_rss_kb N"
	// as the last line of its output). A child forked straight from this process would
	// report this process's memory, which holds the simulators, as its own peak.
	PeakRSS []string
	// DatabaseURL is a fresh, migrated database.
	DatabaseURL   string
	Subscriptions int
	Progress      func(string)
}

// SweepResult is one sweep of an account with no drift, beside the baseline: the same
// listing (every subscription, every key, page by page) done by this process with
// nothing else, which is the least a sweep can cost.
type SweepResult struct {
	Subscriptions   int     `json:"subscriptions"`
	Keys            int     `json:"keys"`
	Seconds         float64 `json:"seconds"`
	StripeCalls     int     `json:"stripe_calls"`
	CryptolensCalls int     `json:"cryptolens_calls"`
	// Window is how many subscriptions started in the sweep's one-time-purchase window
	// (the last day): their Checkout Sessions and invoices are listed, 100 a page.
	Window int `json:"purchase_window"`
	// Budget is N/100 + K/99 + 5 + 2·W/100, the calls a paged sweep needs.
	Budget          int     `json:"call_budget"`
	PeakRSSMB       float64 `json:"peak_rss_mb"`
	Drifted         int     `json:"drifted"`
	BaselineSeconds float64 `json:"baseline_seconds"`
}

// sweepDays is how many days the sweep's subscriptions start over.
const sweepDays = 27

const (
	benchStripeKey  = "sk_test_bench"
	benchCryptoTok  = "bench_cryptolens_token"
	benchProduct    = 1001
	benchSweepPlans = `{"F1":true,"MaxNoOfMachines":2}`
)

// Sweep seeds an account of opts.Subscriptions active subscriptions whose keys and
// mapping rows are in their policy state, serves the simulators on loopback, and runs
// `keysync reconcile --once` against it.
func Sweep(ctx context.Context, opts SweepOptions) (SweepResult, error) {
	res := SweepResult{Subscriptions: opts.Subscriptions, Keys: opts.Subscriptions}
	say := func(format string, a ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, a...))
		}
	}
	// The simulators' clock starts as far back as the seeding below moves it, so that the
	// sweep runs at about the host's time: keysync's clock is Cryptolens', which it
	// learns from the first answer, and until then the host's.
	st := stripesim.New(stripesim.Options{APIKey: benchStripeKey, NoEvents: true,
		Start: time.Now().Add(-time.Duration(sweepDays-1)*24*time.Hour - time.Hour)})
	defer st.Close()
	cl := cryptolenssim.New(cryptolenssim.WithClock(st.Now))
	cl.AddProduct(benchProduct, cryptolenssim.ProductOptions{})
	cl.AddToken(benchCryptoTok, cryptolenssim.Token{})
	prod := st.CreateProduct("Pro", map[string]string{"skm_product_id": strconv.Itoa(benchProduct)})
	price, err := st.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 3000, Metadata: map[string]string{"skm": benchSweepPlans}})
	if err != nil {
		return res, err
	}
	pool, err := pgxpool.New(ctx, opts.DatabaseURL)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	// The subscriptions start over the 27 days before the sweep, a batch a day, as an
	// account's do over a month (none has renewed yet: the first batch's period ends on
	// day 28 at the earliest, February's), and the last batch an hour before the sweep.
	// The sweep's one-time-purchase window (the last day) then holds one batch's Checkout
	// Sessions and invoices, as it holds a day's on a real account, not all of them.
	var rows [][]any
	perDay := (opts.Subscriptions + sweepDays - 1) / sweepDays
	for i := range opts.Subscriptions {
		if i > 0 && i%perDay == 0 {
			st.Advance(24 * time.Hour)
		}
		co, err := st.Checkout(stripesim.CheckoutParams{Email: fmt.Sprintf("u%d@example.com", i), Items: []stripesim.ItemParams{{Price: price}}})
		if err != nil {
			return res, err
		}
		inv, _ := st.Invoice(co.Invoice)
		pt := time.Unix(inv.Lines[0].PeriodEnd, 0).UTC()
		k, err := cl.PutKey(cryptolenssim.Key{ProductID: benchProduct, Notes: syncer.Marker(co.Subscription),
			Expires: pt.AddDate(0, 0, 5), Features: [8]bool{true}, MaxNoOfMachines: 2})
		if err != nil {
			return res, err
		}
		rows = append(rows, []any{co.Subscription, co.Customer, "active", benchProduct, k.Key, pt})
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"subscriptions"}, []string{"id", "customer_id", "status", "product_id", "license_key", "paid_through"},
		pgx.CopyFromRows(rows)); err != nil {
		return res, err
	}
	rows = nil
	st.Advance(time.Hour)
	res.Window = min(perDay, opts.Subscriptions-(sweepDays-1)*perDay)
	if opts.Subscriptions < sweepDays {
		res.Window = 1
	}
	say("seeded %d subscriptions, keys and mapping rows, all in their policy state, over %d days", opts.Subscriptions, sweepDays)

	stripeURL, stopStripe, err := serveLoopback(st)
	if err != nil {
		return res, err
	}
	defer stopStripe()
	cryptoURL, stopCrypto, err := serveLoopback(cl)
	if err != nil {
		return res, err
	}
	defer stopCrypto()

	stripeBefore, cryptoBefore := sum(st.Requests()), len(cl.Calls())
	cmd := exec.CommandContext(ctx, opts.PeakRSS[0], append(opts.PeakRSS[1:], opts.KeysyncBin, "reconcile", "--once")...)
	cmd.Env = []string{"DATABASE_URL=" + opts.DatabaseURL, "STRIPE_API_KEY=" + benchStripeKey, "STRIPE_API_BASE=" + stripeURL,
		"CRYPTOLENS_TOKEN=" + benchCryptoTok, "CRYPTOLENS_API_BASE=" + cryptoURL, "CRYPTOLENS_PRODUCT_ID=" + strconv.Itoa(benchProduct),
		// Limits opened: the simulators have none, and this measures keysync's own cost.
		"STRIPE_RATE_LIMIT=5000", "CRYPTOLENS_RATE_LIMIT=1000", "LOG_LEVEL=warn", "LOG_FORMAT=json"}
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	res.Seconds = time.Since(t0).Seconds()
	if err != nil {
		return res, fmt.Errorf("keysync reconcile --once: %v: %s", err, out)
	}
	m := regexp.MustCompile(`peak_rss_kb (\d+)`).FindSubmatch(out)
	if m == nil {
		return res, fmt.Errorf("no peak RSS in the output: %s", out)
	}
	kb, _ := strconv.Atoi(string(m[1]))
	res.PeakRSSMB = float64(kb) / 1024
	res.StripeCalls = sum(st.Requests()) - stripeBefore
	res.CryptolensCalls = len(cl.Calls()) - cryptoBefore
	res.Budget = res.Subscriptions/100 + res.Keys/99 + 5 + 2*((res.Window+99)/100)
	if m := regexp.MustCompile(`(\d+) drifted`).FindSubmatch(out); m != nil {
		res.Drifted, _ = strconv.Atoi(string(m[1]))
	}
	say("keysync sweep: %.1fs, %d Stripe + %d Cryptolens calls, peak RSS %.0f MB, %d drifted", res.Seconds, res.StripeCalls, res.CryptolensCalls, res.PeakRSSMB, res.Drifted)

	// Baseline: the listing alone.
	sc, err := stripeapi.New(stripeapi.Config{APIKey: benchStripeKey, BaseURL: stripeURL, RateLimit: 5000})
	if err != nil {
		return res, err
	}
	cc, err := cryptolens.New(cryptolens.Config{BaseURL: cryptoURL, Token: benchCryptoTok, RateLimit: -1})
	if err != nil {
		return res, err
	}
	t0 = time.Now()
	for _, err := range sc.Subscriptions(ctx) {
		if err != nil {
			return res, err
		}
	}
	for _, err := range cc.AllKeys(ctx, benchProduct, "") {
		if err != nil {
			return res, err
		}
	}
	res.BaselineSeconds = time.Since(t0).Seconds()
	say("baseline (listing alone): %.1fs", res.BaselineSeconds)
	return res, nil
}

// PeakRSS runs args as a child process, with this process's standard streams, and then
// prints "peak_rss_kb N" (the child's peak resident set size) to standard error. It
// returns the child's exit code. Run it in a small process (keysync-bench peak-rss ...),
// so that the fork does not count a large parent's memory.
func PeakRSS(args []string) int {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if cmd.ProcessState == nil {
		fmt.Fprintf(os.Stderr, "peak-rss: %v\n", err)
		return 1
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		fmt.Fprintf(os.Stderr, "peak_rss_kb %d\n", ru.Maxrss) // kilobytes on Linux
	}
	return cmd.ProcessState.ExitCode()
}

// serveLoopback serves h on a loopback port.
func serveLoopback(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
