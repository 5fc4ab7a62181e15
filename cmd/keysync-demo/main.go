// Command keysync-demo runs keysync against the sandbox (the Stripe and Cryptolens
// simulators) on local Postgres, plays a subscription's life through it, checks the
// license key after every step, and prints the audit trail. It is what `make demo` runs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/localpg"
	"github.com/keysync/keysync/internal/sandbox"
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
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("keysync-demo", flag.ContinueOnError)
	keysyncBin := fs.String("keysync", "bin/keysync", "the keysync binary")
	sandboxBin := fs.String("sandbox", "bin/keysync-sandbox", "the keysync-sandbox binary")
	workdir := fs.String("dir", ".demo", "where the demo writes logs and the plans file")
	database := fs.String("database", "keysync_demo", "database the demo creates (on a local or throwaway server)")
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
	d := &demo{ctx: ctx, out: out}
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
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	keysyncAddr := "127.0.0.1:" + ports[3]
	envFile := filepath.Join(*workdir, "sandbox.env")
	sb, err := start(*sandboxBin, filepath.Join(*workdir, "sandbox.log"), nil,
		"-stripe-addr", "127.0.0.1:"+ports[0], "-cryptolens-addr", "127.0.0.1:"+ports[1], "-control-addr", "127.0.0.1:"+ports[2],
		"-cryptolens-product", fmt.Sprint(product), "-webhook-url", "http://"+keysyncAddr+"/webhooks/stripe", "-env-file", envFile)
	if err != nil {
		return err
	}
	defer sb.stop()
	d.ctl = sandbox.New("http://127.0.0.1:" + ports[2])
	if err := waitHTTP(ctx, d.ctl.URL+"/stripe/now", sb.exited); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	var prod, pro, team map[string]string
	if err := d.ctl.Post(d.ctx, "/stripe/products", map[string]any{"name": "Acme App", "metadata": map[string]string{"skm_product_id": fmt.Sprint(product)}}, &prod); err != nil {
		return err
	}
	if err := d.ctl.Post(d.ctx, "/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 2900, "nickname": "Pro"}, &pro); err != nil {
		return err
	}
	if err := d.ctl.Post(d.ctx, "/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 9900, "nickname": "Team"}, &team); err != nil {
		return err
	}
	plans := filepath.Join(*workdir, "plans.yaml")
	plansYAML := fmt.Sprintf("plans:\n  - price: %s   # Pro\n    features: [1]\n    machines_per_seat: 1\n  - price: %s   # Team\n    features: [1, 3]\n    machines_per_seat: 2\n", pro["id"], team["id"])
	if err := os.WriteFile(plans, []byte(plansYAML), 0o644); err != nil {
		return err
	}
	d.say("control API %s; prices Pro %s (F1, 1 machine a seat) and Team %s (F1+F3, 2 a seat) in %s", d.ctl.URL, pro["id"], team["id"], plans)

	d.step("keysync serve")
	env, err := readEnv(envFile)
	if err != nil {
		return err
	}
	env = append(env, "DATABASE_URL="+dbURL, "KEYSYNC_LISTEN="+keysyncAddr, "KEYSYNC_PLANS_FILE="+plans, "LOG_FORMAT=json", "LOG_LEVEL=info")
	keysync, err := start(*keysyncBin, filepath.Join(*workdir, "keysync.log"), env, "serve")
	if err != nil {
		return err
	}
	defer keysync.stop()
	if err := waitHTTP(ctx, "http://"+keysyncAddr+"/readyz", keysync.exited); err != nil {
		return fmt.Errorf("keysync: %w (log: %s)", err, keysync.log)
	}
	d.say("pid %d on %s, ready (log: %s)", keysync.cmd.Process.Pid, keysyncAddr, keysync.log)

	d.step("A subscription's life (each step: Stripe acts, webhooks arrive, keysync syncs)")
	var co map[string]any
	if err := d.ctl.Post(d.ctx, "/stripe/checkout", map[string]any{"email": "ada@example.com", "name": "Ada Lovelace",
		"items": []map[string]any{{"price": pro["id"], "quantity": 1}}, "trial_days": 14}, &co); err != nil {
		return err
	}
	d.sub, d.cust = co["subscription"].(string), co["customer"].(string)
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

	d.step("Stop")
	if err := keysync.stop(); err != nil {
		return fmt.Errorf("keysync: %w (log: %s)", err, keysync.log)
	}
	if err := sb.stop(); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	d.say("keysync and the sandbox stopped cleanly")
	return nil
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
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var pending int
		err := d.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM stripe_events WHERE status = 'pending')
			+ (SELECT count(*) FROM river_job WHERE state IN ('available', 'running', 'retryable', 'scheduled'))`).Scan(&pending)
		if err != nil {
			return err
		}
		if pending == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("keysync did not become idle within 60s")
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

type proc struct {
	cmd    *exec.Cmd
	log    string
	exited chan error
	done   bool
	err    error
}

func start(bin, logPath string, env []string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: logPath, exited: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.exited <- err
	}()
	return p, nil
}

// stop sends SIGTERM and waits; it kills after 60 seconds. It is safe to call twice.
func (p *proc) stop() error {
	if p.done {
		return p.err
	}
	p.done = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case p.err = <-p.exited:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		p.err = errors.New("did not stop within 60s; killed")
	}
	return p.err
}

func waitHTTP(ctx context.Context, url string, exited <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited during start-up: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("not ready within 60s")
}

func readEnv(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

func freePorts(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	}
	return out, nil
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
