package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keysync/keysync/internal/cryptolens"
)

// Scenario is one chaos run.
type Scenario struct {
	Name string
	// What says what it does, for the printed table.
	What string
	Run  func(ctx context.Context, opts Options) (Report, error)
}

// Scenarios are `make chaos`'s runs, each bounded (a few minutes at most) and on
// loopback only.
func Scenarios() []Scenario {
	return []Scenario{
		{"replica-kills", "3 replicas; a renewal storm of ~20,000 events (5% duplicated, reordered); a replica SIGKILLed every 3s and restarted",
			func(ctx context.Context, o Options) (Report, error) {
				return ReplicaKills(ctx, o, 500, 6, 3*time.Second)
			}},
		{"postgres-restart", "3 replicas; a storm of ~9,000 events; Postgres crashed (immediate stop) mid-storm and started again 5s later",
			func(ctx context.Context, o Options) (Report, error) {
				return PostgresRestart(ctx, o, 300, 4, 5*time.Second)
			}},
		{"cryptolens-faults", "2 replicas; renewals throughout; Cryptolens answers 30% errors and timeouts for a minute, then is down for a minute",
			func(ctx context.Context, o Options) (Report, error) {
				return CryptolensFaults(ctx, o, 200, time.Minute, time.Minute)
			}},
		{"stripe-429-sweep", "2 replicas; 600 subscriptions; keys changed behind keysync's back; a sweep (keysync reconcile --once) while Stripe answers bursts of 429",
			func(ctx context.Context, o Options) (Report, error) { return Stripe429Sweep(ctx, o, 600) }},
		{"basil-lost-webhooks", "2 replicas; the account and its endpoint on API version 2025-03-31.basil; 30% of webhooks lost for good; 300 checkouts and three rounds of seat changes: the catch-up must bring every lost event",
			func(ctx context.Context, o Options) (Report, error) { return BasilLostWebhooks(ctx, o, 300) }},
		{"block-expired-faults", "2 replicas; Block Expired Licenses on; half the cards decline at renewal, keys lapse and Cryptolens blocks them; the customers pay while Cryptolens answers 20% errors and loses 10% of answers",
			func(ctx context.Context, o Options) (Report, error) { return BlockExpiredFaults(ctx, o, 200) }},
	}
}

// ReplicaKills runs three replicas through a renewal storm while one of them is
// SIGKILLed every `every` and restarted.
func ReplicaKills(ctx context.Context, opts Options, subs, renewals int, every time.Duration) (Report, error) {
	r := Report{Scenario: "replica-kills"}
	c, err := NewCluster(ctx, opts, 3)
	if err != nil {
		return r, err
	}
	defer c.Close()
	stop := c.killer(ctx, every, c.opts.Seed)
	err = c.storm(ctx, subs, renewals)
	if err == nil {
		err = c.ctl.Flush(ctx)
	}
	kills, killErr := stop()
	if err = errors.Join(err, killErr); err != nil {
		return r, err
	}
	c.progress("storm delivered; %d SIGKILLs so far; waiting for keysync to finish", kills)
	r.Notes = append(r.Notes, fmt.Sprintf("%d SIGKILLs (every %s, each replica restarted at once)", kills, every))
	return c.finish(ctx, r)
}

// storm checks out subs subscriptions and renews them all renewals times, as fast as
// the sandbox takes it; at the third renewal every tenth subscription goes to 3 seats.
func (c *Cluster) storm(ctx context.Context, subs, renewals int) error {
	if err := c.Checkout(ctx, subs); err != nil {
		return err
	}
	c.progress("%d subscriptions checked out", subs)
	for i := range renewals {
		if err := c.renew(ctx); err != nil {
			return err
		}
		if i == 2 {
			if err := c.reseat(ctx, 10, 3); err != nil {
				return err
			}
		}
	}
	c.progress("%d renewals of every subscription emitted", renewals)
	return nil
}

// finish waits for keysync to settle, checks, and notes what the balancer saw.
func (c *Cluster) finish(ctx context.Context, r Report) (Report, error) {
	if err := c.Settle(ctx, 5*time.Minute); err != nil {
		r.problem("%v", err)
	}
	for _, rep := range c.replicas {
		select {
		case <-rep.proc.Exited():
			r.problem("%s exited on its own (log: %s)", rep.name, rep.proc.Log)
		default:
		}
	}
	if n := c.lb.count(503); n > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d webhooks answered 503 and redelivered", n))
	}
	if n := c.lb.count(502); n > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d webhooks found no replica and were redelivered", n))
	}
	err := c.check(ctx, &r)
	r.Took = time.Since(c.started)
	c.progress("checked %d keys: %d wrong", r.KeysChecked, r.KeysWrong)
	return r, err
}

// PostgresRestart crashes Postgres (an immediate stop) in the middle of a storm and
// starts it again after outage. It needs opts.Postgres.
func PostgresRestart(ctx context.Context, opts Options, subs, renewals int, outage time.Duration) (Report, error) {
	r := Report{Scenario: "postgres-restart"}
	if opts.Postgres == nil {
		return r, errors.New("postgres-restart needs a throwaway Postgres cluster it may restart")
	}
	c, err := NewCluster(ctx, opts, 3)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := c.Checkout(ctx, subs); err != nil {
		return r, err
	}
	if err := c.renew(ctx); err != nil {
		return r, err
	}
	ids, err := c.eventIDs(ctx)
	if err != nil {
		return r, err
	}
	// Crash once a third of what was emitted so far has been acknowledged.
	if err := c.waitAcked(ctx, len(ids)/3, 2*time.Minute); err != nil {
		return r, err
	}
	down := time.Now()
	if err := opts.Postgres.Halt(ctx); err != nil {
		return r, err
	}
	c.progress("Postgres crashed (pg_ctl stop -m immediate)")
	for i := 1; i < renewals; i++ { // the storm goes on while the database is down
		if err := c.renew(ctx); err != nil {
			return r, err
		}
	}
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(time.Until(down.Add(outage))): // the outage's length, not a wait for work
	}
	if err := opts.Postgres.Start(ctx); err != nil {
		return r, err
	}
	c.progress("Postgres started again after %s", time.Since(down).Round(100*time.Millisecond))
	r.Notes = append(r.Notes, fmt.Sprintf("Postgres down for %s (crash, then crash recovery)", time.Since(down).Round(100*time.Millisecond)))
	return c.finish(ctx, r)
}

// CryptolensFaults renews subscriptions throughout while Cryptolens answers 30% errors
// and timeouts for faulty, then is down for down; it then recovers.
func CryptolensFaults(ctx context.Context, opts Options, subs int, faulty, down time.Duration) (Report, error) {
	r := Report{Scenario: "cryptolens-faults"}
	c, err := NewCluster(ctx, opts, 2)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := c.Checkout(ctx, subs); err != nil {
		return r, err
	}
	if err := c.Settle(ctx, 2*time.Minute); err != nil {
		return r, err
	}
	phases := []struct {
		name   string
		faults map[string]any
		length time.Duration
	}{
		{"30% errors and timeouts", map[string]any{"error_rate": 0.15, "timeout_rate": 0.10, "lost_answer_rate": 0.05}, faulty},
		{"down", map[string]any{"down": true}, down},
	}
	for _, ph := range phases {
		if err := c.ctl.Post(ctx, "/cryptolens/faults", ph.faults, nil); err != nil {
			return r, err
		}
		c.progress("Cryptolens: %s for %s", ph.name, ph.length)
		end := time.Now().Add(ph.length)
		for i := range 4 { // four renewals spread over the phase
			if err := c.renew(ctx); err != nil {
				return r, err
			}
			select {
			case <-ctx.Done():
				return r, ctx.Err()
			case <-time.After(time.Until(end.Add(-ph.length * time.Duration(3-i) / 4))):
			}
		}
	}
	if err := c.ctl.Post(ctx, "/cryptolens/faults", map[string]any{}, nil); err != nil {
		return r, err
	}
	back := time.Now()
	c.progress("Cryptolens back")
	faults, err := c.cryptolensFaults(ctx)
	if err != nil {
		return r, err
	}
	if err := c.Settle(ctx, 5*time.Minute); err != nil {
		r.problem("%v", err)
	}
	r.Notes = append(r.Notes, fmt.Sprintf("Cryptolens: %d calls failed, timed out or lost their answer; keysync caught up %s after it came back",
		faults, time.Since(back).Round(100*time.Millisecond)))
	return c.finish(ctx, r)
}

// BasilLostWebhooks runs an account whose events come in 2025-03-31.basil (where invoices
// lose `subscription` and charges lose `invoice`), on its webhook endpoint and in the
// Events API alike, and loses 30% of the webhooks for good: keysync must read each
// event's object at its own API version and bring every lost event through the catch-up.
// The changes are checkouts and seat changes within a day: a renewal would move the test
// clock a month in seconds, past the Events API's 30 days, where keysync rightly stops
// catching up event by event and sweeps instead.
func BasilLostWebhooks(ctx context.Context, opts Options, subs int) (Report, error) {
	r := Report{Scenario: "basil-lost-webhooks"}
	opts.EventVersion, opts.WebhookDropRate = "2025-03-31.basil", 0.3
	c, err := NewCluster(ctx, opts, 2)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := c.Checkout(ctx, subs); err != nil {
		return r, err
	}
	for i := range 3 {
		if err := c.ctl.Advance(ctx, time.Hour); err != nil {
			return r, err
		}
		if err := c.reseat(ctx, 2+i, 2+i); err != nil {
			return r, err
		}
	}
	if err := c.Settle(ctx, 5*time.Minute); err != nil {
		r.problem("%v", err)
	}
	st, err := c.delivery(ctx)
	if err != nil {
		return r, err
	}
	var fromCatchUp int
	if err := c.db.QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE source = 'events_api'`).Scan(&fromCatchUp); err != nil {
		return r, err
	}
	r.Notes = append(r.Notes, fmt.Sprintf("events in 2025-03-31.basil; Stripe lost %d of %d webhooks for good; the catch-up brought %d events",
		st.Stats.Dropped, st.Stats.Events, fromCatchUp))
	if st.Stats.Dropped == 0 || fromCatchUp == 0 {
		r.problem("no webhook was lost (%d) or the catch-up brought none (%d): the scenario tested nothing", st.Stats.Dropped, fromCatchUp)
	}
	return c.finish(ctx, r)
}

// BlockExpiredFaults runs with Cryptolens' "Block Expired Licenses" on. Every other
// customer's card declines at a renewal: the subscription goes past_due, its key lapses
// at the end of the buffer and Cryptolens blocks it. keysync must leave those blocks
// alone while the key stays expired (lifting one would only toggle it: Cryptolens blocks
// it again within the hour). Then the customers pay while Cryptolens answers errors and
// loses answers: keysync must extend every key and lift every expiry block, including
// where an extension went through and the unblock failed.
func BlockExpiredFaults(ctx context.Context, opts Options, subs int) (Report, error) {
	r := Report{Scenario: "block-expired-faults"}
	opts.SandboxFlags = append(slices.Clone(opts.SandboxFlags), "-block-expired")
	c, err := NewCluster(ctx, opts, 2)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := c.Checkout(ctx, subs); err != nil {
		return r, err
	}
	if err := c.Settle(ctx, 2*time.Minute); err != nil {
		return r, err
	}

	// Every other card declines from the next renewal on.
	var declining []string
	for i, id := range c.subs {
		if i%2 == 1 {
			continue
		}
		s, err := c.ctl.Subscription(ctx, id)
		if err != nil {
			return r, err
		}
		if err := c.ctl.Post(ctx, "/stripe/customers/"+s.Subscription.Customer+"/card_declines", map[string]any{"declines": true}, nil); err != nil {
			return r, err
		}
		declining = append(declining, id)
	}
	if err := c.renew(ctx); err != nil {
		return r, err
	}
	if err := c.Settle(ctx, 2*time.Minute); err != nil {
		return r, err
	}

	// Six days on: past the 5-day buffer and Cryptolens' hour, before dunning's last
	// retry (7 days). Every declining customer's key has lapsed and is blocked.
	if err := c.ctl.Advance(ctx, 6*24*time.Hour); err != nil {
		return r, err
	}
	if err := c.Settle(ctx, 2*time.Minute); err != nil {
		return r, err
	}
	keys, err := c.ctl.Keys(ctx, product)
	if err != nil {
		return r, err
	}
	autoBlocked := 0
	for _, k := range keys {
		if k.Block {
			autoBlocked++
		}
	}
	if autoBlocked != len(declining) {
		r.problem("%d keys blocked after the lapse, want %d (one per declining card)", autoBlocked, len(declining))
	}
	unblocks, err := c.appliedCalls(ctx, "UnblockKey")
	if err != nil {
		return r, err
	}
	if unblocks != 0 {
		r.problem("keysync lifted %d expiry blocks of keys that stayed expired (Cryptolens blocks them again: toggling)", unblocks)
	}
	r.Notes = append(r.Notes, fmt.Sprintf("%d of %d keys lapsed and were blocked by Cryptolens; keysync lifted none of them while unpaid", autoBlocked, len(c.subs)))

	// The customers pay while Cryptolens misbehaves.
	if err := c.ctl.Post(ctx, "/cryptolens/faults", map[string]any{"error_rate": 0.2, "lost_answer_rate": 0.1}, nil); err != nil {
		return r, err
	}
	for _, id := range declining {
		s, err := c.ctl.Subscription(ctx, id)
		if err != nil {
			return r, err
		}
		if err := c.ctl.Post(ctx, "/stripe/customers/"+s.Subscription.Customer+"/card_declines", map[string]any{"declines": false}, nil); err != nil {
			return r, err
		}
		if err := c.ctl.Post(ctx, "/stripe/invoices/"+s.Subscription.LatestInvoice+"/pay", nil, nil); err != nil {
			return r, err
		}
	}
	if err := c.ctl.Flush(ctx); err != nil {
		return r, err
	}
	faults, err := c.cryptolensFaults(ctx)
	if err != nil {
		return r, err
	}
	if err := c.ctl.Post(ctx, "/cryptolens/faults", map[string]any{}, nil); err != nil {
		return r, err
	}
	if err := c.Settle(ctx, 5*time.Minute); err != nil {
		r.problem("%v", err)
	}
	if unblocks, err = c.appliedCalls(ctx, "UnblockKey"); err != nil {
		return r, err
	}
	r.Notes = append(r.Notes, fmt.Sprintf("%d customers paid while %d Cryptolens calls failed or lost their answer; keysync lifted %d expiry blocks",
		len(declining), faults, unblocks))
	return c.finish(ctx, r)
}

// appliedCalls counts the Cryptolens calls of method that changed a key.
func (c *Cluster) appliedCalls(ctx context.Context, method string) (int, error) {
	var calls []struct {
		Method  string
		Applied bool
	}
	if err := c.ctl.Get(ctx, "/cryptolens/calls", &calls); err != nil {
		return 0, err
	}
	n := 0
	for _, call := range calls {
		if call.Method == method && call.Applied {
			n++
		}
	}
	return n, nil
}

// cryptolensFaults counts the Cryptolens calls that got an injected fault.
func (c *Cluster) cryptolensFaults(ctx context.Context) (int, error) {
	var calls []struct {
		Status  int
		Result  int
		Message string
	}
	if err := c.ctl.Get(ctx, "/cryptolens/calls", &calls); err != nil {
		return 0, err
	}
	n := 0
	for _, call := range calls {
		if call.Result == -1 || call.Status >= 500 || call.Message == "Something went wrong" {
			n++
		}
	}
	return n, nil
}

// Small is the scenario `make test` runs: two replicas, 40 subscriptions renewed three
// times, one replica SIGKILLed mid-storm and restarted, and Cryptolens down for a few
// seconds during a renewal.
func Small(ctx context.Context, opts Options) (Report, error) {
	r := Report{Scenario: "small"}
	c, err := NewCluster(ctx, opts, 2)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := c.Checkout(ctx, 40); err != nil {
		return r, err
	}
	if err := c.renew(ctx); err != nil {
		return r, err
	}
	ids, err := c.eventIDs(ctx)
	if err != nil {
		return r, err
	}
	if err := c.waitAcked(ctx, len(ids)/2, time.Minute); err != nil {
		return r, err
	}
	if err := c.killAndRestart(ctx, c.replicas[0]); err != nil {
		return r, err
	}
	c.progress("%s SIGKILLed mid-storm and restarted", c.replicas[0].name)
	if err := c.renew(ctx); err != nil {
		return r, err
	}
	if err := c.ctl.Post(ctx, "/cryptolens/faults", map[string]any{"down": true}, nil); err != nil {
		return r, err
	}
	down := time.Now()
	if err := c.renew(ctx); err != nil {
		return r, err
	}
	// Keep it down until keysync has met the outage (it is working the renewal).
	for n := 0; n == 0; {
		if n, err = c.cryptolensFaults(ctx); err != nil {
			return r, err
		}
		if time.Since(down) > time.Minute {
			return r, errors.New("keysync made no Cryptolens call within a minute of the renewal")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(time.Until(down.Add(3 * time.Second))): // the outage's length
	}
	if err := c.ctl.Post(ctx, "/cryptolens/faults", map[string]any{}, nil); err != nil {
		return r, err
	}
	faults, err := c.cryptolensFaults(ctx)
	if err != nil {
		return r, err
	}
	r.Notes = append(r.Notes, "1 SIGKILL mid-storm", fmt.Sprintf("Cryptolens down %s: %d calls refused", time.Since(down).Round(100*time.Millisecond), faults))
	return c.finish(ctx, r)
}

// Stripe429Sweep changes keys behind keysync's back (features off, machine limits) and
// runs a sweep with `keysync reconcile --once` while Stripe answers bursts of 429.
func Stripe429Sweep(ctx context.Context, opts Options, subs int) (Report, error) {
	r := Report{Scenario: "stripe-429-sweep"}
	c, err := NewCluster(ctx, opts, 2)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if err := c.Checkout(ctx, subs); err != nil {
		return r, err
	}
	if err := c.renew(ctx); err != nil {
		return r, err
	}
	if err := c.Settle(ctx, 3*time.Minute); err != nil {
		return r, err
	}
	tampered, err := c.tamper(ctx)
	if err != nil {
		return r, err
	}
	c.progress("%d keys changed behind keysync's back", tampered)

	// 429 bursts: every Stripe request is refused for one second in three.
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for on := true; ; on = !on {
			faults, hold := map[string]any{"rate_limit_rate": 1}, time.Second
			if !on {
				faults, hold = map[string]any{}, 2*time.Second
			}
			_ = c.ctl.Post(ctx, "/stripe/faults", faults, nil)
			select {
			case <-done:
				return
			case <-time.After(hold):
			}
		}
	}()
	cmd := exec.CommandContext(ctx, c.opts.KeysyncBin, "reconcile", "--once")
	cmd.Env = append(slices.Clone(c.env), "LOG_LEVEL=warn")
	out, runErr := cmd.CombinedOutput()
	if runErr != nil {
		close(done)
		wg.Wait()
		return r, fmt.Errorf("keysync reconcile --once: %v: %s", runErr, lastLines(string(out), 5))
	}
	drifted := 0
	if m := regexp.MustCompile(`(\d+) drifted`).FindStringSubmatch(string(out)); m != nil {
		drifted, _ = strconv.Atoi(m[1])
	}
	c.progress("sweep found %d drifted; waiting for the Syncs", drifted)
	settleErr := c.Settle(ctx, 3*time.Minute)
	close(done)
	wg.Wait()
	if err := c.ctl.Post(ctx, "/stripe/faults", map[string]any{}, nil); err != nil {
		return r, err
	}
	var reqs struct{ Faulted map[int]int }
	if err := c.ctl.Get(ctx, "/stripe/requests", &reqs); err != nil {
		return r, err
	}
	if drifted < tampered {
		r.problem("the sweep found %d drifted subscriptions, but %d keys were changed", drifted, tampered)
	}
	if settleErr != nil {
		r.problem("%v", settleErr)
	}
	r.Notes = append(r.Notes, fmt.Sprintf("sweep: %d drifted of %d changed keys; Stripe answered %d requests with 429 (every request for 1s in 3)",
		drifted, tampered, reqs.Faulted[http.StatusTooManyRequests]))
	return c.finish(ctx, r)
}

// tamper changes keys directly in Cryptolens, as a vendor's support staff might: every
// third key's machine limit to 99, every fifth key's F1 off.
func (c *Cluster) tamper(ctx context.Context) (int, error) {
	cl, err := cryptolens.New(cryptolens.Config{BaseURL: c.Getenv("CRYPTOLENS_API_BASE"), Token: c.Getenv("CRYPTOLENS_TOKEN"), RateLimit: -1})
	if err != nil {
		return 0, err
	}
	keys, err := c.ctl.Keys(ctx, product)
	if err != nil {
		return 0, err
	}
	n := 0
	for i, k := range keys {
		changed := false
		if i%3 == 0 {
			if err := cl.MachineLockLimit(ctx, product, k.Key, 99); err != nil {
				return n, err
			}
			changed = true
		}
		if i%5 == 0 && k.Features[0] {
			if _, err := cl.RemoveFeature(ctx, product, k.Key, 1); err != nil {
				return n, err
			}
			changed = true
		}
		if changed {
			n++
		}
	}
	return n, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Run runs scenarios in order, each on its own fresh database created through
// newDatabase, and returns their reports. Logs go under opts.Dir/<scenario>.
func Run(ctx context.Context, opts Options, scenarios []Scenario, newDatabase func(ctx context.Context, name string) (string, error)) ([]Report, error) {
	var out []Report
	base := opts.Dir
	for _, sc := range scenarios {
		o := opts
		o.Dir = filepath.Join(base, sc.Name)
		url, err := newDatabase(ctx, "keysync_chaos_"+strings.ReplaceAll(sc.Name, "-", "_"))
		if err != nil {
			return out, err
		}
		o.DatabaseURL = url
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "\n== %s: %s\n", sc.Name, sc.What)
		}
		rep, err := sc.Run(ctx, o)
		if err != nil {
			rep.Scenario = sc.Name
			rep.problem("scenario error: %v", err)
		}
		out = append(out, rep)
	}
	return out, nil
}
