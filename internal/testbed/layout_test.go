// Package testbed_test checks the shape of the repository: the product and its test bed
// stay in separate wings, the README's package table tells the truth, and no binary or
// oversized file is tracked.
package testbed_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/keysync/keysync"

// testBed lists the import-path prefixes that exist only to test, demo or measure keysync.
var testBed = []string{
	module + "/internal/testbed",
	module + "/internal/pgtest",
	module + "/cmd/keysync-sandbox",
	module + "/cmd/keysync-demo",
	module + "/cmd/keysync-bench",
	module + "/cmd/keysync-chaos",
}

func inTestBed(pkg string) bool {
	for _, p := range testBed {
		if pkg == p || strings.HasPrefix(pkg, p+"/") {
			return true
		}
	}
	return false
}

// root is the repository's top level (this file sits two levels below it).
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = root(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// The keysync binary links nothing from the test bed: simulators, sandbox, chaos and
// benchmarks never ship.
func TestKeysyncLinksNoTestBed(t *testing.T) {
	t.Parallel()
	deps := strings.Fields(run(t, "go", "list", "-deps", "./cmd/keysync"))
	if !slices.Contains(deps, module+"/internal/syncer") {
		t.Fatalf("go list -deps ./cmd/keysync lacks internal/syncer; got %d packages", len(deps))
	}
	for _, d := range deps {
		if inTestBed(d) {
			t.Errorf("./cmd/keysync links test-bed package %s", d)
		}
	}
}

// No product package imports the test bed in its non-test code.
func TestProductImportsNoTestBed(t *testing.T) {
	t.Parallel()
	out := run(t, "go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...")
	products := 0
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || inTestBed(fields[0]) {
			continue
		}
		products++
		for _, imp := range fields[1:] {
			if inTestBed(imp) {
				t.Errorf("product package %s imports test-bed package %s", fields[0], imp)
			}
		}
	}
	if products < 10 {
		t.Fatalf("found only %d product packages; the listing is wrong", products)
	}
}

// tableRow matches a row of the README's package table and captures its first cell.
var tableRow = regexp.MustCompile("(?m)^\\| (`[^|]+) \\|")

// The README's package table names every folder under internal/ (and internal/testbed/)
// and nothing that is not there.
func TestReadmePackageTableMatchesTree(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join(root(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, m := range tableRow.FindAllStringSubmatch(string(readme), -1) {
		for _, cell := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(m[1], -1) {
			if strings.HasPrefix(cell[1], "internal/") {
				named[strings.TrimSuffix(cell[1], "/")] = true
			}
		}
	}

	onDisk := map[string]bool{}
	for _, dir := range []string{"internal", "internal/testbed"} {
		entries, err := os.ReadDir(filepath.Join(root(t), dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.IsDir() && e.Name() != "testdata" {
				onDisk[dir+"/"+e.Name()] = true
			}
		}
	}
	onDisk["internal/testbed"] = true

	for d := range onDisk {
		if !named[d] {
			t.Errorf("README's package table does not name %s", d)
		}
	}
	for d := range named {
		if !onDisk[d] {
			t.Errorf("README's package table names %s, which is not in the tree", d)
		}
	}
}

// maxTracked is the largest file the repository may track.
const maxTracked = 1 << 20

// No tracked file is a binary or larger than 1 MB: a stray `go build` at the root once
// committed a 10 MB executable.
func TestNoBinaryOrLargeTrackedFiles(t *testing.T) {
	t.Parallel()
	files := strings.Split(strings.TrimRight(run(t, "git", "ls-files", "-z"), "\x00"), "\x00")
	if len(files) < 50 {
		t.Fatalf("git ls-files listed only %d files", len(files))
	}
	for _, f := range files {
		path := filepath.Join(root(t), f)
		info, err := os.Stat(path)
		if err != nil {
			continue // deleted in the work tree, not yet committed
		}
		if info.Size() > maxTracked {
			t.Errorf("%s is tracked and %d bytes (limit %d)", f, info.Size(), maxTracked)
			continue
		}
		if binary(t, path) {
			t.Errorf("%s is tracked and is a binary", f)
		}
	}
}

// binary reports whether the file is an executable image or has a NUL byte in its first
// 8 KiB, as git's own heuristic does.
func binary(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 8192)
	n, _ := f.Read(head)
	head = head[:n]
	for _, magic := range [][]byte{{0x7f, 'E', 'L', 'F'}, []byte("MZ"), {0xcf, 0xfa, 0xed, 0xfe}} {
		if bytes.HasPrefix(head, magic) {
			return true
		}
	}
	return bytes.IndexByte(head, 0) >= 0
}
