package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/testbed/simtest"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// screenshotDir is where the console's browser test leaves a picture of each page
// (git-ignored).
var screenshotDir = filepath.Join("..", "..", "screenshots", "console")

// chromiumPath finds Debian's Chromium. The browser test needs it: a missing browser
// is a failure to fix (.ci/run installs it), never a reason to skip.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium is not installed: the console's browser test needs it (apt-get install chromium; .ci/run installs it)")
	return ""
}

// tab is one headless Chromium tab that a test drives, failing the test on any error.
type tab struct {
	t   *testing.T
	ctx context.Context
}

// newTab starts headless Chromium with a fresh profile; it is stopped when the test ends.
func newTab(t *testing.T) *tab {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(func(string, ...any) {}))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first call starts the browser and binds its life to its context: no timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return &tab{t: t, ctx: ctx}
}

// do runs actions within 15 s; on failure it names the step and the page it was on.
func (tb *tab) do(step string, actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		loc, _ := chromedp.Run(tb.ctx, chromedp.Location())
		text, _ := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		tb.t.Fatalf("%s: %v (at %s)\n%s", step, err, loc, text)
	}
}

// load runs trigger (a click, a submit, a navigation) and waits for the page it loads.
func (tb *tab) load(step string, trigger chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	tb.do(step, func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.WaitEvent(page.LoadEventFired, nil, trigger)(ctx, t)
		return chromedp.Void{}, err
	})
}

// text returns the page's visible text.
func (tb *tab) text() string {
	tb.t.Helper()
	s, err := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		tb.t.Fatal(err)
	}
	return s
}

// see fails the test unless the page shows every text of want.
func (tb *tab) see(step string, want ...string) {
	tb.t.Helper()
	text := tb.text()
	for _, w := range want {
		if !strings.Contains(text, w) {
			loc, _ := chromedp.Run(tb.ctx, chromedp.Location())
			tb.t.Fatalf("%s: the page (%s) does not show %q:\n%s", step, loc, w, text)
		}
	}
}

// shot saves a screenshot of the whole page as name.png.
func (tb *tab) shot(name string) { tb.t.Helper(); tb.save(name, chromedp.FullScreenshot(100)) }

// shotScreen saves a screenshot of what the screen shows as name.png.
func (tb *tab) shotScreen(name string) { tb.t.Helper(); tb.save(name, chromedp.CaptureScreenshot()) }

func (tb *tab) save(name string, capture chromedp.Action[[]byte]) {
	tb.t.Helper()
	png, err := chromedp.Run(tb.ctx, capture)
	if err != nil {
		tb.t.Fatal(err)
	}
	if err := os.MkdirAll(screenshotDir, 0o755); err != nil {
		tb.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(screenshotDir, name+".png"), png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
}

// scripts turns the page's JavaScript on or off (the test's own evaluation still runs).
func (tb *tab) scripts(on bool) {
	tb.t.Helper()
	if _, err := chromedp.Call(tb.ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: !on}); err != nil {
		tb.t.Fatal(err)
	}
}

// TestConsoleInBrowser drives the operator console of a running keysync serve with
// headless Chromium, JavaScript off, as an operator would: log in (a wrong token
// first), find a customer by e-mail (their subscription and one-time purchase side by
// side), read the subscription's key, audit trail and preview, press Sync now and see
// the new audit row, open the purchase and its perpetual key, Sync it (nothing to do),
// replay a failed event, export the audit log as CSV, read the jobs, check every page at
// phone width, log out. A form without its CSRF token is refused. It saves a screenshot
// of each page.
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const adminToken = "console_admin_token_0123456789"

	// A customer checks out in the simulators; keysync, polling Stripe's events, makes
	// the key.
	dbURL := pgtest.EmptyURL(t)
	world := simtest.New(t, simtest.Options{Start: time.Now().UTC().Truncate(time.Second)})
	prod := world.Stripe.CreateProduct("Acme App", nil)
	price, _ := world.Stripe.CreatePrice(stripesim.PriceParams{Product: prod, UnitAmount: 2900})
	co, err := world.Stripe.Checkout(stripesim.CheckoutParams{Email: "ada@example.com", Name: "Ada Lovelace", Items: []stripesim.ItemParams{{Price: price}}})
	if err != nil {
		t.Fatal(err)
	}
	// The same customer buys a perpetual license: a one-time price that skm metadata
	// maps, paid through Checkout in payment mode.
	lifetime := world.Stripe.CreateProduct("Acme App, lifetime", map[string]string{"skm_product_id": fmt.Sprint(simtest.Product)})
	oneTime, err := world.Stripe.CreatePrice(stripesim.PriceParams{Product: lifetime, UnitAmount: 19900, OneTime: true,
		Metadata: map[string]string{"skm": `{"F2":true,"MaxNoOfMachines":3}`}})
	if err != nil {
		t.Fatal(err)
	}
	buy, err := world.Stripe.CheckoutPayment(stripesim.PaymentParams{Customer: co.Customer, Items: []stripesim.ItemParams{{Price: oneTime}}})
	if err != nil || !buy.Completed {
		t.Fatalf("got %+v, %v; want a paid purchase", buy, err)
	}
	plans := filepath.Join(t.TempDir(), "plans.yaml")
	if err := os.WriteFile(plans, []byte("plans:\n  - price: "+price+"\n    features: [1, 3]\n    machines_per_seat: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, env(map[string]string{"DATABASE_URL": dbURL, "KEYSYNC_LISTEN": "127.0.0.1:0", "LOG_FORMAT": "json",
		"STRIPE_API_KEY": simtest.StripeKey, "STRIPE_API_BASE": world.StripeURL, "CRYPTOLENS_TOKEN": simtest.CryptolensToken,
		"CRYPTOLENS_API_BASE": world.CryptolensURL, "CRYPTOLENS_PRODUCT_ID": fmt.Sprint(simtest.Product), "KEYSYNC_PLANS_FILE": plans,
		"KEYSYNC_ADMIN_TOKEN": adminToken, "KEYSYNC_CATCHUP_INTERVAL": "1h"}))
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	var key, perpetual string
	// The sweep at start must be over too, and every job it queued: a sweep after the
	// clock moves below would make the extension the test wants the preview to show.
	pgtest.WaitFor(t, 20*time.Second, "keysync to make the keys, work every event the catch-up stored and finish its first sweep", func() bool {
		var pending, caughtUp, swept, jobs int
		_ = pool.QueryRow(ctx, `SELECT coalesce((SELECT license_key FROM subscriptions WHERE id = $1), ''),
			coalesce((SELECT license_key FROM purchase_keys WHERE purchase_id = $2), ''),
			(SELECT count(*) FROM stripe_events WHERE status = 'pending'),
			(SELECT count(*) FROM sync_runs WHERE kind = 'catch_up' AND status = 'succeeded'),
			(SELECT count(*) FROM sync_runs WHERE kind = 'sweep' AND status = 'succeeded'),
			(SELECT count(*) FROM river_job WHERE state IN ('available', 'running', 'retryable'))`,
			co.Subscription, buy.Session).Scan(&key, &perpetual, &pending, &caughtUp, &swept, &jobs)
		return key != "" && perpetual != "" && pending == 0 && caughtUp > 0 && swept > 0 && jobs == 0
	})

	// An event that failed for good earlier, to replay.
	var failed string
	if err := pool.QueryRow(ctx, `UPDATE stripe_events SET status = 'failed', attempts = 20, last_error = 'cryptolens: access denied (the token lacked a method)'
		WHERE id = (SELECT id FROM stripe_events WHERE type = 'customer.subscription.created') RETURNING id`).Scan(&failed); err != nil {
		t.Fatal(err)
	}

	// A month later the renewal is paid, and the key is a month short until a Sync.
	world.Stripe.Advance(32 * 24 * time.Hour)

	start := time.Now()
	if err := os.RemoveAll(screenshotDir); err != nil {
		t.Fatal(err)
	}
	tb := newTab(t)
	tb.scripts(false)
	base := srv.admin + "/console/"

	// 1. Log in: a wrong token is refused, the right one lands on the overview.
	tb.load("open the console", chromedp.Navigate(base))
	tb.see("the login form", "Admin token")
	tb.shot("01-login")
	tb.load("log in with a wrong token", chromedp.Steps(chromedp.SendKeys(chromedp.ID("token"), "wrong_token_0123456789"), chromedp.Submit(chromedp.ID("token"))))
	tb.see("the wrong token", "not an admin token")
	tb.shot("02-login-refused")
	tb.load("log in", chromedp.Steps(chromedp.SendKeys(chromedp.ID("token"), adminToken), chromedp.Submit(chromedp.ID("token"))))
	tb.see("the overview", "Is keysync healthy?", "events received", "Catch-up cursor", "Sweeps and catch-ups", "Stripe calls since this replica started")
	tb.shot("03-overview")

	// 2. Find the customer by e-mail: their subscription and their purchase, side by
	// side. The subscription's page: Stripe's view, the key, the audit trail, the
	// events, and what a Sync would do now.
	tb.load("search by e-mail", chromedp.Steps(chromedp.SendKeys(chromedp.CSS(`header input[name="q"]`), "ada@example.com"),
		chromedp.Submit(chromedp.CSS(`header input[name="q"]`))))
	tb.see("the customer's subscription and purchase", co.Subscription, key, buy.Session, perpetual, "1 one-time purchases")
	tb.shot("04-search-customer")
	tb.load("open the subscription", chromedp.Click(chromedp.CSS(`a[href="/console/subscriptions/`+co.Subscription+`"]`)))
	tb.see("the subscription", co.Subscription, key, "active", "create_key", "- expires", "+ expires", "extend by",
		"customer.subscription.created", "invoice.paid")
	tb.shot("05-subscription")

	// 3. A Sync now whose form lost its CSRF token is refused and changes nothing.
	audits := func() int {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM audit_log`).Scan(&n)
		return n
	}
	before := audits()
	tb.do("drop the CSRF token", chromedp.RemoveAttribute(chromedp.CSS(`form[action$="/sync"] input[name="csrf"]`), "name"))
	tb.load("sync without the CSRF token", chromedp.Click(chromedp.CSS(`form[action$="/sync"] button`)))
	tb.see("the refusal", "403 Forbidden", "CSRF")
	tb.shot("06-csrf-refused")
	if n := audits(); n != before {
		t.Fatalf("a Sync refused for its CSRF token wrote %d audit rows", n-before)
	}

	// 4. Sync now: the key is extended, and the new audit row names the operator.
	tb.load("back to the subscription", chromedp.Navigate(srv.admin+"/console/subscriptions/"+co.Subscription))
	tb.load("sync now", chromedp.Click(chromedp.CSS(`form[action$="/sync"] button`)))
	tb.see("the synced subscription", "Synced now: 1 action(s)", "Nothing: the key is as the policy wants")
	first, err := chromedp.Run(tb.ctx, chromedp.Text(chromedp.CSS(`table.audit tbody tr`)))
	if err != nil || !strings.Contains(first, "extend") || !strings.Contains(first, "operator") || !strings.Contains(first, "console:admin") {
		t.Fatalf("the newest audit row: got %q (%v), want an extend by operator console:admin", first, err)
	}
	tb.shot("07-subscription-synced")

	// 5. The customer's purchase, from the customer's link: Stripe's view of the
	// payment, the perpetual key, its audit trail (the catch-up's event or the first
	// sweep, whichever came first, made the key) and its events. Sync now has nothing
	// to do, and says so; it audits nothing.
	tb.load("open the customer", chromedp.Click(chromedp.CSS(`a[href="/console/subscriptions?q=`+co.Customer+`"]`)))
	tb.load("open the purchase", chromedp.Click(chromedp.CSS(`a[href="/console/purchases/`+buy.Session+`"]`)))
	tb.see("the purchase", buy.Session, "paid", perpetual, "perpetual", "never (perpetual)", "F2", "create_key", `"perpetual":true`,
		"checkout.session.completed", "Nothing: the key is as the policy wants")
	tb.shot("08-purchase")
	before = audits()
	tb.load("sync the purchase now", chromedp.Click(chromedp.CSS(`form[action="/console/purchases/`+buy.Session+`/sync"] button`)))
	tb.see("the synced purchase", "Synced now: nothing to do", perpetual)
	if n := audits(); n != before {
		t.Fatalf("a Sync of a purchase with nothing to do wrote %d audit rows", n-before)
	}
	tb.shot("09-purchase-synced")

	// 6. Failed events: the list, the payload, and a replay that the workers process.
	tb.load("open failed events", chromedp.Click(chromedp.CSS(`nav a[href="/console/events/failed"]`)))
	tb.see("the failed events", failed, "access denied", "20")
	tb.shot("10-failed-events")
	tb.load("open the payload", chromedp.Click(chromedp.CSS(`a.button[href="/console/events/`+failed+`"]`)))
	tb.see("the payload", `"type": "customer.subscription.created"`, co.Subscription)
	tb.shot("11-event-payload")
	tb.load("back to failed events", chromedp.Navigate(srv.admin+"/console/events/failed"))
	tb.load("replay", chromedp.Click(chromedp.CSS(`form[action="/console/events/`+failed+`/replay"] button`)))
	tb.see("the replay", "The event is queued again")
	pgtest.WaitFor(t, 20*time.Second, "the replayed event to be processed", func() bool {
		ev, err := store.GetEvent(ctx, failed)
		return err == nil && ev.Status == "processed"
	})

	// 7. Audit search, and the CSV export the browser downloads.
	downloads := t.TempDir()
	if _, err := chromedp.CallBrowser(tb.ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: downloads, EventsEnabled: new(true)}); err != nil {
		t.Fatal(err)
	}
	tb.load("open the audit log", chromedp.Click(chromedp.CSS(`nav a[href="/console/audit"]`)))
	tb.load("filter by subscription", chromedp.Steps(chromedp.SendKeys(chromedp.CSS(`.filters input[name="subscription"]`), co.Subscription),
		chromedp.Submit(chromedp.CSS(`.filters input[name="subscription"]`))))
	tb.see("the audit log", "create_key", "extend", "console:admin")
	tb.shot("12-audit")
	dctx, cancel := context.WithTimeout(tb.ctx, 15*time.Second)
	progress := chromedp.BrowserEvents(dctx, browser.DownloadProgress) // subscribed before the click
	tb.do("export CSV", chromedp.Click(chromedp.CSS(`a[href^="/console/audit.csv"]`)))
	var csvPath string
	for ev, err := range progress {
		if err != nil {
			t.Fatalf("the CSV download did not complete: %v", err)
		}
		if ev.State == browser.DownloadProgressStateCompleted {
			csvPath = filepath.Join(downloads, ev.GUID)
			break
		}
	}
	cancel()
	gotCSV, err := os.ReadFile(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := store.QueryAudit(ctx, postgres.AuditFilter{Subscription: co.Subscription, Limit: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	var wantCSV bytes.Buffer
	if err := postgres.WriteAuditCSV(&wantCSV, rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) < 2 || !bytes.Equal(gotCSV, wantCSV.Bytes()) {
		t.Fatalf("the downloaded CSV:\n%s\nwant (keysync audit --format csv):\n%s", gotCSV, wantCSV.String())
	}

	// 8. Jobs: the table without JavaScript, then River UI, which needs it.
	tb.load("open jobs", chromedp.Click(chromedp.CSS(`nav a[href="/console/queue"]`)))
	tb.see("the jobs table", "stripe_event", "completed", "Open River UI")
	tb.shot("13-jobs")
	tb.scripts(true)
	// Its list of completed jobs comes from its API under /console/jobs/api/, through
	// the console's login.
	tb.load("open River UI", chromedp.Navigate(srv.admin+"/console/jobs/jobs?state=completed"))
	if _, err := chromedp.Run(tb.ctx, chromedp.Poll[bool](`document.body.innerText.includes("stripe_event")`, chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatalf("River UI did not list the completed jobs: %v\n%s", err, tb.text())
	}
	tb.shot("14-river-ui")
	tb.scripts(false)

	// 9. Phone width: no page is wider than the screen.
	tb.do("phone width", chromedp.EmulateViewport(375, 812, chromedp.EmulateMobile))
	for _, p := range []struct{ name, path string }{
		{"15-phone-overview", ""}, {"16-phone-subscription", "subscriptions/" + co.Subscription}, {"18-phone-purchase", "purchases/" + buy.Session},
		{"", "subscriptions?q=" + co.Customer}, {"", "events/failed"}, {"", "events/" + failed}, {"19-phone-audit", "audit?subscription=" + co.Subscription},
		{"", "queue"}, {"", "subscriptions?q=nobody"},
	} {
		tb.load("open "+p.path+" at phone width", chromedp.Navigate(base+p.path))
		width, err := chromedp.Run(tb.ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
		if err != nil || width > 375 {
			wide, _ := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`[...document.querySelectorAll("body *")]
				.filter(e => e.getBoundingClientRect().right > 375.5 || (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === "visible" && !e.closest("thead")))
				.slice(0, 8).map(e => e.tagName + "." + e.className + ": " + e.textContent.trim().slice(0, 40)).join("\n")`))
			t.Fatalf("/console/%s at 375 px: the page is %d px wide (%v), want no horizontal scroll; too wide:\n%s", p.path, width, err, wide)
		}
		if p.name != "" {
			tb.shotScreen(p.name)
		}
		if p.name == "16-phone-subscription" {
			tb.do("scroll to the audit trail", chromedp.ScrollIntoView(chromedp.CSS("table.audit")))
			tb.shotScreen("17-phone-subscription-audit")
		}
	}
	tb.do("desktop width", chromedp.EmulateViewport(1280, 900))

	// 10. Log out: the console is closed again.
	tb.load("log out", chromedp.Click(chromedp.CSS(`form.who button`)))
	tb.see("the login form after logout", "Logged out.", "Admin token")
	tb.shot("20-logged-out")
	tb.load("open a page after logout", chromedp.Navigate(base+"audit"))
	tb.see("the login form again", "Admin token")
	t.Logf("browser part took %s; screenshots in %s", time.Since(start).Round(time.Millisecond), screenshotDir)
}
