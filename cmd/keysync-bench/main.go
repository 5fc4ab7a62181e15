// Command keysync-bench runs keysync's benchmarks and prints each figure beside its
// baseline measured in the same run. It is what `make bench` runs.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/testbed/bench"
	"github.com/keysync/keysync/internal/testbed/chaos"
	"github.com/keysync/keysync/internal/testbed/localpg"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	if len(os.Args) > 2 && os.Args[1] == "peak-rss" {
		// Runs a command and reports its peak RSS (bench.PeakRSS), from a small process.
		stop()
		os.Exit(bench.PeakRSS(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "minimal-service" {
		// The baseline of the start-up benchmark (bench.MinimalService), run as a process.
		err := bench.MinimalService(ctx)
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "minimal-service: %v\n", err)
			os.Exit(1)
		}
		return
	}
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	duration := flag.Duration("duration", 5*time.Second, "length of each measured run")
	conc := flag.String("concurrency", "1,16,64", "comma-separated concurrency levels")
	suite := flag.String("suite", "all", "all, or one of ingest, applied, sweep, process, audit, abuse")
	keysyncBin := flag.String("keysync", "bin/keysync", "the keysync binary (applied, sweep, process, abuse)")
	sandboxBin := flag.String("sandbox", "bin/keysync-sandbox", "the keysync-sandbox binary (applied, process, abuse)")
	abuseConns := flag.Int("abuse-connections", 150, "connections each load of the abuse suite keeps busy")
	abuseFor := flag.Duration("abuse-duration", 10*time.Second, "how long each load of the abuse suite runs")
	rate := flag.Float64("rate", 200, "events per second of the applied suite")
	appliedFor := flag.Duration("applied-duration", 20*time.Second, "how long the applied suite sends events")
	sweepSubs := flag.Int("sweep-subscriptions", 100_000, "subscriptions of the sweep suite")
	dir := flag.String("dir", "bench", "where results (JSON) and process logs go")
	auditRows := flag.Int("audit-rows", 10_000_000, "audit rows to seed for the audit suite")
	rounds := flag.Int("rounds", 3, "interleaved rounds per shape; the median is reported")
	committers := flag.Int("committers", 0, "ingest transactions in flight at once (0: keysync's default)")
	shapes := flag.String("shapes", "", "comma-separated shapes to measure (default: floor,keysync,raw insert)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var levels []int
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad -concurrency %q", *conc)
		}
		levels = append(levels, n)
	}
	server, err := localpg.Find(ctx, os.Getenv)
	if err != nil {
		return err
	}
	defer server.Stop()

	fmt.Printf("machine: %d CPUs, %s; Postgres: %s server\n", runtime.NumCPU(), bench.MemTotal(), server.Kind)
	suites := []string{*suite}
	if *suite == "all" {
		suites = []string{"ingest", "applied", "sweep", "process", "audit", "abuse"}
	}
	summary := &bench.Summary{}
	for _, name := range suites {
		fmt.Printf("\n== %s\n", name)
		progress := func(s string) { fmt.Fprintln(os.Stderr, "  "+s) }
		var err error
		switch name {
		case "ingest":
			err = benchIngest(ctx, server.URL, *duration, levels, *rounds, *committers, *shapes, filepath.Join(*dir, "ingest.json"), summary)
		case "applied":
			err = withDatabase(ctx, server.URL, func(url string) error {
				r, err := bench.Applied(ctx, bench.AppliedOptions{Cluster: chaos.Options{KeysyncBin: *keysyncBin, SandboxBin: *sandboxBin,
					Dir: filepath.Join(*dir, "applied"), DatabaseURL: url}, Rate: *rate, Duration: *appliedFor, Subscriptions: 1000, Progress: progress})
				if err != nil {
					return err
				}
				summary.Applied = &r
				fmt.Print(bench.AppliedTable(r))
				return writeJSON(filepath.Join(*dir, "applied.json"), r)
			})
		case "sweep":
			err = withDatabase(ctx, server.URL, func(url string) error {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				r, err := bench.Sweep(ctx, bench.SweepOptions{KeysyncBin: *keysyncBin, PeakRSS: []string{self, "peak-rss"}, DatabaseURL: url,
					Subscriptions: *sweepSubs, Progress: progress})
				if err != nil {
					return err
				}
				summary.Sweep = &r
				fmt.Print(bench.SweepTable(r))
				return writeJSON(filepath.Join(*dir, "sweep.json"), r)
			})
		case "process":
			err = withDatabase(ctx, server.URL, func(url string) error {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				r, err := bench.Process(ctx, bench.ProcessOptions{Cluster: chaos.Options{KeysyncBin: *keysyncBin, SandboxBin: *sandboxBin,
					Dir: filepath.Join(*dir, "process"), DatabaseURL: url}, Baseline: []string{self, "minimal-service"}, Runs: 5, Progress: progress})
				if err != nil {
					return err
				}
				summary.Process = &r
				fmt.Print(bench.ProcessTable(r))
				return writeJSON(filepath.Join(*dir, "process.json"), r)
			})
		case "audit":
			qs, err2 := bench.Audit(ctx, bench.NewDatabaseOn(server.URL), *auditRows, progress)
			if err = err2; err == nil {
				summary.Audit, summary.AuditRows = qs, *auditRows
				fmt.Print(bench.AuditTable(*auditRows, qs))
				err = writeJSON(filepath.Join(*dir, "audit.json"), map[string]any{"benchmark": "audit", "rows": *auditRows, "queries": qs})
			}
		case "abuse":
			err = withDatabase(ctx, server.URL, func(url string) error {
				r, err := bench.Abuse(ctx, bench.AbuseOptions{Cluster: chaos.Options{KeysyncBin: *keysyncBin, SandboxBin: *sandboxBin,
					Dir: filepath.Join(*dir, "abuse"), DatabaseURL: url}, Connections: *abuseConns, Duration: *abuseFor, Progress: progress})
				if err != nil {
					return err
				}
				summary.Abuse = &r
				fmt.Print(bench.AbuseTable(r))
				return writeJSON(filepath.Join(*dir, "abuse.json"), r)
			})
		default:
			return fmt.Errorf("unknown suite %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if len(suites) > 1 {
		fmt.Printf("\n== summary (%d CPUs, %s): each figure beside its baseline from this run\n", runtime.NumCPU(), bench.MemTotal())
		fmt.Print(summary.Table())
		return writeJSON(filepath.Join(*dir, "summary.json"), summary)
	}
	return nil
}

// withDatabase runs fn on a fresh, migrated database and drops it after.
func withDatabase(ctx context.Context, serverURL string, fn func(url string) error) error {
	url, drop, err := bench.NewDatabaseOn(serverURL)(ctx)
	if err != nil {
		return err
	}
	defer drop()
	return fn(url)
}

func benchIngest(ctx context.Context, serverURL string, duration time.Duration, levels []int, rounds, committers int, shapes, out string, summary *bench.Summary) error {
	fmt.Printf("webhook ingest: signed invoice.paid events of %d bytes over HTTP on loopback, %s per run, median of %d interleaved rounds\n",
		len(bench.InvoicePaidEvent()), duration, rounds)
	fmt.Println("floor = verify signature + one autocommit INSERT per request; raw insert = the same INSERT without HTTP")
	runs, err := bench.Ingest(ctx, bench.IngestOptions{
		NewDatabase: bench.NewDatabaseOn(serverURL),
		Duration:    duration,
		Concurrency: levels,
		MaxConns:    20,
		Rounds:      rounds,
		BeforeRun:   checkpoint(serverURL),
		Ingester:    ingest.Config{Committers: committers},
		Shapes:      splitNonEmpty(shapes),
		Progress:    func(r bench.Run) { fmt.Fprintf(os.Stderr, "  measured %s at %d\n", r.Shape, r.Concurrency) },
	})
	if err != nil {
		return err
	}
	summary.Ingest = runs
	fmt.Println()
	fmt.Print(bench.Table(runs))
	return writeJSON(out, map[string]any{"benchmark": "ingest", "duration": duration.String(), "cpus": runtime.NumCPU(), "runs": runs})
}

func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	fmt.Printf("\nwritten to %s\n", path)
	return nil
}

// checkpoint flushes dirty buffers before a run, so no run pays for the one before.
func checkpoint(url string) func(context.Context) error {
	return func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "CHECKPOINT")
		return err
	}
}

func splitNonEmpty(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
