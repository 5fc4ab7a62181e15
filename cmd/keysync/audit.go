package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
	fs.StringVar(&f.Action, "action", "", "create_key, extend, block, unblock, add_feature, remove_feature, machine_limit, adopt_key, skip_unmapped, email_key, error")
	fs.StringVar(&f.Outcome, "outcome", "", "applied, dry_run or failed")
	fs.StringVar(&f.Cause, "cause", "", "webhook, sweep, catch_up, operator or customer")
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
	if c.filter.Since, err = postgres.ParseSince(c.since, c.now); err != nil {
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
		return postgres.WriteAuditCSV(e.stdout, rows)
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

func deref[T any](p *T) string {
	if p == nil {
		return ""
	}
	return fmt.Sprint(*p)
}
