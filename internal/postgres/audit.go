package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/syncer"
)

// AuditFilter selects audit rows. Empty fields select everything.
type AuditFilter struct {
	// Purchase is a one-time purchase's id (cs_... or in_...).
	Subscription, Purchase, Customer, LicenseKey, Action, Outcome, Cause string
	Since, Until                                                         time.Time
	// BeforeID pages backwards: rows with a smaller id (the previous page's last id).
	BeforeID int64
	// Limit bounds the rows (default 50, at most 10,000).
	Limit int
}

// AuditRecord is an audit row as operators read it.
type AuditRecord struct {
	ID             int64          `db:"id" json:"id"`
	At             time.Time      `db:"at" json:"at"`
	SubscriptionID *string        `db:"subscription_id" json:"subscription_id"`
	PurchaseID     *string        `db:"purchase_id" json:"purchase_id"`
	CustomerID     *string        `db:"customer_id" json:"customer_id"`
	ProductID      *int           `db:"product_id" json:"product_id"`
	LicenseKey     *string        `db:"license_key" json:"license_key"`
	Action         string         `db:"action" json:"action"`
	Outcome        string         `db:"outcome" json:"outcome"`
	Cause          string         `db:"cause" json:"cause"`
	CauseID        *string        `db:"cause_id" json:"cause_id"`
	Params         map[string]any `db:"params" json:"params"`
	Message        *string        `db:"message" json:"message"`
	DurationMS     *float64       `db:"duration_ms" json:"duration_ms"`
}

// QueryAudit returns the rows f selects, newest first. Each filter maps to an index
// (subscription, purchase, key, customer, action, or time), so the query stays fast on
// a large log.
func (s *Store) QueryAudit(ctx context.Context, f AuditFilter) ([]AuditRecord, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	for col, v := range map[string]string{"subscription_id": f.Subscription, "purchase_id": f.Purchase, "customer_id": f.Customer,
		"license_key": f.LicenseKey, "action": f.Action, "outcome": f.Outcome, "cause": f.Cause} {
		if v != "" {
			add(col+" = ?", v)
		}
	}
	if !f.Since.IsZero() {
		add("at >= ?", f.Since)
	}
	if !f.Until.IsZero() {
		add("at < ?", f.Until)
	}
	if f.BeforeID > 0 {
		add("id < ?", f.BeforeID)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 10_000)
	q := `SELECT id, at, subscription_id, purchase_id, customer_id, product_id, license_key, action, outcome, cause, cause_id, params,
		message, duration_ms FROM audit_log`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += fmt.Sprintf(" ORDER BY id DESC LIMIT %d", limit)
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("audit query: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[AuditRecord])
	if err != nil {
		return nil, fmt.Errorf("audit query: %w", translate(err))
	}
	return out, nil
}

const insertAudit = `
INSERT INTO audit_log (subscription_id, customer_id, product_id, license_key, action, params, outcome, cause, cause_id, message, duration_ms,
    purchase_id)
VALUES (NULLIF($1, ''), NULLIF($2, ''), NULLIF($3, 0), NULLIF($4, ''), $5, $6, $7, $8, NULLIF($9, ''), NULLIF($10, ''), $11, NULLIF($12, ''))`

// queueAudits queues the insert of audits on b.
func queueAudits(b *pgx.Batch, audits []syncer.AuditRow) {
	for _, a := range audits {
		params := a.Params
		if params == nil {
			params = map[string]any{}
		}
		b.Queue(insertAudit, a.SubscriptionID, a.CustomerID, a.ProductID, a.LicenseKey, a.Action, params, string(a.Outcome),
			string(a.Cause), a.CauseID, a.Message, float64(a.Duration.Microseconds())/1000, a.PurchaseID)
	}
}

// AuditEntry is an audit row as read back.
type AuditEntry struct {
	ID             int64          `db:"id"`
	At             time.Time      `db:"at"`
	SubscriptionID *string        `db:"subscription_id"`
	PurchaseID     *string        `db:"purchase_id"`
	ProductID      *int           `db:"product_id"`
	LicenseKey     *string        `db:"license_key"`
	Action         string         `db:"action"`
	Params         map[string]any `db:"params"`
	Outcome        string         `db:"outcome"`
	Cause          string         `db:"cause"`
	CauseID        *string        `db:"cause_id"`
	Message        *string        `db:"message"`
}

// AuditFor returns the audit rows of a subscription, or of a one-time purchase
// (syncer.IsPurchase), oldest first.
func (s *Store) AuditFor(ctx context.Context, id string) ([]AuditEntry, error) {
	col := "subscription_id"
	if syncer.IsPurchase(id) {
		col = "purchase_id"
	}
	rows, err := s.pool.Query(ctx, `SELECT id, at, subscription_id, purchase_id, product_id, license_key, action, params, outcome, cause,
		cause_id, message FROM audit_log WHERE `+col+` = $1 ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByName[AuditEntry])
	if err != nil {
		return nil, fmt.Errorf("audit: %w", translate(err))
	}
	return out, nil
}
