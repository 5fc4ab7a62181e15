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
	bin := filepath.Join(dir, "keysync")
	build := exec.Command("go", "build", "-o", bin, "../keysync")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build keysync: %v\n%s", err, out)
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
	err := run(context.Background(), []string{"-keysync", bin, "-dir", dir, "-database", database}, &out)
	if err != nil {
		t.Fatalf("demo: %v\n%s\nkeysync log:\n%s", err, out.String(), readFile(filepath.Join(dir, "keysync.log")))
	}
	got := out.String()
	for _, want := range []string{"[ok]", "processed", "ignored", "stopped cleanly (exit 0)"} {
		if !strings.Contains(got, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "UNEXPECTED") {
		t.Fatalf("demo saw an unexpected answer:\n%s", got)
	}
	if n := strings.Count(got, "processed  webhook"); n != 3 {
		t.Fatalf("got %d processed events, want 3:\n%s", n, got)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
