// Package bench measures keysync against baselines taken in the same run: these
// machines are noisy, so a figure means something only beside its baseline.
package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	wh "github.com/keysync/keysync/internal/webhook"
)

const benchSecret = "whsec_bench_0123456789abcdef"

// IngestOptions configures the ingest benchmark.
type IngestOptions struct {
	// NewDatabase returns the URL of a fresh, migrated database and a function that
	// drops it. Every run gets its own, so no shape works on a bigger table.
	NewDatabase func(ctx context.Context) (string, func(), error)
	Duration    time.Duration
	Concurrency []int
	// MaxConns is the pool size of keysync and of the floor (keysync's default).
	MaxConns int32
	// Ingester tunes keysync's group commit (zero: keysync's defaults).
	Ingester ingest.Config
	// Rounds is how many times each shape is measured, interleaved (floor, keysync,
	// raw, floor, keysync, ...) so that drift on the machine hits all shapes alike; the
	// median round is reported.
	Rounds int
	// BeforeRun, if set, runs before each measurement (a CHECKPOINT, so no run pays
	// for the previous one's dirty buffers).
	BeforeRun func(ctx context.Context) error
	// Shapes limits the shapes measured (empty: all three).
	Shapes []string
	// Progress, if set, is told about each run as it finishes.
	Progress func(Run)
}

// Run is one shape measured at one concurrency.
type Run struct {
	Shape       string  `json:"shape"`
	Concurrency int     `json:"concurrency"`
	Requests    int     `json:"requests"`
	Errors      int     `json:"errors"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"per_second"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	// Rounds is how many runs the median was taken from.
	Rounds int `json:"rounds"`
	// RatioToFloor is PerSecond divided by the floor's at the same concurrency (keysync only).
	RatioToFloor float64 `json:"ratio_to_floor,omitempty"`
}

// The shapes measured.
const (
	ShapeFloor   = "floor"
	ShapeKeysync = "keysync"
	ShapeRaw     = "raw insert"
)

// Ingest measures, at each concurrency: the floor (a minimal handler that verifies the
// signature and stores the payload with one autocommit INSERT per request), keysync's
// real handler (verify, group-commit the event and its River job), and raw inserts of
// the same payload without HTTP.
func Ingest(ctx context.Context, opts IngestOptions) ([]Run, error) {
	shapes := opts.Shapes
	if len(shapes) == 0 {
		shapes = []string{ShapeFloor, ShapeKeysync, ShapeRaw}
	}
	rounds := max(opts.Rounds, 1)
	var out []Run
	for _, c := range opts.Concurrency {
		measured := map[string][]Run{}
		for range rounds {
			for _, shape := range shapes {
				if opts.BeforeRun != nil {
					if err := opts.BeforeRun(ctx); err != nil {
						return out, err
					}
				}
				r, err := measure(ctx, opts, shape, c)
				if err != nil {
					return out, err
				}
				if opts.Progress != nil {
					opts.Progress(r)
				}
				measured[shape] = append(measured[shape], r)
			}
		}
		var floor float64
		for _, shape := range shapes {
			r := median(measured[shape])
			r.Rounds = len(measured[shape])
			if shape == ShapeFloor {
				floor = r.PerSecond
			}
			if shape == ShapeKeysync && floor > 0 {
				r.RatioToFloor = r.PerSecond / floor
			}
			out = append(out, r)
		}
	}
	return out, nil
}

func measure(ctx context.Context, opts IngestOptions, shape string, concurrency int) (Run, error) {
	url, drop, err := opts.NewDatabase(ctx)
	if err != nil {
		return Run{}, err
	}
	defer drop()
	maxConns := opts.MaxConns
	if shape == ShapeRaw {
		maxConns = int32(concurrency) // like pgbench: one connection per client
	}
	pool, err := postgres.Open(ctx, url, postgres.PoolConfig{MaxConns: maxConns})
	if err != nil {
		return Run{}, err
	}
	defer pool.Close()

	var do func(ctx context.Context, body []byte, header string) error
	switch shape {
	case ShapeRaw:
		do = func(ctx context.Context, body []byte, _ string) error { return insertOne(ctx, pool, body) }
	default:
		handler, stop, err := newHandler(ctx, shape, pool, opts.Ingester)
		if err != nil {
			return Run{}, err
		}
		defer stop()
		srv, base, err := serve(handler)
		if err != nil {
			return Run{}, err
		}
		defer srv.Close()
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency, MaxConnsPerHost: concurrency}}
		defer client.CloseIdleConnections()
		do = func(ctx context.Context, body []byte, header string) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, base, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Stripe-Signature", header)
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
	}
	return load(ctx, shape, concurrency, opts.Duration, do), nil
}

func newHandler(ctx context.Context, shape string, pool *pgxpool.Pool, cfg ingest.Config) (http.Handler, func(), error) {
	if shape == ShapeFloor {
		return floorHandler(pool), func() {}, nil
	}
	ing := ingest.New(jobs.NewTables(pool), cfg, zerolog.Nop())
	ing.Start(ctx)
	h, err := wh.NewHandler(wh.Config{Secrets: []string{benchSecret}}, ing, zerolog.Nop())
	if err != nil {
		ing.Stop()
		return nil, nil, err
	}
	return h, ing.Stop, nil
}

// floorHandler is the least a durable, verified ingest can do: verify, decode the three
// fields it needs, one autocommit INSERT, answer.
func floorHandler(pool *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read", http.StatusBadRequest)
			return
		}
		if err := webhook.ValidatePayload(body, r.Header.Get("Stripe-Signature"), benchSecret); err != nil {
			http.Error(w, "signature", http.StatusBadRequest)
			return
		}
		if err := insertOne(r.Context(), pool, body); err != nil {
			http.Error(w, "store", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

const insertOneSQL = `
INSERT INTO stripe_events (id, type, created, livemode, api_version, payload, source, status)
VALUES ($1, $2, to_timestamp($3), false, '2023-10-16', $4::jsonb, 'webhook', 'pending')
ON CONFLICT (id) DO NOTHING`

func insertOne(ctx context.Context, pool *pgxpool.Pool, body []byte) error {
	var env struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Created int64  `json:"created"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, insertOneSQL, env.ID, env.Type, env.Created, string(body))
	return err
}

func serve(h http.Handler) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, "http://" + ln.Addr().String() + "/webhooks/stripe", nil
}

var runSeq atomic.Int64

// load runs concurrency workers for d, each sending one request after the other.
func load(ctx context.Context, shape string, concurrency int, d time.Duration, do func(context.Context, []byte, string) error) Run {
	run := runSeq.Add(1)
	template := InvoicePaidEvent()
	var (
		mu        sync.Mutex
		latencies []time.Duration
		errCount  int
		firstErr  error
		wg        sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			var errs int
			var werr error
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("evt_b%d_%d_%d", run, w, i)
				body := bytes.Replace(template, []byte("evt_TEMPLATE"), []byte(id), 1)
				header := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: benchSecret}).Header
				t0 := time.Now()
				err := do(context.WithoutCancel(ctx), body, header)
				if err != nil {
					errs++
					werr = err
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			errCount += errs
			if firstErr == nil {
				firstErr = werr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	slices.Sort(latencies)
	r := Run{Shape: shape, Concurrency: concurrency, Requests: len(latencies), Errors: errCount, Seconds: elapsed}
	if len(latencies) > 0 {
		r.PerSecond = float64(len(latencies)) / elapsed
		r.P50ms = ms(latencies[len(latencies)/2])
		r.P99ms = ms(latencies[min(len(latencies)-1, len(latencies)*99/100)])
	}
	return r
}

// median returns the run with the median throughput.
func median(runs []Run) Run {
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b Run) int { return cmp.Compare(a.PerSecond, b.PerSecond) })
	return sorted[len(sorted)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// InvoicePaidEvent returns a realistic signed-size invoice.paid event (about 3.4 KB,
// as Stripe sends for a one-item subscription invoice) whose id is evt_TEMPLATE.
func InvoicePaidEvent() []byte {
	invoice := map[string]any{
		"id": "in_1OBenchmark0000000000", "object": "invoice", "account_country": "US",
		"account_name": "Example Software Ltd", "amount_due": 4900, "amount_paid": 4900, "amount_remaining": 0,
		"attempt_count": 1, "attempted": true, "billing_reason": "subscription_cycle", "collection_method": "charge_automatically",
		"charge": "ch_3OBenchmark0000000000", "created": 1700000000, "currency": "usd", "customer": "cus_OBenchmark00000",
		"customer_email": "ada@example.com", "customer_name": "Ada Lovelace", "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1Bench/test_YWNjdF8xQmVuY2gsX09CZW5jaG1hcmswMDAwMDAwMDAwMDA",
		"invoice_pdf": "https://pay.stripe.com/invoice/acct_1Bench/test_YWNjdF8xQmVuY2gsX09CZW5jaG1hcmswMDAwMDAwMDAwMDA/pdf",
		"livemode":    false, "number": "BENCH-0001", "paid": true, "paid_out_of_band": false, "payment_intent": "pi_3OBenchmark0000000000",
		"period_end": 1700000000, "period_start": 1697408000, "status": "paid", "subscription": "sub_1OBenchmark0000000000",
		"subtotal": 4900, "total": 4900, "status_transitions": map[string]any{"finalized_at": 1700000000, "paid_at": 1700000100},
		"lines": map[string]any{"object": "list", "has_more": false, "total_count": 1, "url": "/v1/invoices/in_1OBenchmark0000000000/lines",
			"data": []any{map[string]any{
				"id": "il_1OBenchmark0000000000", "object": "line_item", "amount": 4900, "currency": "usd",
				"description": "1 × Pro (at $49.00 / month)", "livemode": false, "proration": false, "quantity": 1,
				"subscription": "sub_1OBenchmark0000000000", "subscription_item": "si_OBenchmark00000", "type": "subscription",
				"period": map[string]any{"start": 1700000000, "end": 1702592000},
				"plan": map[string]any{"id": "price_1OBenchPro000000", "object": "plan", "active": true, "amount": 4900,
					"currency": "usd", "interval": "month", "interval_count": 1, "product": "prod_OBenchPro00000", "usage_type": "licensed"},
				"price": map[string]any{"id": "price_1OBenchPro000000", "object": "price", "active": true, "currency": "usd",
					"product": "prod_OBenchPro00000", "type": "recurring", "unit_amount": 4900, "billing_scheme": "per_unit",
					"recurring": map[string]any{"interval": "month", "interval_count": 1, "usage_type": "licensed"},
					"metadata":  map[string]any{"skm": `{"F1":true,"MaxNoOfMachines":3}`}},
				"metadata": map[string]any{},
			}}},
		"metadata":             map[string]any{syncer.KeyMetadata: "ABCDE-FGHIJ-KLMNO-PQRST"},
		"subscription_details": map[string]any{"metadata": map[string]any{syncer.KeyMetadata: "ABCDE-FGHIJ-KLMNO-PQRST"}},
	}
	ev := map[string]any{
		"id": "evt_TEMPLATE", "object": "event", "api_version": events.StripeAPIVersion, "created": 1700000100,
		"livemode": false, "pending_webhooks": 1, "type": "invoice.paid",
		"request": map[string]any{"id": nil, "idempotency_key": nil},
		"data":    map[string]any{"object": invoice},
	}
	b, _ := json.MarshalIndent(ev, "", "  ")
	return b
}

// Table renders runs as the table `make bench` prints.
func Table(runs []Run) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s %-11s %9s %8s %8s %7s %s\n", "conc", "shape", "req/s", "p50 ms", "p99 ms", "errors", "keysync / floor")
	for _, r := range runs {
		ratio := ""
		if r.Shape == ShapeKeysync {
			ratio = fmt.Sprintf("%.2f", r.RatioToFloor)
		}
		fmt.Fprintf(&b, "%-5d %-11s %9.0f %8.2f %8.2f %7d %s\n", r.Concurrency, r.Shape, r.PerSecond, r.P50ms, r.P99ms, r.Errors, ratio)
	}
	return b.String()
}

// NewDatabaseOn returns an IngestOptions.NewDatabase that creates migrated databases on
// the server at adminURL.
func NewDatabaseOn(adminURL string) func(ctx context.Context) (string, func(), error) {
	var n atomic.Int64
	return func(ctx context.Context) (string, func(), error) {
		admin, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			return "", nil, err
		}
		defer admin.Close(ctx)
		name := fmt.Sprintf("keysync_bench_%d_%d", time.Now().UnixNano()%1e9, n.Add(1))
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
			return "", nil, err
		}
		drop := func() {
			c, err := pgx.Connect(context.Background(), adminURL)
			if err == nil {
				_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
				c.Close(context.Background())
			}
		}
		cfg, err := pgx.ParseConfig(adminURL)
		if err != nil {
			drop()
			return "", nil, errors.New("bench: cannot parse the server URL")
		}
		url := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			drop()
			return "", nil, err
		}
		_, err = postgres.Migrate(ctx, pool, nil)
		pool.Close()
		if err != nil {
			drop()
			return "", nil, err
		}
		return url, drop, nil
	}
}
