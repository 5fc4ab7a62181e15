package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/testbed/chaos"
)

// AppliedOptions configures the event-to-applied benchmark.
type AppliedOptions struct {
	// Cluster is how keysync and the sandbox are started (binaries, log folder,
	// database).
	Cluster chaos.Options
	// Rate is the events per second sent (each one a seat change that keysync must
	// carry to Cryptolens); Duration how long.
	Rate     float64
	Duration time.Duration
	// Subscriptions is how many subscriptions the changes are spread over.
	Subscriptions int
	Progress      func(string)
}

// AppliedResult is the event-to-applied latency: from the webhook's arrival at keysync
// (stripe_events.received_at) to the audit row written once Cryptolens answered the
// change (audit_log.at), beside the baseline: the same Stripe and Cryptolens calls a
// Sync makes, made directly at the same rate, without webhooks, queue or database.
type AppliedResult struct {
	Rate          float64 `json:"rate_per_second"`
	Sent          int     `json:"events_sent"`
	Measured      int     `json:"events_measured"`
	P50ms         float64 `json:"p50_ms"`
	P99ms         float64 `json:"p99_ms"`
	BaselineP50ms float64 `json:"baseline_p50_ms"`
	BaselineP99ms float64 `json:"baseline_p99_ms"`
	Errors        int     `json:"errors"`
	// QueueP50ms is the median wait of an event's job before a worker took it;
	// WorkP50ms the median time a worker spent on it (River's timestamps).
	QueueP50ms float64 `json:"queue_p50_ms"`
	WorkP50ms  float64 `json:"work_p50_ms"`
}

// Applied runs the event-to-applied benchmark: one keysync replica against the
// sandbox; seat changes at opts.Rate per second for opts.Duration; the latency of each
// from the database; then the baseline.
func Applied(ctx context.Context, opts AppliedOptions) (AppliedResult, error) {
	res := AppliedResult{Rate: opts.Rate}
	say := func(format string, a ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, a...))
		}
	}
	// Limits opened: the simulators have none, and the benchmark measures keysync.
	c, err := chaos.NewCluster(ctx, opts.Cluster, 1, "STRIPE_RATE_LIMIT=5000", "CRYPTOLENS_RATE_LIMIT=1000", "LOG_LEVEL=warn")
	if err != nil {
		return res, err
	}
	defer c.Close()
	if err := c.Checkout(ctx, opts.Subscriptions); err != nil {
		return res, err
	}
	if err := c.Settle(ctx, 5*time.Minute); err != nil {
		return res, err
	}
	say("%d subscriptions with keys; sending %.0f seat changes a second for %s", opts.Subscriptions, opts.Rate, opts.Duration)

	var start time.Time
	if err := c.DB().QueryRow(ctx, "SELECT now()").Scan(&start); err != nil {
		return res, err
	}
	subs := c.Subscriptions()
	var mu sync.Mutex
	errs := 0
	n := pace(ctx, opts.Rate, opts.Duration, func(i int) {
		// Each subscription's seats cycle 3, 4, 5, 3, ...: every change is a new limit.
		sub := subs[i%len(subs)]
		qty := 3 + (i/len(subs))%3 // 3, 4, 5: never a plan's starting seats (1 or 2)
		if err := c.Control().Post(ctx, "/stripe/subscriptions/"+sub+"/quantity", map[string]any{"quantity": qty}, nil); err != nil {
			mu.Lock()
			errs++
			mu.Unlock()
		}
	})
	res.Sent, res.Errors = n, errs
	if err := c.Settle(ctx, 5*time.Minute); err != nil {
		return res, err
	}
	rows, err := c.DB().Query(ctx, `SELECT extract(epoch FROM a.at - e.received_at) * 1000
		FROM audit_log a JOIN stripe_events e ON e.id = a.cause_id
		WHERE e.type = 'customer.subscription.updated' AND a.action = 'machine_limit' AND e.received_at >= $1`, start)
	if err != nil {
		return res, err
	}
	var lat []float64
	for rows.Next() {
		var ms float64
		if err := rows.Scan(&ms); err != nil {
			return res, err
		}
		lat = append(lat, ms)
	}
	if err := rows.Err(); err != nil {
		return res, err
	}
	res.Measured = len(lat)
	res.P50ms, res.P99ms = percentile(lat, 0.50), percentile(lat, 0.99)
	if err := c.DB().QueryRow(ctx, `SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - created_at)) * 1000, 0),
		coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - attempted_at)) * 1000, 0)
		FROM river_job WHERE kind = 'stripe_event' AND created_at >= $1 AND finalized_at IS NOT NULL`, start).Scan(&res.QueueP50ms, &res.WorkP50ms); err != nil {
		return res, err
	}
	say("keysync: %d of %d changes applied, p50 %.1f ms, p99 %.1f ms (jobs: queued p50 %.1f ms, worked p50 %.1f ms)",
		res.Measured, res.Sent, res.P50ms, res.P99ms, res.QueueP50ms, res.WorkP50ms)

	// Baseline: the calls a Sync makes, straight from this process at the same rate.
	st, err := stripeapi.New(stripeapi.Config{APIKey: c.Getenv("STRIPE_API_KEY"), BaseURL: c.Getenv("STRIPE_API_BASE"), RateLimit: 5000})
	if err != nil {
		return res, err
	}
	cl, err := cryptolens.New(cryptolens.Config{BaseURL: c.Getenv("CRYPTOLENS_API_BASE"), Token: c.Getenv("CRYPTOLENS_TOKEN"), RateLimit: -1})
	if err != nil {
		return res, err
	}
	keys := map[string]string{}
	krows, err := c.DB().Query(ctx, `SELECT id, license_key FROM subscriptions WHERE license_key IS NOT NULL`)
	if err != nil {
		return res, err
	}
	for krows.Next() {
		var id, key string
		if err := krows.Scan(&id, &key); err != nil {
			return res, err
		}
		keys[id] = key
	}
	if err := krows.Err(); err != nil {
		return res, err
	}
	var base []float64
	pace(ctx, opts.Rate, opts.Duration, func(i int) {
		sub := subs[i%len(subs)]
		t0 := time.Now()
		_, err1 := st.GetSubscription(ctx, sub)
		_, err2 := st.PaidInvoices(ctx, sub)
		k, err3 := cl.GetKey(ctx, 1001, keys[sub])
		err4 := cl.MachineLockLimit(ctx, 1001, keys[sub], k.MaxNoOfMachines)
		took := float64(time.Since(t0).Microseconds()) / 1000
		mu.Lock()
		defer mu.Unlock()
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			errs++
			return
		}
		base = append(base, took)
	})
	res.BaselineP50ms, res.BaselineP99ms, res.Errors = percentile(base, 0.50), percentile(base, 0.99), errs
	say("baseline (the calls alone): p50 %.1f ms, p99 %.1f ms", res.BaselineP50ms, res.BaselineP99ms)
	return res, nil
}

// pace calls fn(i) at rate per second for d, open loop (each call in its own
// goroutine, on schedule whether or not earlier ones finished), waits for them, and
// returns how many it started.
func pace(ctx context.Context, rate float64, d time.Duration, fn func(i int)) int {
	var wg sync.WaitGroup
	start := time.Now()
	total := int(rate * d.Seconds())
	for i := range total {
		at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if wait := time.Until(at); wait > 0 {
			select {
			case <-ctx.Done():
				wg.Wait()
				return i
			case <-time.After(wait):
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(i)
		}()
	}
	wg.Wait()
	return total
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}
