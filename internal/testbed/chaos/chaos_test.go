package chaos_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/testbed/chaos"
)

// The small chaos scenario against real processes: keysync and the sandbox built from
// this tree, two replicas on one database, one SIGKILLed mid-storm, Cryptolens down
// for a few seconds. Every event must be stored and worked, every key right, no key
// created twice, no extension beyond target.
func TestSmallChaos(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := t.TempDir()
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/keysync", "./cmd/keysync-sandbox")
	build.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if d := os.Getenv("CHAOS_DIR"); d != "" {
		dir = d
	}
	rep, err := chaos.Small(ctx, chaos.Options{
		KeysyncBin: filepath.Join(bin, "keysync"), SandboxBin: filepath.Join(bin, "keysync-sandbox"),
		Dir: dir, DatabaseURL: pgtest.EmptyURL(t), Seed: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if !rep.OK() {
		for _, name := range []string{"keysync-1.log", "keysync-2.log"} {
			if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				t.Logf("%s (last lines):\n%s", name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
		t.Fatalf("chaos: %d of %d events worked, %d failed; %d of %d keys wrong, %d duplicate creates, %d beyond target; problems: %v",
			rep.EventsProcessed, rep.EventsSent, rep.EventsFailed, rep.KeysWrong, rep.KeysChecked, rep.DuplicateCreates, rep.BeyondTarget, rep.Problems)
	}
	if rep.EventsSent < 500 || rep.KeysChecked != 40 {
		t.Fatalf("the scenario did too little to mean anything: %d events, %d keys", rep.EventsSent, rep.KeysChecked)
	}
}
