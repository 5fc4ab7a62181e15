// Package metrics defines keysync's Prometheus metrics. The packages that do the work
// report through plain functions (hooks); only this package knows Prometheus.
package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds keysync's metric families.
type Metrics struct {
	Registry        *prometheus.Registry
	Webhooks        *prometheus.CounterVec
	EventsRefused   *prometheus.CounterVec
	IngestSeconds   prometheus.Histogram
	EventToApplied  prometheus.Histogram
	CryptolensCalls *prometheus.CounterVec
	CryptolensTime  *prometheus.HistogramVec
	StripeCalls     *prometheus.CounterVec
	StripeTime      *prometheus.HistogramVec
	Actions         *prometheus.CounterVec
	SweepDrift      prometheus.Gauge
	SweepSeconds    prometheus.Gauge
	SweepOrphans    prometheus.Gauge
}

// DB answers the event gauge read on each scrape (postgres.Store).
type DB interface {
	OldestPendingEvent(ctx context.Context) (time.Duration, error)
}

// Jobs answers the job gauges read on each scrape (jobs.Tables): a count for every state
// River has, so that an empty state is a zero and not a missing series.
type Jobs interface {
	JobsByState(ctx context.Context) (map[string]int, error)
}

// New registers every family on a fresh registry, with Go and process metrics. Watch
// adds the gauges read at scrape time.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	lat := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &Metrics{
		Registry: r,
		Webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keysync_webhooks_total",
			Help: "Webhook deliveries by event type and outcome (stored, duplicate, ignored, bad_signature, too_large, too_slow, not_an_event, not_storable, busy, unavailable)."}, []string{"type", "outcome"}),
		EventsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keysync_events_refused_total",
			Help: "Events stored as ignored because they must never reach a key, by reason (livemode_mismatch, connected_account), from every source."},
			[]string{"reason"}),
		IngestSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keysync_webhook_ingest_seconds",
			Help: "Time from receiving a webhook to answering it.", Buckets: lat}),
		EventToApplied: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keysync_event_to_applied_seconds",
			Help: "Time from storing an event to the end of the Sync it caused.", Buckets: lat}),
		CryptolensCalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keysync_cryptolens_calls_total",
			Help: "Cryptolens Web API calls by method and outcome."}, []string{"method", "outcome"}),
		CryptolensTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keysync_cryptolens_call_seconds",
			Help: "Cryptolens call latency by method.", Buckets: lat}, []string{"method"}),
		StripeCalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keysync_stripe_calls_total",
			Help: "Stripe API requests by route and outcome (HTTP status class, or error)."}, []string{"route", "outcome"}),
		StripeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keysync_stripe_call_seconds",
			Help: "Stripe request latency by route.", Buckets: lat}, []string{"route"}),
		Actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keysync_actions_total",
			Help: "License actions by kind and outcome (applied, dry_run, failed)."}, []string{"kind", "outcome"}),
		SweepDrift:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "keysync_sweep_drifted", Help: "Subscriptions the last sweep found drifted."}),
		SweepSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keysync_sweep_duration_seconds", Help: "Duration of the last sweep."}),
		SweepOrphans: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keysync_sweep_orphans", Help: "Orphan keys the last sweep reported."}),
	}
	r.MustRegister(m.Webhooks, m.EventsRefused, m.IngestSeconds, m.EventToApplied, m.CryptolensCalls, m.CryptolensTime, m.StripeCalls, m.StripeTime,
		m.Actions, m.SweepDrift, m.SweepSeconds, m.SweepOrphans)
	return m
}

// Watch registers the gauges read at scrape time: jobs by state from jobs, the oldest
// pending event from db, and the catch-up cursor's age.
func (m *Metrics) Watch(db DB, jobs Jobs, catchUpLag func() time.Duration) {
	m.Registry.MustRegister(&dbCollector{db: db, jobs: jobs}, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keysync_catchup_cursor_age_seconds",
		Help: "Age of the Events API catch-up cursor (Stripe keeps 30 days)."}, func() float64 { return catchUpLag().Seconds() }))
}

// Sweeps answers the sweep gauges read on each scrape (postgres.Store): the age of the
// last completed sweep by the database's clock, or without one the time keysync has run
// without one.
type Sweeps interface {
	LastSweep(ctx context.Context) (age time.Duration, completed bool, err error)
}

// WatchSweeps registers the gauges that say how old the last completed sweep is and
// whether it is overdue (older than overdueAfter). They are read from sync_runs at
// scrape time, so every replica reports the same, leader or not, and a schedule that
// silently stopped (restarts, a lost leader) shows as a growing age.
func (m *Metrics) WatchSweeps(s Sweeps, overdueAfter time.Duration) {
	m.Registry.MustRegister(&sweepCollector{sweeps: s, overdueAfter: overdueAfter})
}

var (
	sweepAgeDesc = prometheus.NewDesc("keysync_last_sweep_age_seconds",
		"Age of the last completed sweep (without one: how long keysync has run without one).", nil, nil)
	sweepOverdueDesc = prometheus.NewDesc("keysync_sweep_overdue",
		"1 when the last completed sweep is older than twice KEYSYNC_RECONCILE_INTERVAL, else 0.", nil, nil)
)

// sweepCollector reads the sweep gauges from Postgres at scrape time.
type sweepCollector struct {
	sweeps       Sweeps
	overdueAfter time.Duration
}

func (c *sweepCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sweepAgeDesc
	ch <- sweepOverdueDesc
}

func (c *sweepCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	age, _, err := c.sweeps.LastSweep(ctx)
	if err != nil {
		return // a missing series, not a misleading 0
	}
	overdue := 0.0
	if age > c.overdueAfter {
		overdue = 1
	}
	ch <- prometheus.MustNewConstMetric(sweepAgeDesc, prometheus.GaugeValue, age.Seconds())
	ch <- prometheus.MustNewConstMetric(sweepOverdueDesc, prometheus.GaugeValue, overdue)
}

var (
	jobsDesc   = prometheus.NewDesc("keysync_jobs", "River jobs by state.", []string{"state"}, nil)
	oldestDesc = prometheus.NewDesc("keysync_oldest_pending_event_age_seconds", "Age of the oldest event not yet processed (0: none).", nil, nil)
)

// dbCollector reads job and event gauges from Postgres at scrape time.
type dbCollector struct {
	db   DB
	jobs Jobs
}

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) { ch <- jobsDesc; ch <- oldestDesc }

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if states, err := c.jobs.JobsByState(ctx); err == nil {
		for s, n := range states {
			ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(n), s)
		}
	}
	if age, err := c.db.OldestPendingEvent(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age.Seconds())
	}
}
