// Command keysync-demo runs the keysync binary against local Postgres and shows what it
// does, end to end. It is what `make demo` runs.
//
// Today it plays Stripe's side of webhook delivery (signed events, a redelivery, a
// rotated secret, a forged signature, an unhandled type, a wrong API version) and
// prints what keysync stored and processed. When the sandbox and the sync engine land,
// it plays a whole subscription lifecycle against them instead.
package main

import (
	"bytes"
	"context"
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
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/localpg"
)

const (
	secretOld = "whsec_demo_old_0123456789abcdef"
	secretNew = "whsec_demo_new_0123456789abcdef"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("keysync-demo", flag.ContinueOnError)
	binary := fs.String("keysync", "bin/keysync", "the keysync binary to run")
	workdir := fs.String("dir", ".demo", "where the demo writes keysync's log")
	database := fs.String("database", "keysync_demo", "database the demo creates (on a local or throwaway server)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := func(format string, a ...any) { fmt.Fprintf(out, format, a...) }
	step := func(s string) { p("\n== %s\n", s) }
	if _, err := os.Stat(*binary); err != nil {
		return fmt.Errorf("%s not found: run `make build` first (make demo does)", *binary)
	}
	if err := os.MkdirAll(*workdir, 0o755); err != nil {
		return err
	}

	step("Postgres")
	server, err := localpg.Find(ctx, os.Getenv)
	if err != nil {
		return err
	}
	defer server.Stop()
	dbURL, err := demoDatabase(ctx, server, *database)
	if err != nil {
		return err
	}
	p("  using the %s server: %s\n", server.Kind, redact(dbURL))

	step("keysync serve")
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	logPath := filepath.Join(*workdir, "keysync.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(*binary, "serve")
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+dbURL,
		"KEYSYNC_LISTEN="+addr,
		"STRIPE_WEBHOOK_SECRETS="+secretNew+","+secretOld,
		"LOG_FORMAT=json",
		"LOG_LEVEL=info",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()
	base := "http://" + addr
	if err := waitReady(ctx, base, exited); err != nil {
		return fmt.Errorf("%w (log: %s)", err, logPath)
	}
	p("  pid %d, listening on %s, ready (log: %s)\n", cmd.Process.Pid, addr, logPath)

	step("Stripe delivers webhooks")
	run := time.Now().Format("150405")
	id := func(n string) string { return "evt_demo_" + run + "_" + n }
	deliveries := []struct {
		what    string
		body    []byte
		secret  string
		want    int
		wantTxt string
	}{
		{"subscription created", eventBody(id("1"), "customer.subscription.created", "2023-10-16"), secretNew, 200, "stored"},
		{"first invoice paid", eventBody(id("2"), "invoice.paid", "2023-10-16"), secretNew, 200, "stored"},
		{"same invoice.paid redelivered", eventBody(id("2"), "invoice.paid", "2023-10-16"), secretNew, 200, "duplicate"},
		{"signed with the old (rotating) secret", eventBody(id("3"), "customer.subscription.updated", "2023-10-16"), secretOld, 200, "stored"},
		{"event type keysync does not act on", eventBody(id("4"), "customer.created", "2023-10-16"), secretNew, 200, "stored"},
		{"forged: signed with a wrong secret", eventBody(id("5"), "invoice.paid", "2023-10-16"), "whsec_attacker", 400, "signature"},
		{"endpoint on the wrong API version", eventBody(id("6"), "invoice.paid", "2020-08-27"), secretNew, 400, "api_version"},
	}
	for _, d := range deliveries {
		code, resp, err := deliver(ctx, base, d.body, d.secret)
		if err != nil {
			return err
		}
		verdict := "ok"
		if code != d.want || !strings.Contains(resp+stored(code), d.wantTxt) {
			verdict = "UNEXPECTED"
		}
		p("  %-40s -> %d %s  [%s]\n", d.what, code, short(resp), verdict)
		if verdict != "ok" {
			return fmt.Errorf("%s: got %d %s, want %d", d.what, code, resp, d.want)
		}
	}

	step("keysync processes the stored events (River jobs)")
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := waitProcessed(ctx, conn, "evt_demo_"+run+"_%"); err != nil {
		return err
	}
	if err := printEvents(ctx, out, conn, "evt_demo_"+run+"_%"); err != nil {
		return err
	}

	step("keysync stops on SIGTERM")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			return fmt.Errorf("keysync exited with %v (log: %s)", err, logPath)
		}
	case <-time.After(60 * time.Second):
		return errors.New("keysync did not stop within 60s")
	}
	p("  stopped cleanly (exit 0)\n")
	p("\nThe sync engine (license keys from these events) and the Stripe/Cryptolens sandbox come with later issues.\n")
	return nil
}

func stored(code int) string {
	if code == 200 {
		return "stored"
	}
	return ""
}

func short(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 90 {
		return s[:87] + "..."
	}
	return s
}

// demoDatabase returns the URL of a fresh keysync_demo database on a local or throwaway
// server. A server named by DATABASE_URL is used as it is: the demo never drops a
// database it did not create.
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

func eventBody(id, typ, apiVersion string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"object":"event","api_version":%q,"created":%d,"livemode":false,`+
		`"pending_webhooks":1,"type":%q,"data":{"object":{"id":"sub_demo","object":"subscription"}}}`,
		id, apiVersion, time.Now().Unix(), typ)
}

func deliver(ctx context.Context, base string, body []byte, secret string) (int, string, error) {
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/webhooks/stripe", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Stripe-Signature", sig.Header)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func waitReady(ctx context.Context, base string, exited <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("keysync exited during start-up: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("keysync was not ready within 60s")
}

func waitProcessed(ctx context.Context, conn *pgx.Conn, pattern string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var pending int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE id LIKE $1 AND status = 'pending'`, pattern).Scan(&pending); err != nil {
			return err
		}
		if pending == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("events still pending after 60s")
}

func printEvents(ctx context.Context, out io.Writer, conn *pgx.Conn, pattern string) error {
	rows, err := conn.Query(ctx, `
		SELECT e.id, e.type, e.status, e.source, e.attempts,
		       (SELECT count(*) FROM river_job j WHERE j.args->>'event_id' = e.id) AS jobs,
		       to_char(e.received_at, 'HH24:MI:SS.MS'), coalesce(to_char(e.processed_at, 'HH24:MI:SS.MS'), '-')
		FROM stripe_events e WHERE e.id LIKE $1 ORDER BY e.received_at, e.id`, pattern)
	if err != nil {
		return err
	}
	defer rows.Close()
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  EVENT\tTYPE\tSTATUS\tSOURCE\tATTEMPTS\tJOBS\tRECEIVED\tPROCESSED")
	for rows.Next() {
		var id, typ, status, source, received, processed string
		var attempts, jobs int
		if err := rows.Scan(&id, &typ, &status, &source, &attempts, &jobs, &received, &processed); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", id, typ, status, source, attempts, jobs, received, processed)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return w.Flush()
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(DATABASE_URL)"
	}
	return u.Redacted()
}
