package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
	var out bytes.Buffer
	err := run(context.Background(), []string{"-keysync", bin, "-sandbox", sandbox, "-dir", dir, "-database", database}, &out)
	if err != nil {
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
	if strings.Contains(got, "FAILED") {
		t.Fatalf("a step failed:\n%s", got)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
