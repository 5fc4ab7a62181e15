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

	"github.com/keysync/keysync/internal/bench"
	"github.com/keysync/keysync/internal/localpg"
	"github.com/keysync/keysync/internal/webhook"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
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
	out := flag.String("out", "bench/ingest.json", "where to write the results as JSON")
	suite := flag.String("suite", "ingest", "ingest or audit")
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

	if *suite == "audit" {
		qs, err := bench.Audit(ctx, bench.NewDatabaseOn(server.URL), *auditRows, func(s string) { fmt.Fprintln(os.Stderr, "  "+s) })
		if err != nil {
			return err
		}
		fmt.Print(bench.AuditTable(*auditRows, qs))
		return writeJSON(*out, map[string]any{"benchmark": "audit", "rows": *auditRows, "queries": qs})
	}
	fmt.Printf("webhook ingest: signed invoice.paid events of %d bytes over HTTP on loopback, %s per run, median of %d interleaved rounds\n",
		len(bench.InvoicePaidEvent()), *duration, *rounds)
	fmt.Printf("machine: %d CPUs, %s; Postgres: %s server\n", runtime.NumCPU(), memTotal(), server.Kind)
	fmt.Println("floor = verify signature + one autocommit INSERT per request; raw insert = the same INSERT without HTTP")
	runs, err := bench.Ingest(ctx, bench.IngestOptions{
		NewDatabase: bench.NewDatabaseOn(server.URL),
		Duration:    *duration,
		Concurrency: levels,
		MaxConns:    20,
		Rounds:      *rounds,
		BeforeRun:   checkpoint(server.URL),
		Ingester:    webhook.IngesterConfig{Committers: *committers},
		Shapes:      splitNonEmpty(*shapes),
		Progress:    func(r bench.Run) { fmt.Fprintf(os.Stderr, "  measured %s at %d\n", r.Shape, r.Concurrency) },
	})
	if err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(bench.Table(runs))
	return writeJSON(*out, map[string]any{"benchmark": "ingest", "duration": duration.String(), "cpus": runtime.NumCPU(), "runs": runs})
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

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	var kb int
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			_, _ = fmt.Sscanf(strings.TrimPrefix(line, "MemTotal:"), "%d", &kb)
		}
	}
	return fmt.Sprintf("%.0f GiB", float64(kb)/1024/1024)
}
