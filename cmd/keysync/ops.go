package main

import (
	"context"
	"fmt"
	"io"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// operatorEngine opens the database and returns a Syncer for an operator command.
func operatorEngine(ctx context.Context, cfg config, log zerolog.Logger, dryRun bool) (*syncer.Syncer, func(), error) {
	parts, err := newParts(cfg, log, nil)
	if err != nil {
		return nil, nil, err
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		return nil, nil, err
	}
	st, err := postgres.Migrations(ctx, pool)
	if err != nil || !st.Current() {
		pool.Close()
		if err == nil {
			err = fmt.Errorf("the database schema is not current (%s): run keysync migrate", st)
		}
		return nil, nil, err
	}
	e := syncer.New(syncer.Deps{Stripe: parts.stripe, Cryptolens: parts.crypto, Store: postgres.NewStore(pool), Mapping: parts.mapping, Log: log},
		syncer.Options{Policy: parts.policy, DryRun: dryRun || cfg.DryRun, WriteStripeMetadata: cfg.WriteStripeMetadata, Now: parts.crypto.Now})
	return e, pool.Close, nil
}

func operatorName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "cli"
}

// syncCmd runs one Sync now, as the operator, and prints what it did.
func syncCmd(ctx context.Context, cfg config, log zerolog.Logger, args []string, out io.Writer) error {
	dryRun := false
	var subs []string
	for _, a := range args {
		switch {
		case a == "--dry-run":
			dryRun = true
		case strings.HasPrefix(a, "sub_"):
			subs = append(subs, a)
		default:
			return fmt.Errorf("%w: sync takes a subscription id (sub_...) and optionally --dry-run", errUsage)
		}
	}
	if len(subs) != 1 {
		return fmt.Errorf("%w: sync takes one subscription id", errUsage)
	}
	e, done, err := operatorEngine(ctx, cfg, log, dryRun)
	if err != nil {
		return err
	}
	defer done()
	res, err := e.Sync(ctx, subs[0], syncer.Cause{Kind: syncer.CauseOperator, ID: operatorName()})
	if err != nil {
		return err
	}
	mode := "applied"
	if dryRun || cfg.DryRun {
		mode = "dry run: nothing sent"
	}
	switch {
	case res.Unmapped:
		fmt.Fprintf(out, "%s maps to no plan: no license\n", subs[0])
	case len(res.Actions) == 0:
		fmt.Fprintf(out, "%s: key %s already as the policy wants; nothing to do\n", subs[0], res.Key)
	default:
		fmt.Fprintf(out, "%s: key %s, %d action(s) (%s):\n", subs[0], res.Key, len(res.Actions), mode)
		for _, a := range res.Actions {
			fmt.Fprintf(out, "  %s\n", describe(a))
		}
	}
	return nil
}

// statusCmd prints Stripe's view, keysync's row, the key, the desired state and what a
// Sync would do now, side by side. It changes nothing.
func statusCmd(ctx context.Context, cfg config, log zerolog.Logger, args []string, out io.Writer) error {
	if len(args) != 1 || !strings.HasPrefix(args[0], "sub_") {
		return fmt.Errorf("%w: status takes one subscription id (sub_...)", errUsage)
	}
	e, done, err := operatorEngine(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	defer done()
	p, err := e.Preview(ctx, args[0])
	if err != nil {
		return err
	}
	day := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04")
	}
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintf(w, "subscription\t%s\n", args[0])
	fmt.Fprintf(w, "Stripe\tstatus %s, paid through %s\n", p.Status, day(p.PaidThrough))
	if p.Found {
		fmt.Fprintf(w, "keysync\tkey %s, blocked by keysync %v, last synced %s\n", deref(p.Row.LicenseKey), p.Row.BlockedByKeysync, day(derefTime(p.Row.LastSyncedAt)))
	} else {
		fmt.Fprintf(w, "keysync\tno mapping row yet\n")
	}
	if p.Key.Exists {
		fmt.Fprintf(w, "Cryptolens\tkey %s expires %s, blocked %v, features %s, machines %d\n", p.Key.Key, day(p.Key.Expires), p.Key.Blocked, features(p.Key.Features), p.Key.MaxMachines)
	} else {
		fmt.Fprintf(w, "Cryptolens\tno key\n")
	}
	switch {
	case !p.Desired.Mapped:
		fmt.Fprintf(w, "policy\tunmapped: no license\n")
	case p.Desired.Block:
		fmt.Fprintf(w, "policy\tblocked (%s)\n", p.Desired.Reason)
	default:
		fmt.Fprintf(w, "policy\tproduct %d, expires %s, features %s, machines %s\n", p.Desired.ProductID, day(p.Desired.Expires), desiredFeatures(p.Desired), machines(p.Desired.Machines))
	}
	if len(p.Actions) == 0 {
		fmt.Fprintf(w, "a sync now\twould change nothing\n")
	}
	for i, a := range p.Actions {
		label := ""
		if i == 0 {
			label = "a sync now"
		}
		fmt.Fprintf(w, "%s\t%s\n", label, describe(a))
	}
	return w.Flush()
}

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
