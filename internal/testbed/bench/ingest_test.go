package bench_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/testbed/bench"
)

// The harness itself must work: every shape completes requests without errors and the
// ratio is computed. This checks the benchmark's correctness, never its speed.
func TestIngestHarness(t *testing.T) {
	t.Parallel()
	runs, err := bench.Ingest(context.Background(), bench.IngestOptions{
		NewDatabase: bench.NewDatabaseOn(pgtest.AdminURL()),
		Duration:    150 * time.Millisecond,
		Concurrency: []int{2},
		MaxConns:    4,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 3 {
		t.Fatalf("got %d runs, want 3 (floor, keysync, raw insert)", len(runs))
	}
	for _, r := range runs {
		if r.Requests == 0 || r.Errors != 0 || r.P50ms <= 0 || r.P99ms < r.P50ms {
			t.Fatalf("%s: got %+v, want requests, no errors, p99 >= p50 > 0", r.Shape, r)
		}
	}
	if runs[1].Shape != bench.ShapeKeysync || runs[1].RatioToFloor <= 0 {
		t.Fatalf("got %+v, want keysync with a ratio to the floor", runs[1])
	}
	if table := bench.Table(runs); !strings.Contains(table, "keysync / floor") || strings.Count(table, "\n") != 4 {
		t.Fatalf("got table %q, want a header and 3 rows", table)
	}
}

func TestInvoicePaidEventIsRealistic(t *testing.T) {
	t.Parallel()
	b := bench.InvoicePaidEvent()
	var ev struct {
		ID, Type, APIVersion string `json:"-"`
		Data                 struct {
			Object struct {
				Lines struct {
					Data []struct {
						Type   string              `json:"type"`
						Period struct{ End int64 } `json:"period"`
					} `json:"data"`
				} `json:"lines"`
			} `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatal(err)
	}
	if len(b) < 3000 || len(b) > 4000 || len(ev.Data.Object.Lines.Data) != 1 || ev.Data.Object.Lines.Data[0].Type != "subscription" {
		t.Fatalf("got %d bytes and %+v, want ~3.4 KB with one subscription line", len(b), ev.Data.Object.Lines)
	}
}

// The audit benchmark's harness works (on a small log): every query finds rows.
func TestAuditHarness(t *testing.T) {
	t.Parallel()
	qs, err := bench.Audit(context.Background(), bench.NewDatabaseOn(pgtest.AdminURL()), 20_000, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 4 || qs[0].Filter != "baseline" || qs[1].Runs != 50 || qs[3].Filter != "customer" || qs[1].P99ms < qs[1].P50ms {
		t.Fatalf("got %+v", qs)
	}
	if table := bench.AuditTable(20_000, qs); !strings.Contains(table, "subscription") {
		t.Fatalf("table: %s", table)
	}
}
