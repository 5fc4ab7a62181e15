package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/postgres"
)

// AuditQuery is one kind of audit query, measured.
type AuditQuery struct {
	Filter string  `json:"filter"`
	Runs   int     `json:"runs"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
	MaxMS  float64 `json:"max_ms"`
}

// Audit seeds rows audit rows (about 50 a subscription and key, 67 a customer, over a
// year) and measures keysync's audit queries by subscription, key and customer,
// as `keysync audit` runs them: 50 rows, newest first, beside a baseline: one row by
// primary key from the same table. progress is told of the seeding.
func Audit(ctx context.Context, newDB func(context.Context) (string, func(), error), rows int, progress func(string)) ([]AuditQuery, error) {
	url, drop, err := newDB(ctx)
	if err != nil {
		return nil, err
	}
	defer drop()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	// About 50 rows a subscription and key, 67 a customer: 200,000 subscriptions for 10M rows.
	subs, custs := max(rows/50, 1), max(rows/67, 1)
	const chunk = 1_000_000
	for done := 0; done < rows; done += chunk {
		n := min(chunk, rows-done)
		_, err := pool.Exec(ctx, `INSERT INTO audit_log (at, subscription_id, customer_id, product_id, license_key, action, outcome, cause, cause_id, params)
			SELECT now() - make_interval(secs => (g % 31536000)), 'sub_' || (g % $3), 'cus_' || (g % $4), 1001, 'KEY-' || (g % $3),
			       (ARRAY['extend', 'extend', 'extend', 'create_key', 'add_feature', 'block'])[1 + g % 6], 'applied', 'webhook', 'evt_' || g,
			       jsonb_build_object('days', 31)
			FROM generate_series($1::bigint, $2::bigint) g`, done, done+n-1, subs, custs)
		if err != nil {
			return nil, fmt.Errorf("seed: %w", err)
		}
		if progress != nil {
			progress(fmt.Sprintf("seeded %d of %d audit rows", done+n, rows))
		}
	}
	if _, err := pool.Exec(ctx, "ANALYZE audit_log"); err != nil {
		return nil, err
	}
	store := postgres.NewStore(pool)
	rng := rand.New(rand.NewPCG(1, 2))
	var out []AuditQuery
	for _, kind := range []string{"baseline", "subscription", "key", "customer"} {
		var took []time.Duration
		for range 50 {
			if kind == "baseline" {
				// The baseline: one row by primary key from the same table and pool.
				start := time.Now()
				var id int64
				if err := pool.QueryRow(ctx, "SELECT id FROM audit_log WHERE id = $1", 1+rng.IntN(rows)).Scan(&id); err != nil {
					return nil, err
				}
				took = append(took, time.Since(start))
				continue
			}
			f := postgres.AuditFilter{Limit: 50}
			switch kind {
			case "subscription":
				f.Subscription = fmt.Sprintf("sub_%d", rng.IntN(subs))
			case "key":
				f.LicenseKey = fmt.Sprintf("KEY-%d", rng.IntN(subs))
			default:
				f.Customer = fmt.Sprintf("cus_%d", rng.IntN(custs))
			}
			start := time.Now()
			got, err := store.QueryAudit(ctx, f)
			if err != nil {
				return nil, err
			}
			if len(got) == 0 {
				return nil, fmt.Errorf("audit query by %s found nothing", kind)
			}
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		out = append(out, AuditQuery{Filter: kind, Runs: len(took), P50ms: ms(took[len(took)/2]), P99ms: ms(took[len(took)*99/100]), MaxMS: ms(took[len(took)-1])})
	}
	return out, nil
}

// AuditTable renders the audit benchmark.
func AuditTable(rows int, qs []AuditQuery) string {
	var b strings.Builder
	fmt.Fprintf(&b, "audit queries over %d rows (50 rows, newest first; target < 50 ms):\n", rows)
	fmt.Fprintf(&b, "%-13s %6s %8s %8s %8s\n", "filter", "runs", "p50 ms", "p99 ms", "max ms")
	for _, q := range qs {
		fmt.Fprintf(&b, "%-13s %6d %8.2f %8.2f %8.2f\n", q.Filter, q.Runs, q.P50ms, q.P99ms, q.MaxMS)
	}
	return b.String()
}
