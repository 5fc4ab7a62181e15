// Package chaos runs keysync through faults as real processes: keysync replicas and the
// sandbox as child processes, Postgres as a local server, and an in-process load
// balancer that spreads Stripe's webhooks over the live replicas. Each scenario ends by
// checking every key against the policy, from Stripe's side, and counting what went
// wrong. `make chaos` runs the full scenarios (cmd/keysync-chaos); a smaller one runs in
// `make test`.
package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/events"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/localpg"
	"github.com/keysync/keysync/internal/testbed/sandbox"
)

// Options say where the binaries are and where the scenario runs.
type Options struct {
	// KeysyncBin and SandboxBin are the built binaries (make build).
	KeysyncBin, SandboxBin string
	// Dir receives each process's log.
	Dir string
	// DatabaseURL is an empty database for the scenario (keysync migrates it).
	DatabaseURL string
	// Postgres is the server behind DatabaseURL when the scenario may restart it (a
	// throwaway cluster); nil otherwise.
	Postgres *localpg.Server
	// Seed makes the sandbox's ids, faults and delivery order repeatable.
	Seed uint64
	// Progress, if set, receives a line per phase.
	Progress io.Writer
	// SandboxFlags are added to the sandbox's command line (e.g. -block-expired).
	SandboxFlags []string
	// EventVersion, if set, is the Stripe account's default API version (the Events API
	// renders in it) and the webhook endpoint's.
	EventVersion string
	// WebhookDropRate is the share of webhook deliveries Stripe loses for good: only the
	// catch-up brings those events.
	WebhookDropRate float64
}

const product = 1001

// Plans the scenarios sell: Pro (F1, a machine a seat) and Team (F1+F3, two a seat).
var plans = map[string]sandbox.Want{
	"pro":  {Features: [8]bool{true}, Machines: 1},
	"team": {Features: [8]bool{true, false, true}, Machines: 2},
}

// Cluster is one scenario's world: the sandbox, keysync replicas behind the balancer,
// and the database. Benchmarks drive it too.
type Cluster struct {
	opts     Options
	ctl      *sandbox.Control
	db       *pgxpool.Pool
	env      []string // keysync's environment
	sandbox  *sandbox.Process
	lb       *balancer
	lbServer *http.Server
	prices   map[string]string // plan -> price id
	planOf   map[string]string // price id -> plan
	subs     []string
	started  time.Time
	// firstEvent is the index of the first event Stripe emitted after the webhook
	// endpoint existed: the scenario's events start there.
	firstEvent int

	mu       sync.Mutex
	replicas []*replica
	procs    []*sandbox.Process // every process started, for the clean-up
}

type replica struct {
	name, addr string
	admin      string // its admin listener's address
	proc       *sandbox.Process
	up         atomic.Bool
}

// Control is the sandbox's control API.
func (c *Cluster) Control() *sandbox.Control { return c.ctl }

// DB is a pool on keysync's database.
func (c *Cluster) DB() *pgxpool.Pool { return c.db }

// Subscriptions are the subscriptions Checkout created, oldest first.
func (c *Cluster) Subscriptions() []string { return c.subs }

// Env is keysync's environment (the sandbox's credentials and URLs, the database).
func (c *Cluster) Env() []string { return slices.Clone(c.env) }

// Getenv is one variable of keysync's environment (the last setting wins, as for a
// process).
func (c *Cluster) Getenv(name string) string {
	v := ""
	for _, kv := range c.env {
		if val, ok := strings.CutPrefix(kv, name+"="); ok {
			v = val
		}
	}
	return v
}

// NewCluster starts the sandbox, the balancer and n keysync replicas, with extraEnv added
// to their environment. Close it when done.
func NewCluster(ctx context.Context, opts Options, n int, extraEnv ...string) (_ *Cluster, err error) {
	opts.Seed = max(opts.Seed, 1)
	// The deferred Close sees this c, not the nil that an error return gives the caller,
	// so a failed start stops what it started and reports its error (not a nil panic).
	c := &Cluster{opts: opts, prices: map[string]string{}, planOf: map[string]string{}, started: time.Now()}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	ports, err := sandbox.FreePorts(4 + 2*n) // the sandbox, the balancer, each replica and its admin listener
	if err != nil {
		return nil, err
	}
	envFile := filepath.Join(opts.Dir, "sandbox.env")
	c.sandbox, err = c.start(opts.SandboxBin, "sandbox.log", nil, append([]string{
		"-stripe-addr", "127.0.0.1:" + ports[0], "-cryptolens-addr", "127.0.0.1:" + ports[1], "-control-addr", "127.0.0.1:" + ports[2],
		"-cryptolens-product", fmt.Sprint(product), "-env-file", envFile, "-seed", fmt.Sprint(opts.Seed)},
		opts.SandboxFlags...)...)
	if err != nil {
		return nil, err
	}
	c.ctl = sandbox.New("http://127.0.0.1:" + ports[2])
	if err := sandbox.WaitHTTP(ctx, c.ctl.URL+"/stripe/now", c.sandbox); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if c.env, err = sandbox.ReadEnv(envFile); err != nil {
		return nil, err
	}
	if c.db, err = pgxpool.New(ctx, opts.DatabaseURL); err != nil {
		return nil, err
	}

	var prod map[string]string
	if err := c.ctl.Post(ctx, "/stripe/products", map[string]any{"name": "Acme App"}, &prod); err != nil {
		return nil, err
	}
	var yaml strings.Builder
	yaml.WriteString("plans:\n")
	for _, name := range []string{"pro", "team"} {
		var price map[string]string
		if err := c.ctl.Post(ctx, "/stripe/prices", map[string]any{"product": prod["id"], "unit_amount": 2900, "nickname": name}, &price); err != nil {
			return nil, err
		}
		c.prices[name], c.planOf[price["id"]] = price["id"], name
		w := plans[name]
		var fs []string
		for i, on := range w.Features {
			if on {
				fs = append(fs, fmt.Sprint(i+1))
			}
		}
		fmt.Fprintf(&yaml, "  - price: %s\n    cryptolens_product: %d\n    features: [%s]\n    machines_per_seat: %d\n", price["id"], product, strings.Join(fs, ", "), w.Machines)
	}
	plansFile := filepath.Join(opts.Dir, "plans.yaml")
	if err := os.WriteFile(plansFile, []byte(yaml.String()), 0o644); err != nil {
		return nil, err
	}
	// Limits opened for the simulators (which have none); timeouts short, so that a
	// hung call or a dead replica's job costs seconds, not minutes. Each replica's admin
	// listener has a port of its own, picked with the others: a port the kernel chose
	// at bind time (:0) could be one picked here and not bound yet.
	c.env = append(c.env, "DATABASE_URL="+opts.DatabaseURL, "KEYSYNC_PLANS_FILE="+plansFile, "KEYSYNC_DB_MAX_CONNS=10",
		"CRYPTOLENS_RATE_LIMIT=500", "STRIPE_RATE_LIMIT=100", "CRYPTOLENS_TIMEOUT=1s", "KEYSYNC_JOB_TIMEOUT=10s",
		"KEYSYNC_CATCHUP_INTERVAL=15s", "KEYSYNC_SHUTDOWN_TIMEOUT=5s", "LOG_FORMAT=json", "LOG_LEVEL=info")
	c.env = append(c.env, extraEnv...)
	// The balancer's address is bound before the replicas start, so that none of their
	// connections can take it.
	ln, err := net.Listen("tcp", "127.0.0.1:"+ports[3])
	if err != nil {
		return nil, err
	}
	for i := range n {
		r := &replica{name: fmt.Sprintf("keysync-%d", i+1), addr: "127.0.0.1:" + ports[4+i], admin: "127.0.0.1:" + ports[4+n+i]}
		c.replicas = append(c.replicas, r)
	}
	for _, r := range c.replicas {
		if err := c.startReplica(ctx, r); err != nil {
			_ = ln.Close()
			return nil, err
		}
	}
	// Stripe delivers to the balancer, which spreads deliveries over the live
	// replicas. Deliveries are reordered and 5% are duplicated; a failed one is retried
	// from 250ms, doubling, 12 times (about 8 minutes in all).
	c.lb = &balancer{c: c, client: &http.Client{Timeout: 30 * time.Second}, statuses: map[int]int{}}
	c.lbServer = &http.Server{Handler: c.lb, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = c.lbServer.Serve(ln) }()
	secret := c.Getenv("STRIPE_WEBHOOK_SECRETS")
	// Events from here on are the scenario's; the products and prices came before.
	ids, err := c.eventIDs(ctx)
	if err != nil {
		return nil, err
	}
	c.firstEvent = len(ids)
	if opts.EventVersion != "" {
		if err := c.ctl.Post(ctx, "/stripe/account", map[string]any{"api_version": opts.EventVersion}, nil); err != nil {
			return nil, err
		}
	}
	if err := c.ctl.Post(ctx, "/stripe/endpoints", map[string]any{"url": "http://" + ln.Addr().String() + "/webhooks/stripe",
		"secrets": []string{secret}, "workers": 16, "reorder": true, "duplicate_rate": 0.05, "max_attempts": 12,
		"retry_backoff": "250ms", "seed": opts.Seed, "api_version": opts.EventVersion, "drop_rate": opts.WebhookDropRate}, nil); err != nil {
		return nil, err
	}

	c.progress("%d keysync replicas ready behind the balancer %s", n, ln.Addr())
	return c, nil
}

func (c *Cluster) progress(format string, a ...any) {
	if c.opts.Progress != nil {
		fmt.Fprintf(c.opts.Progress, "  [%5.1fs] %s\n", time.Since(c.started).Seconds(), fmt.Sprintf(format, a...))
	}
}

func (c *Cluster) start(bin, log string, env []string, args ...string) (*sandbox.Process, error) {
	p, err := sandbox.Start(bin, filepath.Join(c.opts.Dir, log), env, args...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

func (c *Cluster) startReplica(ctx context.Context, r *replica) error {
	p, err := c.start(c.opts.KeysyncBin, r.name+".log", append(slices.Clone(c.env), "KEYSYNC_LISTEN="+r.addr, "KEYSYNC_ADMIN_LISTEN="+r.admin), "serve")
	if err != nil {
		return err
	}
	r.proc = p
	if err := sandbox.WaitHTTP(ctx, "http://"+r.addr+"/readyz", p); err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	r.up.Store(true)
	return nil
}

// killAndRestart SIGKILLs a replica and starts it again on the same address.
func (c *Cluster) killAndRestart(ctx context.Context, r *replica) error {
	r.up.Store(false)
	r.proc.Kill()
	return c.startReplica(ctx, r)
}

// killer SIGKILLs a random replica every interval and restarts it, until stop is
// called; stop returns how many kills there were and the first restart error.
func (c *Cluster) killer(ctx context.Context, every time.Duration, seed uint64) (stop func() (int, error)) {
	done := make(chan struct{})
	var kills int
	var firstErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 7))
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			r := c.replicas[rng.IntN(len(c.replicas))]
			if err := c.killAndRestart(ctx, r); err != nil && firstErr == nil {
				firstErr = err
			}
			kills++
		}
	}()
	return func() (int, error) {
		close(done)
		wg.Wait()
		return kills, firstErr
	}
}

// Close stops every process the cluster started (by PID) and the balancer.
func (c *Cluster) Close() {
	c.mu.Lock()
	procs := slices.Clone(c.procs)
	c.mu.Unlock()
	for _, p := range procs {
		_ = p.Stop(10 * time.Second)
	}
	if c.lbServer != nil {
		_ = c.lbServer.Close()
	}
	if c.db != nil {
		c.db.Close()
	}
}

// balancer spreads webhook deliveries over the live replicas, round robin, and tries
// the next replica when one cannot be reached (as a load balancer in front of
// replicas does). It counts the statuses it answers.
type balancer struct {
	c      *Cluster
	client *http.Client
	next   atomic.Uint64

	mu       sync.Mutex
	statuses map[int]int
}

func (b *balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	status, answer := http.StatusBadGateway, []byte("no replica answered")
	rs := b.c.replicas
	first := int(b.next.Add(1))
	for i := range rs {
		rep := rs[(first+i)%len(rs)]
		if !rep.up.Load() {
			continue
		}
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, "http://"+rep.addr+r.URL.Path, bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := b.client.Do(req)
		if err != nil {
			continue
		}
		answer, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
		break
	}
	b.mu.Lock()
	b.statuses[status]++
	b.mu.Unlock()
	w.WriteHeader(status)
	_, _ = w.Write(answer)
}

func (b *balancer) count(status int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.statuses[status]
}

// Checkout creates n subscriptions, one in four on Team with two seats, the rest on Pro.
func (c *Cluster) Checkout(ctx context.Context, n int) error {
	for i := range n {
		plan, qty := "pro", 1
		if i%4 == 3 {
			plan, qty = "team", 2
		}
		var co map[string]any
		if err := c.ctl.Post(ctx, "/stripe/checkout", map[string]any{"email": fmt.Sprintf("c%d@example.com", len(c.subs)),
			"items": []map[string]any{{"price": c.prices[plan], "quantity": qty}}}, &co); err != nil {
			return err
		}
		c.subs = append(c.subs, co["subscription"].(string))
	}
	return nil
}

// renew moves the clock two hours past the end of the latest current period: every
// subscription renews, and its invoice is finalized and paid.
func (c *Cluster) renew(ctx context.Context) error {
	s, err := c.ctl.Subscription(ctx, c.subs[len(c.subs)-1])
	if err != nil {
		return err
	}
	now, err := c.ctl.Now(ctx)
	if err != nil {
		return err
	}
	return c.ctl.Advance(ctx, time.Unix(s.Subscription.CurrentPeriodEnd, 0).Sub(now)+2*time.Hour)
}

// reseat changes the seats of every k-th subscription (plan changes mid-storm).
func (c *Cluster) reseat(ctx context.Context, k int, qty int) error {
	for i := 0; i < len(c.subs); i += k {
		if err := c.ctl.Post(ctx, "/stripe/subscriptions/"+c.subs[i]+"/quantity", map[string]any{"quantity": qty}, nil); err != nil {
			return err
		}
	}
	return nil
}

type endpointStats struct {
	Stats struct {
		Events, Attempts, Acknowledged, Failed, Dropped, GaveUp, Duplicated int
	}
}

func (c *Cluster) delivery(ctx context.Context) (endpointStats, error) {
	var eps []endpointStats
	if err := c.ctl.Get(ctx, "/stripe/endpoints", &eps); err != nil {
		return endpointStats{}, err
	}
	if len(eps) != 1 {
		return endpointStats{}, fmt.Errorf("%d webhook endpoints, want 1", len(eps))
	}
	return eps[0], nil
}

// waitAcked waits until at least n deliveries were acknowledged.
func (c *Cluster) waitAcked(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st, err := c.delivery(ctx)
		if err != nil {
			return err
		}
		if st.Stats.Acknowledged >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("fewer than %d deliveries acknowledged within %s", n, timeout)
}

// Settle waits until Stripe delivered everything, keysync stored every event Stripe
// emitted (from webhooks or its catch-up) and worked every one.
func (c *Cluster) Settle(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	fctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := c.ctl.Flush(fctx); err != nil {
		return err
	}
	ids, err := c.eventIDs(ctx)
	if err != nil {
		return err
	}
	for {
		var missing int
		err := c.db.QueryRow(ctx, `SELECT count(*) FROM unnest($1::text[]) AS e(id) WHERE NOT EXISTS (SELECT 1 FROM stripe_events s WHERE s.id = e.id)`, ids).Scan(&missing)
		if err == nil && missing == 0 {
			if left := time.Until(deadline); left > 0 {
				return sandbox.WaitIdle(ctx, c.db, left)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of Stripe's events never reached keysync within %s (%v)", missing, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) eventIDs(ctx context.Context) ([]string, error) {
	var evs []struct{ ID, Type string }
	if err := c.ctl.Get(ctx, "/stripe/events", &evs); err != nil {
		return nil, err
	}
	evs = evs[min(c.firstEvent, len(evs)):]
	ids := make([]string, 0, len(evs))
	for _, e := range evs {
		// A lost webhook of a type keysync does not act on never reaches it: the
		// catch-up lists only the handled types.
		if c.opts.WebhookDropRate > 0 && !events.Handled(e.Type) {
			continue
		}
		ids = append(ids, e.ID)
	}
	return ids, nil
}

// Report is what one scenario did and found.
type Report struct {
	Scenario string
	Took     time.Duration
	// EventsSent is how many events Stripe emitted (each delivered at least once, some
	// twice); EventsProcessed how many of them keysync stored and worked (processed,
	// or ignored as a type it does not act on); EventsFailed how many it gave up on.
	EventsSent, EventsProcessed, EventsFailed int
	// Deliveries is how many webhook requests Stripe made; Refused how many were not
	// acknowledged (503 while Postgres was down, no replica reachable).
	Deliveries, Refused int
	// KeysChecked is how many subscriptions' keys were checked; KeysWrong how many were
	// not in their policy state (BeyondTarget included).
	KeysChecked, KeysWrong int
	// DuplicateCreates counts CreateKey calls that made a second key for a subscription.
	DuplicateCreates int
	// BeyondTarget counts keys that run more than a day past paid-through + 5 days.
	BeyondTarget int
	// Notes say what the scenario did (kills, outage lengths, faults served).
	Notes []string
	// Problems are the first few wrong keys and errors.
	Problems []string
}

// OK is true when nothing was lost, nothing is wrong and nothing was doubled.
func (r Report) OK() bool {
	return len(r.Problems) == 0 && r.EventsSent > 0 && r.EventsProcessed == r.EventsSent && r.EventsFailed == 0 &&
		r.KeysChecked > 0 && r.KeysWrong == 0 && r.DuplicateCreates == 0 && r.BeyondTarget == 0
}

func (r *Report) problem(format string, a ...any) {
	if len(r.Problems) < 10 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
	}
}

// check fills the report's counts: events against keysync's table, every key against
// the policy, CreateKey calls against the subscriptions they were for.
func (c *Cluster) check(ctx context.Context, r *Report) error {
	ids, err := c.eventIDs(ctx)
	if err != nil {
		return err
	}
	r.EventsSent = len(ids)
	if err := c.db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status IN ('processed', 'ignored')), count(*) FILTER (WHERE status = 'failed')
		FROM stripe_events WHERE id = ANY($1)`, ids).Scan(&r.EventsProcessed, &r.EventsFailed); err != nil {
		return err
	}
	st, err := c.delivery(ctx)
	if err != nil {
		return err
	}
	r.Deliveries, r.Refused = st.Stats.Attempts, st.Stats.Failed
	if st.Stats.GaveUp > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("Stripe gave up on %d events (the catch-up brought them)", st.Stats.GaveUp))
	}

	keys, err := c.ctl.Keys(ctx, product)
	if err != nil {
		return err
	}
	bySub := map[string][]sandbox.Key{}
	for _, k := range keys {
		if sub, ok := syncer.MarkedSubscription(k.Notes); ok {
			bySub[sub] = append(bySub[sub], k)
		}
	}
	var calls []struct {
		Method  string
		Params  map[string][]string
		Status  int
		Message string
		Applied bool
	}
	if err := c.ctl.Get(ctx, "/cryptolens/calls", &calls); err != nil {
		return err
	}
	creates := map[string]int{}
	for _, call := range calls {
		if call.Method == "CreateKey" && call.Applied && len(call.Params["notes"]) > 0 {
			sub, _ := syncer.MarkedSubscription(call.Params["notes"][0])
			creates[sub]++
		}
	}
	for _, sub := range c.subs {
		r.KeysChecked++
		s, err := c.ctl.Subscription(ctx, sub)
		if err != nil {
			return err
		}
		if n := creates[sub]; n > 1 {
			r.DuplicateCreates += n - 1
			r.problem("%s: %d CreateKey calls", sub, n)
		}
		ks := bySub[sub]
		if len(ks) != 1 {
			r.KeysWrong++
			r.problem("%s: %d keys", sub, len(ks))
			continue
		}
		item := s.Subscription.Items[0]
		want := plans[c.planOf[item.Price]]
		want.Machines *= int(item.Quantity)
		if err := sandbox.Check(ks[0], s, 5, want); err != nil {
			r.KeysWrong++
			if errors.Is(err, sandbox.ErrBeyondTarget) {
				r.BeyondTarget++
			}
			// The key's mutating calls tell how it got there.
			var history []string
			for _, call := range calls {
				if k := call.Params["key"]; len(k) > 0 && k[0] == ks[0].Key && call.Method != "GetKey" {
					history = append(history, fmt.Sprintf("%s%v=%d/%v", call.Method, call.Params, call.Status, call.Applied))
				}
			}
			r.problem("%s (%s): %v; calls: %s", sub, s.Subscription.Status, err, strings.Join(history, "; "))
		}
	}
	return nil
}
