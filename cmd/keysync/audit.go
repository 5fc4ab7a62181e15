package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

// auditCmd prints audit rows, newest first, filtered, as a table, JSON or CSV. It
// reads Postgres directly: it needs only DATABASE_URL.
type auditCmd struct {
	now    time.Time // --since counts back from it
	filter postgres.AuditFilter
	since  string
	until  string
	format string
}

func (c *auditCmd) flags(fs *flag.FlagSet) {
	f := &c.filter
	fs.StringVar(&f.Subscription, "subscription", "", "a Stripe subscription id")
	fs.StringVar(&f.Purchase, "purchase", "", "a one-time purchase: a Checkout Session (cs_...) or an invoice (in_...) id")
	fs.StringVar(&f.Customer, "customer", "", "a Stripe customer id")
	fs.StringVar(&f.LicenseKey, "key", "", "a license key")
	fs.StringVar(&f.Action, "action", "", "create_key, extend, block, unblock, add_feature, remove_feature, machine_limit, adopt_key, skip_unmapped, error")
	fs.StringVar(&f.Outcome, "outcome", "", "applied, dry_run or failed")
	fs.StringVar(&f.Cause, "cause", "", "webhook, sweep, catch_up or operator")
	fs.StringVar(&c.since, "since", "", "a duration back from now (24h, 7d) or an RFC 3339 time")
	fs.StringVar(&c.until, "until", "", "an RFC 3339 time")
	fs.IntVar(&f.Limit, "limit", 50, "rows per page (at most 10000)")
	fs.Int64Var(&f.BeforeID, "before-id", 0, "the next page: rows older than this id")
	fs.StringVar(&c.format, "format", "table", "table, json or csv")
}

func (c *auditCmd) args(rest []string) error {
	// Every filter is a flag: a bare word is a mistake, not a filter to ignore.
	if len(rest) > 0 {
		return fmt.Errorf("audit takes flags only, got %q (keysync audit --help lists them)", rest[0])
	}
	var err error
	if c.filter.Since, err = parseSince(c.since, c.now); err != nil {
		return fmt.Errorf("audit --since: %w", err)
	}
	if c.until != "" {
		if c.filter.Until, err = time.Parse(time.RFC3339, c.until); err != nil {
			return errors.New("audit --until: want an RFC 3339 time")
		}
	}
	if p := c.filter.Purchase; p != "" && !syncer.IsPurchase(p) {
		return fmt.Errorf("audit --purchase: %q is no purchase id (cs_... or in_...)", p)
	}
	if c.format != "table" && c.format != "json" && c.format != "csv" {
		return errors.New("audit --format takes table, json or csv")
	}
	return nil
}

func (c *auditCmd) run(ctx context.Context, e cmdEnv) error {
	// Two connections are plenty: audit runs one query.
	pool, err := postgres.Open(ctx, e.cfg.DatabaseURL, postgres.PoolConfig{MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := postgres.NewStore(pool).QueryAudit(ctx, c.filter)
	if err != nil {
		return err
	}

	switch c.format {
	case "json":
		return writeAuditJSON(e.stdout, rows)
	case "csv":
		return writeAuditCSV(e.stdout, rows)
	}
	if err := writeAuditTable(e.stdout, rows); err != nil {
		return err
	}

	// A full page may not be the last: say how to ask for the next.
	if len(rows) == c.filter.Limit && len(rows) > 0 {
		fmt.Fprintf(e.stdout, "(more: --before-id %d)\n", rows[len(rows)-1].ID)
	}
	return nil
}

// writeAuditJSON writes rows as one indented JSON array; no rows is [], not null.
func writeAuditJSON(w io.Writer, rows []postgres.AuditRecord) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if rows == nil {
		rows = []postgres.AuditRecord{}
	}
	return enc.Encode(rows)
}

// writeAuditCSV writes rows with a header line, params as JSON in one column.
func writeAuditCSV(w io.Writer, rows []postgres.AuditRecord) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"id", "at", "subscription_id", "customer_id", "license_key", "action", "outcome", "cause", "cause_id", "params", "message",
		"purchase_id"})
	for _, r := range rows {
		params, _ := json.Marshal(r.Params)
		_ = cw.Write([]string{strconv.FormatInt(r.ID, 10), r.At.UTC().Format(time.RFC3339), deref(r.SubscriptionID), deref(r.CustomerID),
			deref(r.LicenseKey), r.Action, r.Outcome, r.Cause, deref(r.CauseID), string(params), deref(r.Message), deref(r.PurchaseID)})
	}
	cw.Flush()
	return cw.Error()
}

// writeAuditTable writes rows as aligned columns for a terminal.
func writeAuditTable(w io.Writer, rows []postgres.AuditRecord) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	// A row is about a subscription or a purchase: one column shows whichever.
	fmt.Fprintln(tw, "ID\tAT (UTC)\tACTION\tOUTCOME\tSUBSCRIPTION/PURCHASE\tKEY\tCAUSE\tDETAILS")
	for _, r := range rows {
		params, _ := json.Marshal(r.Params)
		detail := string(params)
		if m := deref(r.Message); m != "" {
			detail += " " + m
		}
		subject := deref(r.SubscriptionID)
		if subject == "" {
			subject = deref(r.PurchaseID)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s %s\t%s\n", r.ID, r.At.UTC().Format("2006-01-02 15:04:05"), r.Action, r.Outcome,
			subject, deref(r.LicenseKey), r.Cause, deref(r.CauseID), detail)
	}
	return tw.Flush()
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
