package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/testbed/chaos"
	"github.com/keysync/keysync/internal/testbed/sandbox"
)

// ProcessOptions configures the start-up and idle-memory benchmark.
type ProcessOptions struct {
	// Cluster starts the sandbox (no keysync replica) and names the database.
	Cluster chaos.Options
	// Baseline is the command of the minimal service measured beside keysync: it opens
	// a pool on DATABASE_URL and answers GET /readyz on KEYSYNC_LISTEN after a ping.
	Baseline []string
	// Runs is how many starts are measured (the median is reported).
	Runs     int
	Progress func(string)
}

// ProcessResult is keysync serve's start-to-ready time (exec to the first 200 from
// /readyz) and its idle RSS (once its start-up jobs are done), beside the minimal
// service's.
type ProcessResult struct {
	StartToReadyMs         float64 `json:"start_to_ready_ms"`
	IdleRSSMB              float64 `json:"idle_rss_mb"`
	BaselineStartToReadyMs float64 `json:"baseline_start_to_ready_ms"`
	BaselineIdleRSSMB      float64 `json:"baseline_idle_rss_mb"`
	Runs                   int     `json:"runs"`
}

// Process measures keysync serve's start-up and idle memory against the sandbox.
func Process(ctx context.Context, opts ProcessOptions) (ProcessResult, error) {
	res := ProcessResult{Runs: opts.Runs}
	c, err := chaos.NewCluster(ctx, opts.Cluster, 0)
	if err != nil {
		return res, err
	}
	defer c.Close()
	db, err := pgxpool.New(ctx, opts.Cluster.DatabaseURL)
	if err != nil {
		return res, err
	}
	defer db.Close()
	measure := func(name string, bin string, args []string, idle func(since time.Time) error) (ms, rss float64, err error) {
		var starts, rsss []float64
		for i := range opts.Runs {
			ports, err := sandbox.FreePorts(1)
			if err != nil {
				return 0, 0, err
			}
			addr := "127.0.0.1:" + ports[0]
			t0 := time.Now()
			p, err := sandbox.Start(bin, filepath.Join(opts.Cluster.Dir, fmt.Sprintf("%s-%d.log", name, i)), append(c.Env(), "KEYSYNC_LISTEN="+addr, "LOG_LEVEL=warn"), args...)
			if err != nil {
				return 0, 0, err
			}
			err = sandbox.WaitHTTP(ctx, "http://"+addr+"/readyz", p)
			took := time.Since(t0)
			if err == nil && idle != nil {
				err = idle(t0)
			}
			var r float64
			if err == nil {
				r, err = procStatusMB(p.Pid(), "VmRSS")
			}
			if stopErr := p.Stop(30 * time.Second); err == nil && stopErr != nil {
				err = fmt.Errorf("%s did not stop cleanly: %v", name, stopErr)
			}
			if err != nil {
				return 0, 0, err
			}
			starts, rsss = append(starts, float64(took.Microseconds())/1000), append(rsss, r)
		}
		return percentile(starts, 0.5), percentile(rsss, 0.5), nil
	}
	idle := func(since time.Time) error { return waitStartupJobs(ctx, db, since) }
	if res.StartToReadyMs, res.IdleRSSMB, err = measure("keysync", opts.Cluster.KeysyncBin, []string{"serve"}, idle); err != nil {
		return res, err
	}
	if opts.Progress != nil {
		opts.Progress(fmt.Sprintf("keysync serve: ready in %.0f ms, idle RSS %.1f MB", res.StartToReadyMs, res.IdleRSSMB))
	}
	if res.BaselineStartToReadyMs, res.BaselineIdleRSSMB, err = measure("minimal", opts.Baseline[0], opts.Baseline[1:], nil); err != nil {
		return res, err
	}
	if opts.Progress != nil {
		opts.Progress(fmt.Sprintf("minimal service: ready in %.0f ms, RSS %.1f MB", res.BaselineStartToReadyMs, res.BaselineIdleRSSMB))
	}
	return res, nil
}

// waitStartupJobs returns once the jobs keysync queues at start (catch-up, prune), those
// created since its start, are done: keysync is idle then. Each start queues its own, so
// the jobs of an earlier process on the same database do not count.
func waitStartupJobs(ctx context.Context, db *pgxpool.Pool, since time.Time) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var open, done int
		if err := db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state NOT IN ('completed', 'discarded', 'cancelled')),
			count(*) FILTER (WHERE state = 'completed') FROM river_job WHERE kind IN ('catch_up', 'prune_events') AND created_at >= $1`,
			since).Scan(&open, &done); err != nil {
			return err
		}
		if open == 0 && done > 0 {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("keysync's start-up jobs did not finish within a minute")
}

// procStatusMB reads a size field of a process's /proc status (VmRSS, the resident set
// size; VmHWM, its peak) in MB.
func procStatusMB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", field, pid)
}

// MinimalService is the baseline process of the start-up benchmark: the least a
// service on this stack does before it is ready (open a pool on DATABASE_URL, ping it,
// listen on KEYSYNC_LISTEN, answer /readyz). It returns when ctx ends.
func MinimalService(ctx context.Context) error {
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := pool.Ping(r.Context()); err != nil {
			http.Error(w, "database unreachable", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	srv := &http.Server{Addr: os.Getenv("KEYSYNC_LISTEN"), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}
