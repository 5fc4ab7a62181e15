package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
)

func TestAuditCommand(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := postgres.NewStore(pool)
	seed := func(sub, cust, key string, audits ...syncer.AuditRow) {
		for i := range audits {
			audits[i].SubscriptionID, audits[i].CustomerID, audits[i].LicenseKey = sub, cust, key
		}
		if err := store.SaveSync(ctx, syncer.SubscriptionRow{ID: sub, CustomerID: cust, Status: "active"}, audits); err != nil {
			t.Fatal(err)
		}
	}
	seed("sub_a", "cus_a", "AAAAA", syncer.AuditRow{Action: "create_key", Outcome: "applied", Cause: "webhook", CauseID: "evt_1", Params: map[string]any{"period": 35}},
		syncer.AuditRow{Action: "extend", Outcome: "applied", Cause: "webhook", CauseID: "evt_2", Params: map[string]any{"days": 31}},
		syncer.AuditRow{Action: "block", Outcome: "failed", Cause: "sweep", CauseID: "7", Message: "cryptolens BlockKey: server error"})
	seed("sub_b", "cus_b", "BBBBB", syncer.AuditRow{Action: "create_key", Outcome: "dry_run", Cause: "operator", CauseID: "ops"})
	// An old row, for --since.
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (at, subscription_id, action, outcome, cause) VALUES (now() - interval '3 days', 'sub_old', 'extend', 'applied', 'webhook')`); err != nil {
		t.Fatal(err)
	}

	vars := env(map[string]string{"DATABASE_URL": url})
	auditRun := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(ctx, append([]string{"audit"}, args...), vars, &out, io.Discard, nil); err != nil {
			t.Fatalf("audit %v: %v", args, err)
		}
		return out.String()
	}
	asJSON := func(args ...string) []postgres.AuditRecord {
		t.Helper()
		var rows []postgres.AuditRecord
		if err := json.Unmarshal([]byte(auditRun(append(args, "--format", "json")...)), &rows); err != nil {
			t.Fatal(err)
		}
		return rows
	}
	tests := map[string]struct {
		args []string
		ids  int
	}{
		"all, newest first": {nil, 5},
		"by subscription":   {[]string{"--subscription", "sub_a"}, 3},
		"by customer":       {[]string{"--customer", "cus_b"}, 1},
		"by key":            {[]string{"--key", "AAAAA"}, 3},
		"by action":         {[]string{"--action", "create_key"}, 2},
		"by outcome":        {[]string{"--outcome", "failed"}, 1},
		"by cause":          {[]string{"--cause", "sweep"}, 1},
		"since 24h":         {[]string{"--since", "24h"}, 4},
		"since 7d":          {[]string{"--since", "7d"}, 5},
		"combined":          {[]string{"--subscription", "sub_a", "--action", "extend"}, 1},
		"nothing":           {[]string{"--subscription", "sub_nope"}, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rows := asJSON(tc.args...)
			if len(rows) != tc.ids {
				t.Fatalf("got %d rows, want %d", len(rows), tc.ids)
			}
			for i := 1; i < len(rows); i++ {
				if rows[i].ID > rows[i-1].ID {
					t.Fatal("not newest first")
				}
			}
		})
	}
	// Paging: two at a time, following the hint, covers every row once.
	first := auditRun("--limit", "2")
	if !strings.Contains(first, "(more: --before-id") {
		t.Fatalf("no paging hint:\n%s", first)
	}
	seen := map[int64]bool{}
	before := int64(0)
	for range 10 {
		args := []string{"--limit", "2"}
		if before > 0 {
			args = append(args, "--before-id", strconv.FormatInt(before, 10))
		}
		page := asJSON(args...)
		for _, r := range page {
			if seen[r.ID] {
				t.Fatalf("row %d twice", r.ID)
			}
			seen[r.ID] = true
		}
		if len(page) < 2 {
			break
		}
		before = page[len(page)-1].ID
	}
	if len(seen) != 5 {
		t.Fatalf("paging saw %d rows, want 5", len(seen))
	}
	// Table and CSV carry the same facts.
	table := auditRun("--subscription", "sub_a")
	for _, want := range []string{"ACTION", "block", "failed", "cryptolens BlockKey: server error", "webhook evt_2", `{"days":31}`} {
		if !strings.Contains(table, want) {
			t.Fatalf("table lacks %q:\n%s", want, table)
		}
	}
	records, err := csv.NewReader(strings.NewReader(auditRun("--key", "AAAAA", "--format", "csv"))).ReadAll()
	if err != nil || len(records) != 4 || records[0][5] != "action" || records[3][5] != "create_key" || records[3][9] != `{"period":35}` {
		t.Fatalf("csv: got %v, %v", records, err)
	}
	for _, bad := range [][]string{{"--format", "xml"}, {"--since", "yesterday"}, {"--bogus"}} {
		if err := run(ctx, append([]string{"audit"}, bad...), vars, io.Discard, io.Discard, nil); !errors.Is(err, errUsage) {
			t.Fatalf("%v: got %v, want a usage error", bad, err)
		}
	}
}
