package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/keysync/keysync/internal/testbed/sandbox"
)

// license is one key of the license page's JSON (docs/license-page.md).
type license struct {
	Key       string     `json:"key"`
	ProductID int        `json:"product_id"`
	Product   string     `json:"product"`
	Expires   *time.Time `json:"expires"`
	Perpetual bool       `json:"perpetual"`
	Machines  int        `json:"machines"`
	Blocked   bool       `json:"blocked"`
}

// licensePage asks keysync's license page for a Checkout Session's keys as JSON, as a
// vendor's own page would after Checkout's success_url, prints the URL and the answer,
// and returns the keys. It returns an error unless the page answers 200 with a key.
func (d *demo) licensePage(session string) ([]license, error) {
	url := d.public + "/license?session_id=" + session
	req, err := http.NewRequestWithContext(d.ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	d.say("license page (Checkout's success_url): %s", url)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, bytes.TrimSpace(body), "    ", "  "); err != nil {
		return nil, fmt.Errorf("license page: %d, not JSON: %s", resp.StatusCode, body)
	}
	d.say("GET with Accept: application/json -> %d\n    %s", resp.StatusCode, pretty.String())
	var page struct {
		Status   string    `json:"status"`
		Licenses []license `json:"licenses"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || page.Status != "ready" || len(page.Licenses) == 0 {
		return nil, fmt.Errorf("license page: got %d %s, want 200 with the key", resp.StatusCode, page.Status)
	}
	return page.Licenses, nil
}

// purchase plays a one-time purchase of price (Checkout in payment mode) with Stripe's
// webhooks held back, as when they arrive after the customer's redirect: the license
// page's own Sync makes the perpetual key. Then the webhooks arrive, their Sync finds
// nothing to do, and `keysync audit --purchase` shows the purchase's rows.
func (d *demo) purchase(price string) error {
	// 1. Checkout in payment mode, its webhooks held.
	if err := d.ctl.Post(d.ctx, "/stripe/endpoints/hold", map[string]any{"on": true}, nil); err != nil {
		return err
	}
	var co map[string]any
	if err := d.ctl.Post(d.ctx, "/stripe/checkout", map[string]any{"mode": "payment", "email": "grace@example.com", "name": "Grace Hopper",
		"items": []map[string]any{{"price": price, "quantity": 1}}}, &co); err != nil {
		return err
	}
	session, _ := co["session"].(string)
	if session == "" || co["completed"] != true {
		return fmt.Errorf("payment checkout: got %v, want a completed session", co)
	}
	d.say("checkout session %s paid (Lifetime, 1 seat); Stripe's webhooks held back", session)

	// 2. The page, at once. After the subscription's life the sandbox's clock is months
	// ahead of this host's. The page judges a session's age on keysync's clock, which is
	// Cryptolens' as read from the Date header of its answers (here the sandbox's), so
	// the session is seconds old to it.
	now, err := d.ctl.Now(d.ctx)
	if err != nil {
		return err
	}
	d.say("sandbox clock %s, this host's %s: the page judges the session's age (7 days at most) on",
		now.UTC().Format("2006-01-02 15:04"), time.Now().UTC().Format("2006-01-02 15:04"))
	d.say("keysync's clock, Cryptolens' as read from the Date header of the sandbox's answers: seconds old")
	lics, err := d.licensePage(session)
	if err != nil {
		return err
	}
	made, err := d.keysOf(session)
	if err != nil {
		return err
	}
	if len(lics) != 1 || !lics[0].Perpetual || lics[0].Expires != nil || len(made) != 1 || made[0].Key != lics[0].Key {
		return fmt.Errorf("license page: got %+v and %d keys with the session's marker, want one perpetual key", lics, len(made))
	}
	by, err := d.causes(session)
	if err != nil {
		return err
	}
	if by != "create_key by customer" {
		return fmt.Errorf("the purchase's audit: got %s, want the page's create_key (cause customer)", by)
	}
	d.say("Cryptolens: key %s, features %s (F1, the time-limited feature, off: perpetual), %d machines;",
		made[0].Key, sandbox.FeatureList(made[0].Features), made[0].MaxNoOfMachines)
	d.say("made by the page's Sync (audit: %s)", by)

	// 3. The webhooks arrive: keysync stores and works them, and finds nothing to do.
	var before int
	if err := d.db.QueryRow(d.ctx, `SELECT count(*) FROM stripe_events`).Scan(&before); err != nil {
		return err
	}
	if err := d.ctl.Post(d.ctx, "/stripe/endpoints/hold", map[string]any{"on": false}, nil); err != nil {
		return err
	}
	if err := d.idle(d.ctx); err != nil {
		return err
	}
	events, err := d.eventsSince(before)
	if err != nil {
		return err
	}
	if made, err = d.keysOf(session); err != nil {
		return err
	}
	after, err := d.causes(session)
	if err != nil {
		return err
	}
	if len(made) != 1 || after != by || !strings.Contains(events, "checkout.session.completed processed") {
		return fmt.Errorf("after the webhooks: %d keys, audit %s, events %s; want the page's key alone and the webhooks worked", len(made), after, events)
	}
	d.say("webhooks released: %s", events)
	d.say("their Sync found nothing to do: still one key, and the purchase's audit rows are the page's alone")

	// 4. The purchase's audit rows, as an operator reads them.
	d.say("keysync audit --purchase %s", session)
	cmd := exec.CommandContext(d.ctx, d.keysync, "audit", "--purchase", session)
	cmd.Env = append(os.Environ(), d.env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("keysync audit: %w: %s", err, stderr.String())
	}
	for line := range strings.SplitSeq(strings.TrimRight(string(out), "\n"), "\n") {
		d.say("  %s", line)
	}
	return nil
}

// keysOf returns the Cryptolens keys whose Notes marker names id.
func (d *demo) keysOf(id string) ([]sandbox.Key, error) {
	keys, err := d.ctl.Keys(d.ctx, product)
	if err != nil {
		return nil, err
	}
	var out []sandbox.Key
	for _, k := range keys {
		if k.Notes == "stripe:"+id {
			out = append(out, k)
		}
	}
	return out, nil
}

// causes lists a purchase's audit rows by action and cause ("create_key by customer").
func (d *demo) causes(purchase string) (string, error) {
	rows, err := d.db.Query(d.ctx, `SELECT action || ' by ' || cause FROM audit_log WHERE purchase_id = $1 ORDER BY id`, purchase)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return "", err
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	if len(out) == 0 {
		return "nothing audited", nil
	}
	return strings.Join(out, ", "), nil
}

// eventsSince lists the events keysync stored after the first n, with their status.
func (d *demo) eventsSince(n int) (string, error) {
	rows, err := d.db.Query(d.ctx, `SELECT type || ' ' || status FROM stripe_events ORDER BY received_at, id OFFSET $1`, n)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return "", err
		}
		out = append(out, s)
	}
	return strings.Join(out, ", "), rows.Err()
}
