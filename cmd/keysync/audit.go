package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keysync/keysync/internal/postgres"
)

// audit prints audit rows, newest first, filtered, as a table, JSON or CSV. It reads
// Postgres directly: it needs only DATABASE_URL.
func audit(ctx context.Context, cfg config, args []string, stdout io.Writer, now time.Time) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f postgres.AuditFilter
	fs.StringVar(&f.Subscription, "subscription", "", "a Stripe subscription id")
	fs.StringVar(&f.Customer, "customer", "", "a Stripe customer id")
	fs.StringVar(&f.LicenseKey, "key", "", "a license key")
	fs.StringVar(&f.Action, "action", "", "create_key, extend, block, unblock, add_feature, remove_feature, machine_limit, adopt_key, skip_unmapped, error")
	fs.StringVar(&f.Outcome, "outcome", "", "applied, dry_run or failed")
	fs.StringVar(&f.Cause, "cause", "", "webhook, sweep, catch_up or operator")
	since := fs.String("since", "", "a duration back from now (24h, 7d) or an RFC 3339 time")
	until := fs.String("until", "", "an RFC 3339 time")
	fs.IntVar(&f.Limit, "limit", 50, "rows per page (at most 10000)")
	fs.Int64Var(&f.BeforeID, "before-id", 0, "the next page: rows older than this id")
	format := fs.String("format", "table", "table, json or csv")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: audit: %v", errUsage, err)
	}
	var err error
	if f.Since, err = parseSince(*since, now); err != nil {
		return fmt.Errorf("%w: audit --since: %v", errUsage, err)
	}
	if *until != "" {
		if f.Until, err = time.Parse(time.RFC3339, *until); err != nil {
			return fmt.Errorf("%w: audit --until: want an RFC 3339 time", errUsage)
		}
	}
	if *format != "table" && *format != "json" && *format != "csv" {
		return fmt.Errorf("%w: audit --format takes table, json or csv", errUsage)
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := postgres.NewStore(pool).QueryAudit(ctx, f)
	if err != nil {
		return err
	}
	switch *format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []postgres.AuditRecord{}
		}
		return enc.Encode(rows)
	case "csv":
		w := csv.NewWriter(stdout)
		_ = w.Write([]string{"id", "at", "subscription_id", "customer_id", "license_key", "action", "outcome", "cause", "cause_id", "params", "message"})
		for _, r := range rows {
			params, _ := json.Marshal(r.Params)
			_ = w.Write([]string{strconv.FormatInt(r.ID, 10), r.At.UTC().Format(time.RFC3339), deref(r.SubscriptionID), deref(r.CustomerID),
				deref(r.LicenseKey), r.Action, r.Outcome, r.Cause, deref(r.CauseID), string(params), deref(r.Message)})
		}
		w.Flush()
		return w.Error()
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAT (UTC)\tACTION\tOUTCOME\tSUBSCRIPTION\tKEY\tCAUSE\tDETAILS")
	for _, r := range rows {
		params, _ := json.Marshal(r.Params)
		detail := string(params)
		if m := deref(r.Message); m != "" {
			detail += " " + m
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s %s\t%s\n", r.ID, r.At.UTC().Format("2006-01-02 15:04:05"), r.Action, r.Outcome,
			deref(r.SubscriptionID), deref(r.LicenseKey), r.Cause, deref(r.CauseID), detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rows) == f.Limit && len(rows) > 0 {
		fmt.Fprintf(stdout, "(more: --before-id %d)\n", rows[len(rows)-1].ID)
	}
	return nil
}

// parseSince reads "24h", "7d", "90m" (back from now) or an RFC 3339 time; "" is no bound.
func parseSince(v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return now.AddDate(0, 0, -n), nil
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q is neither a duration (24h, 7d) nor an RFC 3339 time", v)
	}
	return now.Add(-d), nil
}

func deref[T any](p *T) string {
	if p == nil {
		return ""
	}
	return fmt.Sprint(*p)
}
