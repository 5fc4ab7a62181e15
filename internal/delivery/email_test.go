package delivery_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/failure"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/syncer"
	"github.com/keysync/keysync/internal/testbed/smtpsim"
	"github.com/keysync/keysync/internal/testbed/stripesim"
)

// emailer returns an Emailer sending through a fresh SMTP server.
func (e *env) emailer(t *testing.T, opts smtpsim.Options) (*delivery.Emailer, *smtpsim.Server) {
	t.Helper()
	srv := smtpsim.Start(t, opts)
	cfg, err := delivery.ParseSMTPURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	sender, err := delivery.NewSMTP(cfg, "Example Shop <shop@example.com>")
	if err != nil {
		t.Fatal(err)
	}
	return delivery.NewEmailer(e.store, e.sc, e.licenses, sender, delivery.EmailOptions{PortalURL: "https://billing.example.com/portal",
		Domain: sender.Domain()}, e.log), srv
}

// newKey checks out and syncs a subscription, and returns it with the create_key audit
// row the outbox lists.
func (e *env) newKey(t *testing.T, em *delivery.Emailer, p stripesim.CheckoutParams) (stripesim.CheckoutResult, int64) {
	t.Helper()
	res := e.checkout(t, p)
	if _, err := e.engine.Sync(context.Background(), res.Subscription, syncer.Cause{Kind: syncer.CauseWebhook, ID: "evt_test_1"}); err != nil {
		t.Fatal(err)
	}
	ids, err := em.Outbox(context.Background())
	if err != nil || len(ids) == 0 {
		t.Fatalf("outbox: got %v, %v, want the new key's row", ids, err)
	}
	return res, ids[len(ids)-1]
}

type emailRow struct {
	status   string
	attempts int
	err      string
}

func (e *env) emailRow(t *testing.T, key string) emailRow {
	t.Helper()
	var r emailRow
	err := e.pool.QueryRow(context.Background(), `SELECT status, attempts, coalesce(last_error, '') FROM key_emails WHERE license_key = $1`, key).
		Scan(&r.status, &r.attempts, &r.err)
	if err != nil {
		t.Fatalf("key_emails row: %v", err)
	}
	return r
}

// emailAudits returns the email_key audit rows of a license key.
func (e *env) emailAudits(t *testing.T, key string) []postgres.AuditRecord {
	t.Helper()
	rows, err := e.store.QueryAudit(context.Background(), postgres.AuditFilter{LicenseKey: key, Action: "email_key"})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// A new key is e-mailed to its Stripe customer once: a server that says "try later"
// gives the claim back and the job's retry sends it; the retry of a job that sent,
// a replay, and jobs racing on several replicas send nothing more. The message that
// arrived carries the key in both parts, and the audit one email_key row with the
// key's cause.
func TestNewKeyEmailedOnceAcrossRetryAndReplay(t *testing.T) {
	t.Parallel()
	e := setup(t)
	em, smtp := e.emailer(t, smtpsim.Options{})
	res, id := e.newKey(t, em, stripesim.CheckoutParams{})
	k := e.keyOf(t, res.Subscription)
	ctx := context.Background()

	// 1. The server defers: nothing sent, the claim given back, the job retries.
	smtp.Fail(smtpsim.DeferRecipient)
	err := em.SendKey(ctx, id)
	if err == nil || !errors.Is(err, failure.ErrRetryable) {
		t.Fatalf("deferred: got %v, want a retryable error", err)
	}
	if r := e.emailRow(t, k.Key); r.status != "pending" || len(smtp.Messages()) != 0 || len(e.emailAudits(t, k.Key)) != 0 {
		t.Fatalf("deferred: got row %+v, %d messages, %d audits; want pending, none, none", r, len(smtp.Messages()), len(e.emailAudits(t, k.Key)))
	}
	if ids, _ := em.Outbox(ctx); len(ids) != 1 || ids[0] != id {
		t.Fatalf("a pending e-mail leaves the outbox: got %v, want [%d]", ids, id)
	}

	// 2. The retry sends it.
	if err := em.SendKey(ctx, id); err != nil {
		t.Fatal(err)
	}
	msgs := smtp.Wait(t, 1, 10*time.Second)
	m := msgs[0]
	h := m.Header()
	sum := sha256.Sum256([]byte(strconv.Itoa(product) + ":" + k.Key))
	wantID := "<keysync.key." + hex.EncodeToString(sum[:12]) + "@example.com>"
	if len(m.To) != 1 || m.To[0] != "ada@example.com" || m.From != "shop@example.com" || h.Get("From") != `"Example Shop" <shop@example.com>` ||
		h.Get("Subject") != "Your license key for Product 1001" || h.Get("Message-Id") != wantID {
		t.Fatalf("got envelope %s -> %v, header %v; want the key's message to ada@example.com with Message-ID %s", m.From, m.To, h, wantID)
	}
	text, html := m.Part("text/plain"), m.Part("text/html")
	for _, want := range []string{"Hello Ada Lovelace,", "License key: " + k.Key, "Valid until: " + k.Expires.UTC().Format("2 January 2006"),
		"Machines:    3", "https://billing.example.com/portal"} {
		if !strings.Contains(text, want) {
			t.Fatalf("the text part lacks %q:\n%s", want, text)
		}
	}
	if !strings.Contains(html, ">"+k.Key+"</p>") || !strings.Contains(html, `href="https://billing.example.com/portal"`) {
		t.Fatalf("the HTML part lacks the key or the portal:\n%s", html)
	}

	// 3. Again, as a retry of the job that sent, a replay, and four replicas at once.
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Go(func() { errs <- em.SendKey(ctx, id) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(smtp.Messages()); n != 1 {
		t.Fatalf("got %d messages after the retries and replays, want 1", n)
	}
	if r := e.emailRow(t, k.Key); r.status != "sent" || r.attempts != 2 {
		t.Fatalf("got row %+v, want sent after 2 attempts", r)
	}
	audits := e.emailAudits(t, k.Key)
	if len(audits) != 1 || audits[0].Outcome != "applied" || audits[0].Cause != "webhook" || *audits[0].CauseID != "evt_test_1" ||
		audits[0].Params["to"] != "ada@example.com" || *audits[0].SubscriptionID != res.Subscription {
		t.Fatalf("got audit rows %+v, want one applied email_key with the key's cause", audits)
	}
	if ids, _ := em.Outbox(ctx); len(ids) != 0 {
		t.Fatalf("got outbox %v after sending, want empty", ids)
	}
}

// A one-time purchase's new key is e-mailed to its customer once, as perpetual: the job,
// its retry and a replay send one message, and the email_key audit row names the
// purchase (not a subscription) with the key's cause.
func TestPurchaseKeyEmailedOnce(t *testing.T) {
	t.Parallel()
	e := setup(t)
	em, smtp := e.emailer(t, smtpsim.Options{})
	ctx := context.Background()
	res := e.purchase(t, stripesim.PaymentParams{})
	if _, err := e.engine.SyncPurchase(ctx, res.Session, syncer.Cause{Kind: syncer.CauseWebhook, ID: "evt_purchase_1"}); err != nil {
		t.Fatal(err)
	}
	keys := e.crypto.Keys(product)
	ids, err := em.Outbox(ctx)
	if err != nil || len(ids) != 1 || len(keys) != 1 {
		t.Fatalf("got outbox %v (%v) and %d keys, want the purchase's one key", ids, err, len(keys))
	}
	k := keys[0]
	for range 3 { // the job, its retry, a replay
		if err := em.SendKey(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	msgs := smtp.Wait(t, 1, 10*time.Second)
	text := msgs[0].Part("text/plain")
	if len(msgs) != 1 || len(msgs[0].To) != 1 || msgs[0].To[0] != "grace@example.com" || msgs[0].Header().Get("Subject") != "Your license key for Product 1001" {
		t.Fatalf("got %d messages, the first to %v (%q); want one to grace@example.com", len(msgs), msgs[0].To, msgs[0].Header().Get("Subject"))
	}
	for _, want := range []string{"Hello Grace Hopper,", "License key: " + k.Key, "Valid until: perpetual (it does not expire)", "Machines:    2"} {
		if !strings.Contains(text, want) {
			t.Fatalf("the text part lacks %q:\n%s", want, text)
		}
	}
	if r := e.emailRow(t, k.Key); r.status != "sent" || r.attempts != 1 {
		t.Fatalf("got row %+v, want sent after 1 attempt", r)
	}
	audits := e.emailAudits(t, k.Key)
	if len(audits) != 1 || audits[0].Outcome != "applied" || audits[0].PurchaseID == nil || *audits[0].PurchaseID != res.Session ||
		audits[0].SubscriptionID != nil || audits[0].Cause != "webhook" || *audits[0].CauseID != "evt_purchase_1" || audits[0].Params["to"] != "grace@example.com" {
		t.Fatalf("got audit rows %+v, want one applied email_key naming the purchase %s, with the key's cause", audits, res.Session)
	}
	if ids, _ := em.Outbox(ctx); len(ids) != 0 {
		t.Fatalf("got outbox %v after sending, want empty", ids)
	}
}

// The connection broke after the server had the whole message: it may have been
// delivered, so keysync records the outcome as unknown and never sends it again (at
// most once). A recipient the server refuses is failed for good.
func TestEmailFailuresAreNotSentAgain(t *testing.T) {
	t.Parallel()
	e := setup(t)
	em, smtp := e.emailer(t, smtpsim.Options{})
	ctx := context.Background()
	for name, tc := range map[string]struct {
		fault    smtpsim.Fault
		email    string
		messages int
		status   string
		err      string
	}{
		"cut after the data": {fault: smtpsim.CutAfterData, email: "ada@example.com", messages: 1, status: "sending", err: "outcome unknown"},
		"refused recipient":  {fault: smtpsim.RejectRecipient, email: "bob@example.com", messages: 0, status: "failed", err: "refused"},
	} {
		before := len(smtp.Messages())
		res, id := e.newKey(t, em, stripesim.CheckoutParams{Email: tc.email})
		k := e.keyOf(t, res.Subscription)
		smtp.Fail(tc.fault)
		for i := range 3 { // the job, its retry, a replay
			if err := em.SendKey(ctx, id); err != nil {
				t.Fatalf("%s: attempt %d: %v", name, i+1, err)
			}
		}
		if n := len(smtp.Messages()) - before; n != tc.messages {
			t.Fatalf("%s: got %d messages, want %d", name, n, tc.messages)
		}
		r := e.emailRow(t, k.Key)
		audits := e.emailAudits(t, k.Key)
		if r.status != tc.status || r.attempts != 1 || !strings.Contains(r.err, tc.err) || len(audits) != 1 || audits[0].Outcome != "failed" {
			t.Fatalf("%s: got row %+v and audits %+v, want %s after one attempt, audited failed", name, r, audits, tc.status)
		}
		if ids, _ := em.Outbox(ctx); len(ids) != 0 {
			t.Fatalf("%s: got outbox %v, want empty", name, ids)
		}
	}
}

// With credentials in KEYSYNC_SMTP_URL keysync authenticates; a wrong password sends
// nothing, may be retried, and never shows in the error.
func TestSMTPAuthentication(t *testing.T) {
	t.Parallel()
	srv := smtpsim.Start(t, smtpsim.Options{Username: "shop", Password: "s3cret-smtp-pw"})
	cfg, err := delivery.ParseSMTPURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	m := delivery.Mail{To: "ada@example.com", Subject: "Hi", Text: "hello"}
	good, _ := delivery.NewSMTP(cfg, "shop@example.com")
	if err := good.Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	srv.Wait(t, 1, 10*time.Second)
	cfg.Password = "wrong-pw-value"
	bad, _ := delivery.NewSMTP(cfg, "shop@example.com")
	err = bad.Send(context.Background(), m)
	if !errors.Is(err, delivery.ErrNotSent) || strings.Contains(err.Error(), "wrong-pw-value") {
		t.Fatalf("wrong password: got %v, want ErrNotSent without the password", err)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Fatalf("got %d messages, want 1", n)
	}
}

// queued records lost-keys requests, as River's queue would hold them.
type queued struct {
	mu        sync.Mutex
	addresses []string
}

func (q *queued) QueueResend(_ context.Context, address string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addresses = append(q.addresses, address)
	return nil
}

// The lost-keys form answers the same, by the same path, whether or not the address
// is a customer's: it looks nothing up before answering (no Stripe call), it queues
// every well-formed address, and only the job mails, and only a customer with keys.
// The customer gets their keys that work; an unknown address gets nothing.
func TestResendNeverRevealsAddresses(t *testing.T) {
	t.Parallel()
	e := setup(t)
	em, smtp := e.emailer(t, smtpsim.Options{})
	ada, _ := e.newKey(t, em, stripesim.CheckoutParams{})
	gone, _ := e.newKey(t, em, stripesim.CheckoutParams{Customer: ada.Customer}) // a second subscription, canceled: its key is blocked
	if err := e.stripe.CancelNow(gone.Subscription); err != nil {
		t.Fatal(err)
	}
	if _, err := e.engine.Sync(context.Background(), gone.Subscription, syncer.Cause{Kind: syncer.CauseOperator, ID: "test"}); err != nil {
		t.Fatal(err)
	}
	q := &queued{}
	mux := http.NewServeMux()
	mux.Handle("POST "+delivery.ResendPath, delivery.NewResend(q, delivery.ResendOptions{PerMinute: 600, Burst: 100}, e.log))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	nonce := regexp.MustCompile(`nonce="[^"]+"`)
	stripeBefore := maps.Clone(e.stripe.Requests())
	answers := map[string]string{}
	for _, address := range []string{"ada@example.com", "ADA@example.com", "nobody@example.com"} {
		for _, form := range []struct{ contentType, body, accept string }{
			{"application/x-www-form-urlencoded", "email=" + strings.ReplaceAll(address, "@", "%40"), ""},
			{"application/json", `{"email":"` + address + `"}`, "application/json"},
		} {
			resp, body := fetch(t, "POST", srv.URL+delivery.ResendPath, form.accept, strings.NewReader(form.body), form.contentType)
			wantPrivate(t, resp)
			answer := fmt.Sprint(resp.StatusCode, " ", nonce.ReplaceAllString(body, ""))
			if prev, ok := answers[form.contentType]; ok && prev != answer {
				t.Fatalf("%s answered differently:\n%s\nthan an earlier address:\n%s", address, answer, prev)
			}
			answers[form.contentType] = answer
		}
	}
	if !strings.HasPrefix(answers["application/json"], `202 {"status":"resend_accepted"}`) || !strings.HasPrefix(answers["application/x-www-form-urlencoded"], "202 ") {
		t.Fatalf("got answers %v, want 202 resend_accepted", answers)
	}
	if !maps.Equal(stripeBefore, e.stripe.Requests()) {
		t.Fatal("the form called Stripe before answering: its timing could tell known addresses from unknown ones")
	}
	if len(q.addresses) != 6 {
		t.Fatalf("got %d queued requests, want all 6", len(q.addresses))
	}

	// The jobs: the customer gets one message with the key that works, whatever the
	// case it typed; nobody gets nothing.
	for _, a := range []string{"ADA@example.com", "nobody@example.com"} {
		if err := em.Resend(context.Background(), a); err != nil {
			t.Fatal(err)
		}
	}
	msgs := smtp.Wait(t, 1, 10*time.Second)
	live, blocked := e.keyOf(t, ada.Subscription), e.keyOf(t, gone.Subscription)
	text := msgs[0].Part("text/plain")
	if len(msgs) != 1 || msgs[0].To[0] != "ada@example.com" || msgs[0].Header().Get("Subject") != "Your license keys" ||
		!strings.Contains(text, live.Key) || strings.Contains(text, blocked.Key) {
		t.Fatalf("got %d messages, the first to %v:\n%s\nwant one to ada@example.com with %s and without the blocked key", len(msgs), msgs[0].To, text, live.Key)
	}
	if audits := e.emailAudits(t, live.Key); len(audits) != 1 || audits[0].Cause != "customer" || *audits[0].CauseID != "resend" {
		t.Fatalf("got audits %+v, want one email_key caused by the customer's resend", audits)
	}

	// No usable address: 400; past the client's limit: 429.
	for _, body := range []string{"email=", "email=not-an-address", "email=Ada+%3Cada%40example.com%3E", "other=1"} {
		if resp, _ := fetch(t, "POST", srv.URL+delivery.ResendPath, "", strings.NewReader(body), "application/x-www-form-urlencoded"); resp.StatusCode != 400 {
			t.Fatalf("%q: got %d, want 400", body, resp.StatusCode)
		}
	}
	limited := httptest.NewServer(delivery.NewResend(q, delivery.ResendOptions{PerMinute: 1, Burst: 1}, e.log))
	defer limited.Close()
	fetch(t, "POST", limited.URL, "", strings.NewReader("email=a%40example.com"), "application/x-www-form-urlencoded")
	resp, _ := fetch(t, "POST", limited.URL, "", strings.NewReader("email=b%40example.com"), "application/x-www-form-urlencoded")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("past the limit: got %d, want 429 with Retry-After", resp.StatusCode)
	}
}

// The e-mail's templates are replaceable file by file; one that does not render stops
// start-up with the file's name.
func TestEmailTemplates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "subject.txt"), []byte("Keys from Example: {{len .Licenses}}"), 0o600); err != nil {
		t.Fatal(err)
	}
	tmpl, err := delivery.ParseEmailTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t)
	srv := smtpsim.Start(t, smtpsim.Options{})
	cfg, _ := delivery.ParseSMTPURL(srv.URL())
	sender, _ := delivery.NewSMTP(cfg, "shop@example.com")
	em := delivery.NewEmailer(e.store, e.sc, e.licenses, sender, delivery.EmailOptions{Templates: tmpl}, e.log)
	res, id := e.newKey(t, em, stripesim.CheckoutParams{})
	if err := em.SendKey(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	m := srv.Wait(t, 1, 10*time.Second)[0]
	if m.Header().Get("Subject") != "Keys from Example: 1" || !strings.Contains(m.Part("text/plain"), e.keyOf(t, res.Subscription).Key) {
		t.Fatalf("got subject %q, want the replaced one (and keysync's own body)", m.Header().Get("Subject"))
	}

	if err := os.WriteFile(filepath.Join(dir, "body.html"), []byte("{{range .Licenses}}{{.Nope}}{{end}}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := delivery.ParseEmailTemplates(dir); err == nil || !strings.Contains(err.Error(), "body.html") {
		t.Fatalf("a body that does not render: got %v, want an error naming body.html", err)
	}
	if _, err := delivery.ParseEmailTemplates(filepath.Join(dir, "none")); err == nil {
		t.Fatal("a directory that does not exist was accepted")
	}
}
