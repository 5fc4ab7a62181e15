package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/testbed/chaos"
	"github.com/keysync/keysync/internal/testbed/sandbox"
)

// AbuseOptions configures the unauthenticated-load benchmark.
type AbuseOptions struct {
	// Cluster starts the sandbox (no keysync replica), names the database and the
	// keysync binary.
	Cluster chaos.Options
	// Connections is how many connections each load keeps busy at once (150: the load
	// the hardening issue measured).
	Connections int
	// Duration is how long each load runs.
	Duration time.Duration
	Progress func(string)
}

// AbuseLoad is keysync serve's memory under one load: its RSS once idle, just before the
// load, and its peak RSS (VmHWM) at the end of it, and what the load's requests were
// answered (status code, or "closed" when the server closed the connection unanswered).
type AbuseLoad struct {
	Load      string         `json:"load"`
	IdleRSSMB float64        `json:"idle_rss_mb"`
	PeakRSSMB float64        `json:"peak_rss_mb"`
	Answers   map[string]int `json:"answers"`
}

// AbuseResult is the abuse benchmark: one AbuseLoad per load, each on a fresh process.
type AbuseResult struct {
	Connections int         `json:"connections"`
	Seconds     float64     `json:"seconds"`
	Loads       []AbuseLoad `json:"loads"`
}

// abuseLoads are the loads, as the hardening issue measured them: bodies of 1 MiB to
// the webhook endpoint, and 1 MB of a header that never ends.
var abuseLoads = []struct {
	name  string
	flood func(ctx context.Context, addr string, conns int, d time.Duration) map[string]int
}{
	{"1 MiB bodies", func(ctx context.Context, addr string, conns int, d time.Duration) map[string]int {
		return FloodBodies(ctx, addr, conns, d, 0)
	}},
	{"1 MiB bodies over 2 s", func(ctx context.Context, addr string, conns int, d time.Duration) map[string]int {
		return FloodBodies(ctx, addr, conns, d, 2*time.Second)
	}},
	{"1 MB unfinished headers", FloodHeaders},
}

// Abuse starts keysync serve against the sandbox once per load, waits until it is idle,
// reads its RSS, runs the load, and reads its peak RSS.
func Abuse(ctx context.Context, opts AbuseOptions) (AbuseResult, error) {
	res := AbuseResult{Connections: opts.Connections, Seconds: opts.Duration.Seconds()}
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
	for i, load := range abuseLoads {
		ports, err := sandbox.FreePorts(1)
		if err != nil {
			return res, err
		}
		addr := "127.0.0.1:" + ports[0]
		started := time.Now()
		p, err := sandbox.Start(opts.Cluster.KeysyncBin, filepath.Join(opts.Cluster.Dir, fmt.Sprintf("keysync-%d.log", i)),
			append(c.Env(), "KEYSYNC_LISTEN="+addr, "LOG_LEVEL=warn"), "serve")
		if err != nil {
			return res, err
		}
		r := AbuseLoad{Load: fmt.Sprintf("%d × %s", opts.Connections, load.name)}
		err = sandbox.WaitHTTP(ctx, "http://"+addr+"/readyz", p)
		if err == nil {
			err = waitStartupJobs(ctx, db, started)
		}
		if err == nil {
			r.IdleRSSMB, err = procStatusMB(p.Pid(), "VmRSS")
		}
		if err == nil {
			r.Answers = load.flood(ctx, addr, opts.Connections, opts.Duration)
			r.PeakRSSMB, err = procStatusMB(p.Pid(), "VmHWM")
		}
		if stopErr := p.Stop(30 * time.Second); err == nil && stopErr != nil {
			err = fmt.Errorf("keysync did not stop cleanly after %s: %v", load.name, stopErr)
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", load.name, err)
		}
		res.Loads = append(res.Loads, r)
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf("%s: idle RSS %.1f MB, peak %.1f MB; answers %v", r.Load, r.IdleRSSMB, r.PeakRSSMB, r.Answers))
		}
	}
	return res, nil
}

// FloodBodies keeps conns connections posting 1 MiB bodies to addr's webhook endpoint
// for d, each with a well-formed, fresh Stripe-Signature header whose signature is
// forged: the most an attacker without the secret can send. Each body is sent over
// pace (0: as fast as the server reads), in 16 pieces: a slow sender keeps its body
// half-read, and every connection's at once. It returns how the requests were answered.
func FloodBodies(ctx context.Context, addr string, conns int, d, pace time.Duration) map[string]int {
	const pieces = 16
	body := []byte(strings.Repeat("x", 1<<20))
	return flood(ctx, addr, conns, d, func(conn net.Conn) string {
		fmt.Fprintf(conn, "POST /webhooks/stripe HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Stripe-Signature: t=%d,v1=%s\r\nContent-Length: %d\r\n\r\n", addr, time.Now().Unix(), strings.Repeat("0", 64), len(body))
		// The server may answer, and close, before the body is in: the write then
		// fails, and the answer is read all the same.
		piece := len(body) / pieces
		for off := 0; off < len(body); off += piece {
			if _, err := conn.Write(body[off : off+piece]); err != nil {
				break
			}
			if pace > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(pace / pieces):
				}
			}
		}
		return answer(conn)
	})
}

// FloodHeaders keeps conns connections sending 1 MB of a request header that never
// ends to addr, each held until the server answers or closes it, for d.
func FloodHeaders(ctx context.Context, addr string, conns int, d time.Duration) map[string]int {
	pad := []byte(strings.Repeat("a", 64<<10))
	return flood(ctx, addr, conns, d, func(conn net.Conn) string {
		fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: %s\r\nX-Pad: ", addr)
		for sent := 0; sent < 1_000_000; sent += len(pad) {
			if _, err := conn.Write(pad[:min(len(pad), 1_000_000-sent)]); err != nil {
				break
			}
		}
		return answer(conn)
	})
}

// flood runs conns workers for d, each opening a connection, doing one exchange on it
// and closing it, again and again; it tallies what each exchange returned.
func flood(ctx context.Context, addr string, conns int, d time.Duration, exchange func(net.Conn) string) map[string]int {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var mu sync.Mutex
	tally := map[string]int{}
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			var dialer net.Dialer
			// The deadline, not only ctx: a dial past it fails before ctx says it ended.
			over := func() bool { return ctx.Err() != nil || !time.Now().Before(deadline) }
			for !over() {
				outcome := "refused"
				conn, err := dialer.DialContext(ctx, "tcp", addr)
				switch {
				case err != nil && over():
					return // the load is over, not refused
				case err == nil:
					_ = conn.SetDeadline(deadline)
					outcome = exchange(conn)
					conn.Close()
				}
				if over() && outcome == "closed" {
					outcome = "held to the end"
				}
				mu.Lock()
				tally[outcome]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return tally
}

// answer reads the server's answer on conn: its status code, or "closed".
func answer(conn net.Conn) string {
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "closed"
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return strconv.Itoa(resp.StatusCode)
}

// AbuseTable renders the abuse benchmark.
func AbuseTable(r AbuseResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "keysync serve under unauthenticated load, %d connections, %.0f s per load, a fresh process each:\n", r.Connections, r.Seconds)
	fmt.Fprintf(&b, "%-32s %12s %12s %7s  %s\n", "load", "idle RSS", "peak RSS", "ratio", "answers")
	for _, l := range r.Loads {
		keys := make([]string, 0, len(l.Answers))
		for k := range l.Answers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var answers []string
		for _, k := range keys {
			answers = append(answers, fmt.Sprintf("%s: %d", k, l.Answers[k]))
		}
		fmt.Fprintf(&b, "%-32s %9.1f MB %9.1f MB %7.2f  %s\n", l.Load, l.IdleRSSMB, l.PeakRSSMB, l.PeakRSSMB/l.IdleRSSMB, strings.Join(answers, ", "))
	}
	return b.String()
}
