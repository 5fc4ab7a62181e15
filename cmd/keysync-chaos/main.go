// Command keysync-chaos runs the chaos scenarios (internal/testbed/chaos) against real
// processes: keysync replicas and the sandbox, built by `make build`, on a throwaway
// PostgreSQL cluster it may crash and restart. It prints a table of what each scenario
// sent, processed and found, writes it as JSON, and exits 1 if any scenario lost an
// event, left a key wrong, created a key twice or extended one beyond target. It is
// what `make chaos` runs.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/testbed/bench"
	"github.com/keysync/keysync/internal/testbed/chaos"
	"github.com/keysync/keysync/internal/testbed/localpg"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("keysync-chaos", flag.ContinueOnError)
	keysyncBin := fs.String("keysync", "bin/keysync", "the keysync binary")
	sandboxBin := fs.String("sandbox", "bin/keysync-sandbox", "the keysync-sandbox binary")
	dir := fs.String("dir", ".chaos", "where the processes' logs go (one folder a scenario)")
	only := fs.String("scenario", "", "comma-separated scenario names (default: all)")
	seed := fs.Uint64("seed", 1, "seed for the sandbox's ids, faults and delivery order")
	jsonOut := fs.String("out", "bench/chaos.json", "write the reports here as JSON (empty: do not)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, b := range []string{*keysyncBin, *sandboxBin} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s not found: run `make build` first (make chaos does)", b)
		}
	}
	var scenarios []chaos.Scenario
	for _, sc := range chaos.Scenarios() {
		if *only == "" || strings.Contains(","+*only+",", ","+sc.Name+",") {
			scenarios = append(scenarios, sc)
		}
	}
	if len(scenarios) == 0 {
		return fmt.Errorf("no scenario named %q", *only)
	}

	fmt.Fprintf(out, "keysync chaos: %d scenarios on %s, %d CPUs, %s\n", len(scenarios), runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), bench.MemTotal())
	fmt.Fprintln(out, "starting a throwaway PostgreSQL cluster (the postgres-restart scenario crashes it)")
	pg, err := localpg.StartThrowaway(ctx)
	if err != nil {
		return fmt.Errorf("throwaway PostgreSQL cluster: %w", err)
	}
	defer pg.Stop()
	newDatabase := func(ctx context.Context, name string) (string, error) {
		conn, err := pgx.Connect(ctx, pg.URL)
		if err != nil {
			return "", err
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return "", err
		}
		u, err := url.Parse(pg.URL)
		if err != nil {
			return "", err
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	start := time.Now()
	reports, err := chaos.Run(ctx, chaos.Options{KeysyncBin: *keysyncBin, SandboxBin: *sandboxBin, Dir: *dir, Postgres: pg, Seed: *seed, Progress: out},
		scenarios, newDatabase)
	if err != nil {
		return err
	}
	printReports(out, reports)
	fmt.Fprintf(out, "\n%d scenarios in %s; logs under %s\n", len(reports), time.Since(start).Round(time.Second), *dir)
	if *jsonOut != "" {
		if err := os.MkdirAll(filepath.Dir(*jsonOut), 0o755); err != nil {
			return err
		}
		b, _ := json.MarshalIndent(reports, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(out, "reports written to %s\n", *jsonOut)
	}
	failed := 0
	for _, r := range reports {
		if !r.OK() {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d scenarios failed", failed, len(reports))
	}
	return nil
}

func printReports(out io.Writer, reports []chaos.Report) {
	fmt.Fprintln(out)
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tevents sent\tprocessed\tfailed\tdeliveries\trefused\tkeys checked\tkeys wrong\tduplicate CreateKeys\tbeyond target+1d\ttook\tresult\t")
	for _, r := range reports {
		result := "ok"
		if !r.OK() {
			result = "FAILED"
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", r.Scenario, r.EventsSent, r.EventsProcessed, r.EventsFailed,
			r.Deliveries, r.Refused, r.KeysChecked, r.KeysWrong, r.DuplicateCreates, r.BeyondTarget, r.Took.Round(time.Second), result)
	}
	w.Flush()
	for _, r := range reports {
		fmt.Fprintf(out, "\n%s:\n", r.Scenario)
		for _, n := range r.Notes {
			fmt.Fprintf(out, "  - %s\n", n)
		}
		for _, p := range r.Problems {
			fmt.Fprintf(out, "  ! %s\n", p)
		}
	}
}
