package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/pgtest"
)

// TestDemo runs what `make demo` runs, against a freshly built keysync binary, so CI
// guards the README's first command.
func TestDemo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin, sandbox := filepath.Join(dir, "keysync"), filepath.Join(dir, "keysync-sandbox")
	for out, pkg := range map[string]string{bin: "../keysync", sandbox: "../keysync-sandbox"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	database := "keysync_demo_test_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		if c, err := pgx.Connect(context.Background(), pgtest.AdminURL()); err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+database+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	// With -keep (make demo KEEP=1) the demo keeps keysync running after the lifecycle,
	// with the console open to the token it wrote, until it is interrupted.
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-keysync", bin, "-sandbox", sandbox, "-dir", dir, "-database", database, "-keep"}, out)
	}()
	consoleURL := regexp.MustCompile(`console (http://\S+/console/)`)
	pgtest.WaitFor(t, 4*time.Minute, "the demo to keep running", func() bool {
		select {
		case err := <-done:
			t.Fatalf("demo ended before keeping keysync running: %v\n%s\nkeysync log:\n%s", err, out.String(), readFile(filepath.Join(dir, "keysync.log")))
		default:
		}
		return strings.Contains(out.String(), "Keep running (KEEP=1)")
	})
	m := consoleURL.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("the demo does not print the console's URL:\n%s", out.String())
	}
	token, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if fi, _ := os.Stat(filepath.Join(dir, "admin-token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, %v; want one readable by its owner only", err, fi)
	}
	checkConsole(t, m[1], strings.TrimSpace(string(token)))
	interrupt()
	if err := <-done; err != nil {
		t.Fatalf("demo: %v\n%s\nkeysync log:\n%s", err, out.String(), readFile(filepath.Join(dir, "keysync.log")))
	}
	got := out.String()
	// Every step checked the key against Stripe's paid-through; the run ends with the
	// audit trail and a clean stop.
	if n := strings.Count(got, "  ok\n"); n != 11 {
		t.Fatalf("got %d steps checked ok, want 11:\n%s", n, got)
	}
	for _, want := range []string{"create_key", "extend", "add_feature", "machine_limit", "block", "stopped cleanly"} {
		if !strings.Contains(got, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, got)
		}
	}
	// The license pages: the subscription's after its checkout, then a one-time
	// purchase's before its webhooks, whose key the page's Sync made; the webhooks
	// then found nothing to do, and `keysync audit --purchase` shows the page's row.
	pages := regexp.MustCompile(`license page \(Checkout's success_url\): http://127\.0\.0\.1:\d+/license\?session_id=(cs_test_\w+)\n`+
		`  GET with Accept: application/json -> 200\n    \{\n`).FindAllStringSubmatch(got, -1)
	if len(pages) != 2 {
		t.Fatalf("got %d license pages with their URL and a 200 JSON answer, want 2:\n%s", len(pages), got)
	}
	purchase := pages[1][1]
	for _, want := range []string{`"perpetual": false`, `"perpetual": true`, `"expires": null`, `"status": "ready"`,
		"made by the page's Sync (audit: create_key by customer)", "checkout.session.completed processed", "their Sync found nothing to do",
		"keysync audit --purchase " + purchase, "create_key  applied  " + purchase} {
		if !strings.Contains(got, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "FAILED") {
		t.Fatalf("a step failed:\n%s", got)
	}
}

// checkConsole logs into the console at base with token and reads its overview.
func checkConsole(t *testing.T, base, token string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(base + "login")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(page)
	if csrf == nil {
		t.Fatalf("the console's login page has no form:\n%s", page)
	}
	resp, err = c.PostForm(base+"login", url.Values{"csrf": {string(csrf[1])}, "token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "Is keysync healthy?") {
		t.Fatalf("console login with the demo's token: got %d:\n%s", resp.StatusCode, page)
	}
}

// syncBuffer is a bytes.Buffer that the demo writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
