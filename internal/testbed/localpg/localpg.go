// Package localpg finds a PostgreSQL server for local runs (the demo, the chaos suite):
// DATABASE_URL if set, else the server on 127.0.0.1:5432, else a throwaway cluster
// started from the local PostgreSQL binaries and removed afterwards.
package localpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DefaultURL is the local server the project's machines run.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Server is a PostgreSQL server to use.
type Server struct {
	// URL connects to the server's maintenance database as a superuser.
	URL string
	// Kind says where the server came from: "DATABASE_URL", "local" or "throwaway".
	Kind string

	dir     string
	bin     string
	asUser  string
	port    int
	stopped bool
}

// Find returns DATABASE_URL's server, the local one, or a new throwaway cluster, in that
// order. Stop the result when done (it only stops a throwaway cluster).
func Find(ctx context.Context, getenv func(string) string) (*Server, error) {
	if u := getenv("DATABASE_URL"); u != "" {
		return &Server{URL: u, Kind: "DATABASE_URL"}, nil
	}
	if listening("127.0.0.1:5432") {
		return &Server{URL: DefaultURL, Kind: "local"}, nil
	}
	return StartThrowaway(ctx)
}

// StartThrowaway initialises a cluster in a temporary directory and starts it on a free
// loopback port with trust authentication. It needs initdb and pg_ctl (Debian's
// postgresql package); as root it runs them as the postgres user, since PostgreSQL
// refuses to run as root.
func StartThrowaway(ctx context.Context) (*Server, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "keysync-pg-")
	if err != nil {
		return nil, err
	}
	s := &Server{Kind: "throwaway", dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, errors.New("running as root and there is no postgres user to run a throwaway cluster as")
		}
		s.asUser = "postgres"
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
	if s.port, err = freePort(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if out, err := s.cmd(ctx, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, lastLine(out))
	}
	if err := s.Start(ctx); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	return s, nil
}

// Start starts a throwaway cluster that was stopped with Halt (the chaos suite restarts
// Postgres this way). It returns once the server accepts connections.
func (s *Server) Start(ctx context.Context) error {
	if s.dir == "" {
		return errors.New("only a throwaway cluster can be started")
	}
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=on", s.port, s.dir)
	out, err := s.cmd(ctx, "pg_ctl", "-D", filepath.Join(s.dir, "data"), "-l", filepath.Join(s.dir, "log"),
		"-o", opts, "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl start: %w: %s", err, lastLine(out))
	}
	return nil
}

// Halt stops a throwaway cluster immediately (as a crash would), keeping its data.
func (s *Server) Halt(ctx context.Context) error {
	if s.dir == "" {
		return errors.New("only a throwaway cluster can be halted")
	}
	out, err := s.cmd(ctx, "pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, lastLine(out))
	}
	return nil
}

// Stop stops and removes a throwaway cluster; for other servers it does nothing.
func (s *Server) Stop() error {
	if s.dir == "" || s.stopped {
		return nil
	}
	s.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, _ = s.cmd(ctx, "pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "fast", "-w", "stop").CombinedOutput()
	return os.RemoveAll(s.dir)
}

func (s *Server) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	path := filepath.Join(s.bin, name)
	if s.asUser != "" {
		return exec.CommandContext(ctx, "runuser", append([]string{"-u", s.asUser, "--", path}, args...)...)
	}
	return exec.CommandContext(ctx, path, args...)
}

// findBinaries returns the directory holding initdb and pg_ctl: on PATH, or the newest
// /usr/lib/postgresql/<version>/bin.
func findBinaries() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server is listening on 127.0.0.1:5432, DATABASE_URL is unset, " +
		"and no initdb was found to start a throwaway cluster (install Debian's postgresql package)")
}

func version(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}
