package postgres

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The audit log's export, shared by `keysync audit` and the operator console, so that
// both read the same filters and write the same file.

// ParseSince reads a --since value: "24h", "7d", "90m" (back from now) or an RFC 3339
// time; "" is no bound. It returns an error naming the value when it is neither.
func ParseSince(v string, now time.Time) (time.Time, error) {
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

// WriteAuditCSV writes rows with a header line, params as JSON in one column. It
// returns the writer's error.
func WriteAuditCSV(w io.Writer, rows []AuditRecord) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"id", "at", "subscription_id", "customer_id", "license_key", "action", "outcome", "cause", "cause_id", "params", "message",
		"purchase_id"})
	for _, r := range rows {
		params, _ := json.Marshal(r.Params)
		_ = cw.Write([]string{strconv.FormatInt(r.ID, 10), r.At.UTC().Format(time.RFC3339), str(r.SubscriptionID), str(r.CustomerID),
			str(r.LicenseKey), r.Action, r.Outcome, r.Cause, str(r.CauseID), string(params), str(r.Message), str(r.PurchaseID)})
	}
	cw.Flush()
	return cw.Error()
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
