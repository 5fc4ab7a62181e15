package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// operatorEngine returns a Syncer for an operator command, and the function that
// closes its database pool.
func operatorEngine(ctx context.Context, cfg config, log zerolog.Logger, dryRun bool) (*syncer.Syncer, func(), error) {
	// Credentials before the database, as serve checks them.
	parts, err := newParts(cfg, log, nil)
	if err != nil {
		return nil, nil, err
	}
	pool, err := openCurrent(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	s := syncer.New(syncer.Deps{Stripe: parts.stripe, Cryptolens: parts.crypto, Store: postgres.NewStore(pool), Mapping: parts.mapping, Log: log},
		syncer.Options{Policy: parts.policy, DryRun: dryRun || cfg.DryRun, WriteStripeMetadata: cfg.WriteStripeMetadata, Now: parts.crypto.Now})
	return s, pool.Close, nil
}

// openCurrent opens a small pool for an operator command, and refuses a schema that
// is not current: only serve and migrate migrate, and an operator command must not
// write through a schema it does not know.
func openCurrent(ctx context.Context, cfg config) (*pgxpool.Pool, error) {
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		return nil, err
	}
	if _, err := requireCurrentSchema(ctx, pool, "run keysync migrate"); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// operatorName is who the audit log says ran an operator command: the OS user.
func operatorName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "cli"
}

// syncCmd runs one Sync now, as the operator, and prints what it did.
type syncCmd struct {
	dryRun bool
	// id is a subscription (sub_...) or a one-time purchase (cs_..., in_...).
	id string
}

func (c *syncCmd) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.dryRun, "dry-run", false, "plan and audit the actions as dry_run; send nothing to Cryptolens or Stripe")
}

func (c *syncCmd) args(rest []string) error {
	if len(rest) != 1 || !syncable(rest[0]) {
		return errors.New("sync takes one subscription id (sub_...) or purchase id (cs_..., in_...) and optionally --dry-run")
	}
	c.id = rest[0]
	return nil
}

// syncable says id names what keysync syncs: a subscription or a one-time purchase.
func syncable(id string) bool { return strings.HasPrefix(id, "sub_") || syncer.IsPurchase(id) }

func (c *syncCmd) run(ctx context.Context, e cmdEnv) error {
	dryRun := c.dryRun || e.cfg.DryRun
	s, done, err := operatorEngine(ctx, e.cfg, e.log, dryRun)
	if err != nil {
		return err
	}
	defer done()

	// The audit log names the operator, as it names the event or sweep for other Syncs.
	cause := syncer.Cause{Kind: syncer.CauseOperator, ID: operatorName()}
	sync := s.Sync
	if syncer.IsPurchase(c.id) {
		sync = s.SyncPurchase
	}
	res, err := sync(ctx, c.id, cause)
	if err != nil {
		return err
	}

	mode := "applied"
	if dryRun {
		mode = "dry run: nothing sent"
	}
	keys := make([]string, len(res.Keys))
	for i, k := range res.Keys {
		keys[i] = k.Key
	}
	switch {
	case res.Unmapped:
		fmt.Fprintf(e.stdout, "%s maps to no plan: no license\n", c.id)
	case len(res.Keys) == 0 && res.Status != "":
		fmt.Fprintf(e.stdout, "%s: %s, no key yet\n", c.id, res.Status)
	case len(res.Actions) == 0:
		fmt.Fprintf(e.stdout, "%s: key %s already as the policy wants; nothing to do\n", c.id, strings.Join(keys, ", "))
	default:
		fmt.Fprintf(e.stdout, "%s: key %s, %d action(s) (%s):\n", c.id, strings.Join(keys, ", "), len(res.Actions), mode)
		for _, a := range res.Actions {
			fmt.Fprintf(e.stdout, "  %s\n", describe(a))
		}
	}
	return nil
}

// statusCmd prints Stripe's view, keysync's row, the keys, the desired state and what a
// Sync would do now, side by side. It changes nothing.
type statusCmd struct {
	noFlags
	// id is a subscription (sub_...) or a one-time purchase (cs_..., in_...).
	id string
}

func (c *statusCmd) args(rest []string) error {
	if len(rest) != 1 || !syncable(rest[0]) {
		return errors.New("status takes one subscription id (sub_...) or purchase id (cs_..., in_...)")
	}
	c.id = rest[0]
	return nil
}

func (c *statusCmd) run(ctx context.Context, e cmdEnv) error {
	// A dry-run engine: status changes nothing, whatever the preview does.
	s, done, err := operatorEngine(ctx, e.cfg, e.log, true)
	if err != nil {
		return err
	}
	defer done()
	w := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	if syncer.IsPurchase(c.id) {
		p, err := s.PreviewPurchase(ctx, c.id)
		if err != nil {
			return err
		}
		printPurchaseStatus(w, c.id, p)
		return w.Flush()
	}
	p, err := s.Preview(ctx, c.id)
	if err != nil {
		return err
	}

	// One row per source, in the order a Sync reads them, then the verdict.
	fmt.Fprintf(w, "subscription\t%s\n", c.id)
	fmt.Fprintf(w, "Stripe\tstatus %s, paid through %s, entitled through %s\n", p.Status, day(p.PaidThrough), day(p.EntitledThrough))
	if p.Found {
		fmt.Fprintf(w, "keysync\tkey %s, blocked by keysync %v, last synced %s\n", deref(p.Row.LicenseKey), p.Row.BlockedByKeysync, day(derefTime(p.Row.LastSyncedAt)))
		for _, k := range p.Row.Bundle {
			fmt.Fprintf(w, "\tbundle: key %s (product %d), blocked by keysync %v\n", deref(k.LicenseKey), k.ProductID, k.BlockedByKeysync)
		}
	} else {
		fmt.Fprintf(w, "keysync\tno mapping row yet\n")
	}
	printKeys(w, p.Keys)
	return w.Flush()
}

// day prints a time to the minute, "-" for none.
func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04")
}

// printKeys prints, per key, the key as Cryptolens has it, the policy's wish and what a
// Sync would do now; no key at all is an unmapped subscription or purchase.
func printKeys(w io.Writer, keys []syncer.KeyPreview) {
	if len(keys) == 0 {
		fmt.Fprintf(w, "policy\tunmapped: no license\n")
		fmt.Fprintf(w, "a sync now\twould change nothing\n")
		return
	}
	for _, k := range keys {
		if k.Key.Exists {
			fmt.Fprintf(w, "Cryptolens\tkey %s expires %s, blocked %v, features %s, machines %d\n", k.Key.Key, day(k.Key.Expires), k.Key.Blocked, features(k.Key.Features), k.Key.MaxMachines)
		} else {
			fmt.Fprintf(w, "Cryptolens\tno key in product %d\n", k.Desired.ProductID)
		}
		expires := day(k.Desired.Expires)
		if k.Desired.Perpetual {
			expires = "never (perpetual)"
		}
		switch {
		case k.Desired.Block:
			fmt.Fprintf(w, "policy\tproduct %d, blocked (%s)\n", k.Desired.ProductID, k.Desired.Reason)
		case !k.Desired.NeedKey && !k.Key.Exists:
			fmt.Fprintf(w, "policy\tproduct %d, no key yet\n", k.Desired.ProductID)
		default:
			fmt.Fprintf(w, "policy\tproduct %d, expires %s, features %s, machines %s\n", k.Desired.ProductID, expires, desiredFeatures(k.Desired), machines(k.Desired.Machines))
		}
		if len(k.Actions) == 0 {
			fmt.Fprintf(w, "a sync now\twould change nothing\n")
		}
		for i, a := range k.Actions {
			label := ""
			if i == 0 {
				label = "a sync now"
			}
			fmt.Fprintf(w, "%s\t%s\n", label, describe(a))
		}
	}
}

// printPurchaseStatus prints a one-time purchase's status: Stripe's, keysync's row, and
// per key what printKeys prints.
func printPurchaseStatus(w io.Writer, id string, p syncer.PurchasePreview) {
	fmt.Fprintf(w, "purchase\t%s\n", id)
	if p.Session != "" {
		fmt.Fprintf(w, "Stripe\tthe post-payment invoice of Checkout Session %s: see keysync status %s\n", p.Session, p.Session)
		return
	}
	fmt.Fprintf(w, "Stripe\tpayment %s\n", p.Status)
	if p.Found {
		keys := make([]string, len(p.Row.Keys))
		for i, k := range p.Row.Keys {
			keys[i] = fmt.Sprintf("%s (product %d, blocked by keysync %v)", deref(k.LicenseKey), k.ProductID, k.BlockedByKeysync)
		}
		if len(keys) == 0 {
			keys = []string{"none"}
		}
		fmt.Fprintf(w, "keysync\tstatus %s, refunded %v, disputed %v, keys %s, last synced %s\n", p.Row.Status, p.Row.Refunded, p.Row.Disputed,
			strings.Join(keys, "; "), day(derefTime(p.Row.LastSyncedAt)))
	} else {
		fmt.Fprintf(w, "keysync\tno purchase row yet\n")
	}
	printKeys(w, p.Keys)
}

// reconcileCmd runs one sweep now and prints its summary. The Syncs it queues are
// worked by the running keysync serve.
type reconcileCmd struct{ once bool }

func (c *reconcileCmd) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.once, "once", false, "sweep once, now (required: keysync serve runs the scheduled sweeps)")
}

func (c *reconcileCmd) args(rest []string) error {
	if !c.once || len(rest) > 0 {
		return errors.New("reconcile takes --once (serve runs the scheduled sweeps)")
	}
	return nil
}

func (c *reconcileCmd) run(ctx context.Context, e cmdEnv) error {
	// Credentials before the database, as serve checks them.
	parts, err := newParts(e.cfg, e.log, nil)
	if err != nil {
		return err
	}
	pool, err := openCurrent(ctx, e.cfg)
	if err != nil {
		return err
	}
	defer pool.Close()

	// Insert-only: this process queues the Syncs and exits; serve works them.
	client, err := jobs.NewClient(pool, jobs.Config{})
	if err != nil {
		return err
	}
	sweeper := parts.sweeper(postgres.NewStore(pool), client, e.log)

	fmt.Fprintln(e.stdout, "sweeping: listing every subscription and every key ...")
	sum, err := sweeper.RunOnce(ctx)
	if err != nil {
		return err
	}

	// The sweep's run lock makes a concurrent sweep a no-op, not a second sweep.
	if sum.Skipped {
		fmt.Fprintln(e.stdout, "another sweep is running (keysync serve's periodic sweep, or another reconcile): nothing done")
		return nil
	}
	fmt.Fprintf(e.stdout, "sweep run %d: %d subscriptions scanned (and %d one-time purchases) in %s, %d drifted, %d orphan keys\n",
		sum.RunID, sum.Scanned, sum.Purchases, sum.Took.Round(time.Millisecond), len(sum.Drifted), len(sum.Orphans))
	for _, d := range sum.Drifted {
		fmt.Fprintf(e.stdout, "  drift   %s: %s\n", d.ID(), d.Reason)
	}
	for _, o := range sum.Orphans {
		fmt.Fprintf(e.stdout, "  orphan  %s (left alone)\n", o)
	}
	if len(sum.Drifted) > 0 {
		fmt.Fprintf(e.stdout, "%d Syncs queued; the running keysync works them (keysync serve)\n", len(sum.Drifted))
	}
	return nil
}

// describe puts one action in words, for sync's and status's output.
func describe(a license.Action) string {
	switch a.Kind {
	case license.CreateKey:
		return fmt.Sprintf("create_key: %d days (to %s), features %s, %d machines", a.Days, a.NewExpires.UTC().Format("2006-01-02"), features(a.Features), a.Machines)
	case license.Extend:
		return fmt.Sprintf("extend: +%d days, %s -> %s", a.Days, a.OldExpires.UTC().Format("2006-01-02 15:04"), a.NewExpires.UTC().Format("2006-01-02 15:04"))
	case license.AddFeature, license.RemoveFeature:
		return fmt.Sprintf("%s: F%d", a.Kind, a.Feature)
	case license.MachineLimit:
		return fmt.Sprintf("machine_limit: %d", a.Machines)
	case license.Block, license.Unblock:
		return fmt.Sprintf("%s: %s", a.Kind, a.Reason)
	}
	return string(a.Kind)
}

// features lists the features that are on as F1+F3, or "none".
func features(f [8]bool) string {
	var on []string
	for i, v := range f {
		if v {
			on = append(on, fmt.Sprintf("F%d", i+1))
		}
	}
	if len(on) == 0 {
		return "none"
	}
	return strings.Join(on, "+")
}

func desiredFeatures(d license.Desired) string {
	var f [8]bool
	for n, on := range d.Features {
		f[n-1] = on
	}
	return features(f)
}

func machines(m *int) string {
	if m == nil {
		return "(not managed)"
	}
	return fmt.Sprint(*m)
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
