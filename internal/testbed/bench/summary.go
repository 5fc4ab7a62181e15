package bench

import (
	"fmt"
	"os"
	"strings"
)

// Summary gathers the headline figures of every suite of one `make bench` run.
type Summary struct {
	Ingest    []Run          `json:"ingest,omitempty"`
	Applied   *AppliedResult `json:"applied,omitempty"`
	Sweep     *SweepResult   `json:"sweep,omitempty"`
	Process   *ProcessResult `json:"process,omitempty"`
	Audit     []AuditQuery   `json:"audit,omitempty"`
	AuditRows int            `json:"audit_rows,omitempty"`
	Abuse     *AbuseResult   `json:"abuse,omitempty"`
}

// Table renders one line per figure: keysync's, its baseline from the same run, the
// ratio, and the target.
func (s *Summary) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-48s %14s %14s %8s  %s\n", "figure", "keysync", "baseline", "ratio", "target")
	line := func(name string, v, base float64, unit, target string) {
		ratio := ""
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", v/base)
		}
		fmt.Fprintf(&b, "%-48s %14s %14s %8s  %s\n", name, fmt.Sprintf("%.1f %s", v, unit), fmt.Sprintf("%.1f %s", base, unit), ratio, target)
	}
	floor := map[int]Run{}
	for _, r := range s.Ingest {
		if r.Shape == ShapeFloor {
			floor[r.Concurrency] = r
		}
	}
	for _, r := range s.Ingest {
		if r.Shape != ShapeKeysync {
			continue
		}
		f := floor[r.Concurrency]
		target := ""
		if r.Concurrency == 16 {
			target = ">= 1.0 of the floor"
		}
		line(fmt.Sprintf("ingest c=%d req/s (vs floor)", r.Concurrency), r.PerSecond, f.PerSecond, "/s", target)
		ptarget := ""
		if r.Concurrency == 16 {
			ptarget = "p99 <= 10 ms"
		}
		line(fmt.Sprintf("ingest c=%d p50 ms", r.Concurrency), r.P50ms, f.P50ms, "ms", "")
		line(fmt.Sprintf("ingest c=%d p99 ms", r.Concurrency), r.P99ms, f.P99ms, "ms", ptarget)
	}
	if a := s.Applied; a != nil {
		line(fmt.Sprintf("event-to-applied p50 at %.0f/s (vs calls)", a.Rate), a.P50ms, a.BaselineP50ms, "ms", "p50 <= 50 ms")
		line(fmt.Sprintf("event-to-applied p99 at %.0f/s (vs calls)", a.Rate), a.P99ms, a.BaselineP99ms, "ms", "")
	}
	if w := s.Sweep; w != nil {
		line(fmt.Sprintf("sweep %dk: wall time (vs listing alone)", w.Subscriptions/1000), w.Seconds, w.BaselineSeconds, "s", "")
		line(fmt.Sprintf("sweep %dk: API calls (vs N/100+K/99+5+2W/100)", w.Subscriptions/1000), float64(w.StripeCalls+w.CryptolensCalls), float64(w.Budget), "", "<= 2,100 calls")
		base := 0.0
		if p := s.Process; p != nil {
			base = p.IdleRSSMB
		}
		line(fmt.Sprintf("sweep %dk: peak RSS (vs idle serve)", w.Subscriptions/1000), w.PeakRSSMB, base, "MB", "<= 150 MB")
	}
	if p := s.Process; p != nil {
		line("start-to-ready (vs minimal service)", p.StartToReadyMs, p.BaselineStartToReadyMs, "ms", "")
		line("idle RSS (vs minimal service)", p.IdleRSSMB, p.BaselineIdleRSSMB, "MB", "")
	}
	var base AuditQuery
	for _, q := range s.Audit {
		if q.Filter == "baseline" {
			base = q
		}
	}
	for _, q := range s.Audit {
		if q.Filter != "baseline" {
			line(fmt.Sprintf("audit by %s p99, %dM rows (vs by id)", q.Filter, s.AuditRows/1_000_000), q.P99ms, base.P99ms, "ms", "< 50 ms")
		}
	}
	if a := s.Abuse; a != nil {
		for _, l := range a.Loads {
			line(fmt.Sprintf("%s: peak RSS (vs idle)", l.Load), l.PeakRSSMB, l.IdleRSSMB, "MB", "")
		}
	}
	return b.String()
}

// AppliedTable renders the event-to-applied benchmark.
func AppliedTable(r AppliedResult) string {
	return fmt.Sprintf("event-to-applied at %.0f events/s (%d sent, %d measured, %d errors): keysync p50 %.1f ms, p99 %.1f ms; "+
		"the calls alone p50 %.1f ms, p99 %.1f ms (target p50 <= 50 ms)\n", r.Rate, r.Sent, r.Measured, r.Errors, r.P50ms, r.P99ms, r.BaselineP50ms, r.BaselineP99ms)
}

// SweepTable renders the sweep benchmark.
func SweepTable(r SweepResult) string {
	return fmt.Sprintf("sweep of %d subscriptions and %d keys, no drift: %.1f s (listing alone %.1f s), %d Stripe + %d Cryptolens calls "+
		"(budget %d, target <= 2,100), peak RSS %.0f MB (target <= 150 MB), %d drifted\n",
		r.Subscriptions, r.Keys, r.Seconds, r.BaselineSeconds, r.StripeCalls, r.CryptolensCalls, r.Budget, r.PeakRSSMB, r.Drifted)
}

// ProcessTable renders the start-up benchmark.
func ProcessTable(r ProcessResult) string {
	return fmt.Sprintf("keysync serve: start-to-ready %.0f ms, idle RSS %.1f MB; minimal service: %.0f ms, %.1f MB (median of %d starts)\n",
		r.StartToReadyMs, r.IdleRSSMB, r.BaselineStartToReadyMs, r.BaselineIdleRSSMB, r.Runs)
}

// MemTotal is the machine's memory, from /proc/meminfo, for the reports' headers.
func MemTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
			return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	return "memory unknown"
}
