// Command keysync-demo runs keysync against the sandbox (the Stripe and Cryptolens
// simulators) on local Postgres, plays a subscription's life through it, checks the
// license key after every step, and prints the audit trail; then it shows the license
// page of a one-time purchase before Stripe's webhooks arrive. It is what `make demo`
// runs.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/testbed/localpg"
	"github.com/keysync/keysync/internal/testbed/sandbox"
)

const product = 1001

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

type demo struct {
	ctx  context.Context
	out  io.Writer
	ctl  *sandbox.Control
	db   *pgx.Conn
	sub  string
	cust string
	// public is keysync's public listener (webhooks, the license page): http://host:port.
	public string
	// keysync is the keysync binary, and env its environment, for one-shot commands.
	keysync string
	env     []string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("keysync-demo", flag.ContinueOnError)
	keysyncBin := fs.String("keysync", "bin/keysync", "the keysync binary")
	sandboxBin := fs.String("sandbox", "bin/keysync-sandbox", "the keysync-sandbox binary")
	workdir := fs.String("dir", ".demo", "where the demo writes logs and the plans file")
	database := fs.String("database", "keysync_demo", "database the demo creates (on a local or throwaway server)")
	keep := fs.Bool("keep", false, "keep keysync and the sandbox running at the end, to look at the console, until interrupted (make demo KEEP=1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, b := range []string{*keysyncBin, *sandboxBin} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s not found: run `make build` first (make demo does)", b)
		}
	}
	if err := os.MkdirAll(*workdir, 0o755); err != nil {
		return err
	}
	d := &demo{ctx: ctx, out: out, keysync: *keysyncBin}
	d.step("Postgres")
	server, err := localpg.Find(ctx, os.Getenv)
	if err != nil {
		return err
	}
	defer server.Stop()
	dbURL, err := demoDatabase(ctx, server, *database)
	if err != nil {
		return err
	}
	d.say("using the %s server: %s", server.Kind, redact(dbURL))
	if d.db, err = pgx.Connect(ctx, dbURL); err != nil {
		return err
	}
	defer d.db.Close(context.Background())

	d.step("keysync-sandbox: Stripe and Cryptolens simulators on loopback")
	ports, err := sandbox.FreePorts(5)
	if err != nil {
		return err
	}
	keysyncAddr, adminAddr := "127.0.0.1:"+ports[3], "127.0.0.1:"+ports[4]
	envFile := filepath.Join(*workdir, "sandbox.env")
	sb, err := sandbox.Start(*sandboxBin, filepath.Join(*workdir, "sandbox.log"), nil,
		"-stripe-addr", "127.0.0.1:"+ports[0], "-cryptolens-addr", "127.0.0.1:"+ports[1], "-control-addr", "127.0.0.1:"+ports[2],
		"-cryptolens-product", fmt.Sprint(product), "-webhook-url", "http://"+keysyncAddr+"/webhooks/stripe", "-env-file", envFile)
	if err != nil {
		return err
	}
	defer sb.Stop(time.Minute)
	d.ctl = sandbox.New("http://127.0.0.1:" + ports[2])
	if err := sandbox.WaitHTTP(ctx, d.ctl.URL+"/stripe/now", sb); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	var prod, pro, team, lifetime map[string]string
	if err := d.ctl.Post(d.ctx, "/stripe/products", map[string]any{"name": "Acme App", "metadata": map[string]string{"skm_product_id": fmt.Sprint(product)}}, &prod); err != nil {
		return err
	}
	if err := d.ctl.Post(d.ctx, "/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 2900, "nickname": "Pro"}, &pro); err != nil {
		return err
	}
	if err := d.ctl.Post(d.ctx, "/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 9900, "nickname": "Team"}, &team); err != nil {
		return err
	}
	if err := d.ctl.Post(d.ctx, "/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 19900, "type": "one_time", "nickname": "Lifetime"}, &lifetime); err != nil {
		return err
	}
	plans := filepath.Join(*workdir, "plans.yaml")
	plansYAML := fmt.Sprintf("plans:\n  - price: %s   # Pro\n    features: [1]\n    machines_per_seat: 1\n  - price: %s   # Team\n    features: [1, 3]\n    machines_per_seat: 2\n"+
		"  - price: %s   # Lifetime, one-time\n    features: [3]\n    machines_per_seat: 2\n    perpetual: true\n", pro["id"], team["id"], lifetime["id"])
	if err := os.WriteFile(plans, []byte(plansYAML), 0o644); err != nil {
		return err
	}
	d.say("control API %s; prices Pro %s (F1, 1 machine a seat), Team %s (F1+F3, 2 a seat)", d.ctl.URL, pro["id"], team["id"])
	d.say("and Lifetime %s (one-time: a perpetual key, F3, 2 machines a seat) in %s", lifetime["id"], plans)

	d.step("keysync serve")
	env, err := sandbox.ReadEnv(envFile)
	if err != nil {
		return err
	}
	// A fresh admin token for the console, in a file only this user can read.
	tokenFile, token, err := adminToken(*workdir)
	if err != nil {
		return err
	}
	env = append(env, "DATABASE_URL="+dbURL, "KEYSYNC_LISTEN="+keysyncAddr, "KEYSYNC_ADMIN_LISTEN="+adminAddr, "KEYSYNC_PLANS_FILE="+plans,
		"LOG_FORMAT=json", "LOG_LEVEL=info", "KEYSYNC_ADMIN_TOKEN="+token)
	d.env, d.public = env, "http://"+keysyncAddr
	keysync, err := sandbox.Start(*keysyncBin, filepath.Join(*workdir, "keysync.log"), env, "serve")
	if err != nil {
		return err
	}
	defer keysync.Stop(time.Minute)
	if err := sandbox.WaitHTTP(ctx, "http://"+keysyncAddr+"/readyz", keysync); err != nil {
		return fmt.Errorf("keysync: %w (log: %s)", err, keysync.Log)
	}
	if err := sandbox.WaitHTTP(ctx, "http://"+adminAddr+"/metrics", keysync); err != nil {
		return fmt.Errorf("keysync's admin listener: %w", err)
	}
	d.say("pid %d, webhooks on %s, metrics on http://%s/metrics, ready (log: %s)", keysync.Pid(), keysyncAddr, adminAddr, keysync.Log)
	consoleURL := "http://" + adminAddr + "/console/"
	d.say("console %s (log in with the token in %s)", consoleURL, tokenFile)

	d.step("A subscription's life (each step: Stripe acts, webhooks arrive, keysync syncs)")
	var co map[string]any
	if err := d.ctl.Post(d.ctx, "/stripe/checkout", map[string]any{"email": "ada@example.com", "name": "Ada Lovelace",
		"items": []map[string]any{{"price": pro["id"], "quantity": 1}}, "trial_days": 14}, &co); err != nil {
		return err
	}
	d.sub, d.cust = co["subscription"].(string), co["customer"].(string)
	// The customer's view, once keysync has worked the checkout's webhooks: Checkout
	// sends them to the license page (its success_url).
	if err := d.idle(ctx); err != nil {
		return fmt.Errorf("checkout: %w", err)
	}
	if _, err := d.licensePage(co["session"].(string)); err != nil {
		return err
	}
	steps := []struct {
		what   string
		act    func() error
		expect func(k sandbox.Key, s sandbox.Subscription) error
	}{
		{"checkout: Pro, 1 seat, 14-day trial", nil, d.wantValid([8]bool{true}, 1)},
		{"trial converts, first invoice paid", d.pastRenewal, d.wantValid([8]bool{true}, 1)},
		{"renewal 1", d.pastRenewal, d.wantValid([8]bool{true}, 1)},
		{"renewal 2", d.pastRenewal, d.wantValid([8]bool{true}, 1)},
		{"renewal 3", d.pastRenewal, d.wantValid([8]bool{true}, 1)},
		{"renewal 4: the card is declined", func() error {
			if err := d.ctl.Post(d.ctx, "/stripe/customers/"+d.cust+"/fail_next_payment", nil, nil); err != nil {
				return err
			}
			return d.pastRenewal()
		}, d.wantStatus("past_due", d.wantValid([8]bool{true}, 1))},
		{"the customer pays the open invoice", func() error {
			s, err := d.ctl.Subscription(d.ctx, d.sub)
			if err != nil {
				return err
			}
			return d.ctl.Post(d.ctx, "/stripe/invoices/"+s.Subscription.LatestInvoice+"/pay", nil, nil)
		}, d.wantStatus("active", d.wantValid([8]bool{true}, 1))},
		{"upgrade to Team", func() error {
			return d.ctl.Post(d.ctx, "/stripe/subscriptions/"+d.sub+"/price", map[string]any{"price": team["id"]}, nil)
		}, d.wantValid([8]bool{true, false, true}, 2)},
		{"seats 1 -> 3", func() error {
			return d.ctl.Post(d.ctx, "/stripe/subscriptions/"+d.sub+"/quantity", map[string]any{"quantity": 3}, nil)
		}, d.wantValid([8]bool{true, false, true}, 6)},
		{"cancel at period end (still valid until then)", func() error {
			return d.ctl.Post(d.ctx, "/stripe/subscriptions/"+d.sub+"/cancel_at_period_end", map[string]any{"on": true}, nil)
		}, d.wantValid([8]bool{true, false, true}, 6)},
		{"the period ends: subscription canceled", d.pastRenewal, d.wantBlocked},
	}
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  STEP\tSTRIPE\tKEY\tEXPIRES\tBLOCKED\tFEATURES\tMACHINES\tCHECK")
	for _, st := range steps {
		if st.act != nil {
			if err := st.act(); err != nil {
				return fmt.Errorf("%s: %w", st.what, err)
			}
		}
		if err := d.idle(ctx); err != nil {
			return fmt.Errorf("%s: %w", st.what, err)
		}
		k, s, err := d.state()
		if err != nil {
			return err
		}
		check := "ok"
		if err := st.expect(k, s); err != nil {
			check = "FAILED: " + err.Error()
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%v\t%s\t%d\t%s\n", st.what, s.Subscription.Status, k.Key, k.Expires.Format("2006-01-02 15:04"),
			k.Block, sandbox.FeatureList(k.Features), k.MaxNoOfMachines, check)
		if check != "ok" {
			w.Flush()
			return fmt.Errorf("%s: %s", st.what, check)
		}
	}
	w.Flush()

	d.step("Audit trail (audit_log)")
	if err := d.printAudit(ctx); err != nil {
		return err
	}

	d.step("A one-time purchase: the license page before the webhooks")
	if err := d.purchase(lifetime["id"]); err != nil {
		return fmt.Errorf("one-time purchase: %w", err)
	}

	// KEEP=1: a person looks at the console after the lifecycle; a signal ends it.
	if *keep {
		d.step("Keep running (KEEP=1)")
		d.say("the console: %s (log in with the token in %s)", consoleURL, tokenFile)
		d.say("keysync and the sandbox keep running; Ctrl-C stops them")
		<-ctx.Done()
	}

	d.step("Stop")
	if err := keysync.Stop(time.Minute); err != nil {
		return fmt.Errorf("keysync: %w (log: %s)", err, keysync.Log)
	}
	if err := sb.Stop(time.Minute); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	d.say("keysync and the sandbox stopped cleanly")
	return nil
}

// adminToken writes a random admin token to dir/admin-token (readable by this user
// only) and returns the file and the token.
func adminToken(dir string) (string, string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token, file := hex.EncodeToString(b), filepath.Join(dir, "admin-token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		return "", "", err
	}
	return file, token, nil
}

func (d *demo) step(s string)               { fmt.Fprintf(d.out, "\n== %s\n", s) }
func (d *demo) say(format string, a ...any) { fmt.Fprintf(d.out, "  "+format+"\n", a...) }
func (d *demo) wantValid(f [8]bool, machines int) func(sandbox.Key, sandbox.Subscription) error {
	return func(k sandbox.Key, s sandbox.Subscription) error {
		return sandbox.Check(k, s, 5, sandbox.Want{Features: f, Machines: machines})
	}
}

func (d *demo) wantStatus(status string, next func(sandbox.Key, sandbox.Subscription) error) func(sandbox.Key, sandbox.Subscription) error {
	return func(k sandbox.Key, s sandbox.Subscription) error {
		if s.Subscription.Status != status {
			return fmt.Errorf("subscription %s, want %s", s.Subscription.Status, status)
		}
		return next(k, s)
	}
}

func (d *demo) wantBlocked(k sandbox.Key, s sandbox.Subscription) error {
	if !k.Block || s.Subscription.Status != "canceled" {
		return fmt.Errorf("subscription %s, key blocked %v: want canceled and blocked", s.Subscription.Status, k.Block)
	}
	return nil
}

func (d *demo) state() (sandbox.Key, sandbox.Subscription, error) {
	s, err := d.ctl.Subscription(d.ctx, d.sub)
	if err != nil {
		return sandbox.Key{}, s, err
	}
	keys, err := d.ctl.Keys(d.ctx, product)
	if err != nil {
		return sandbox.Key{}, s, err
	}
	if len(keys) != 1 {
		return sandbox.Key{}, s, fmt.Errorf("the Cryptolens simulator has %d keys, want exactly 1", len(keys))
	}
	return keys[0], s, nil
}

// pastRenewal moves the test clock to two hours after the current period ends: the
// renewal invoice has been finalized and charged (or declined).
func (d *demo) pastRenewal() error {
	s, err := d.ctl.Subscription(d.ctx, d.sub)
	if err != nil {
		return err
	}
	now, err := d.ctl.Now(d.ctx)
	if err != nil {
		return err
	}
	return d.ctl.Advance(d.ctx, time.Unix(s.Subscription.CurrentPeriodEnd, 0).Sub(now)+2*time.Hour)
}

// idle waits until every webhook was acknowledged and keysync has worked every event.
func (d *demo) idle(ctx context.Context) error {
	if err := d.ctl.Flush(ctx); err != nil {
		return err
	}
	return sandbox.WaitIdle(ctx, d.db, time.Minute)
}

func (d *demo) printAudit(ctx context.Context) error {
	rows, err := d.db.Query(ctx, `SELECT id, action, outcome, params::text, cause, coalesce(cause_id, ''), coalesce(message, '')
		FROM audit_log ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	w := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  #\tACTION\tOUTCOME\tDETAILS\tCAUSE")
	for rows.Next() {
		var id int64
		var action, outcome, params, cause, causeID, msg string
		if err := rows.Scan(&id, &action, &outcome, &params, &cause, &causeID, &msg); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %d\t%s\t%s\t%s\t%s %s\n", id, action, outcome, details(action, params, msg), cause, causeID)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return w.Flush()
}

func details(action, params, msg string) string {
	var p map[string]any
	_ = json.Unmarshal([]byte(params), &p)
	date := func(k string) string {
		s, _ := p[k].(string)
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			return t.UTC().Format("2006-01-02 15:04")
		}
		return s
	}
	switch action {
	case "create_key":
		return fmt.Sprintf("period %v days, expires %s, %v machines", p["period"], date("expires"), p["machines"])
	case "extend":
		return fmt.Sprintf("+%v days: %s -> %s", p["days"], date("old_expires"), date("new_expires"))
	case "add_feature", "remove_feature":
		return fmt.Sprintf("F%v", p["feature"])
	case "machine_limit":
		return fmt.Sprintf("%v -> %v machines", p["old_machines"], p["machines"])
	case "block", "unblock":
		return fmt.Sprint(p["reason"])
	}
	if msg != "" {
		return msg
	}
	return params
}

// demoDatabase returns the URL of a fresh database on a local or throwaway server. A
// server named by DATABASE_URL is used as it is: the demo never drops a database it did
// not create.
func demoDatabase(ctx context.Context, s *localpg.Server, name string) (string, error) {
	if s.Kind == "DATABASE_URL" {
		return s.URL, nil
	}
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return "", err
	}
	u, err := url.Parse(s.URL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(DATABASE_URL)"
	}
	return u.Redacted()
}
