package sandbox

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/keysync/keysync/internal/jobs"
)

// Process is a child process (keysync, the sandbox) with its output in a log file.
type Process struct {
	Cmd *exec.Cmd
	// Log is the file the process writes its output to.
	Log    string
	exited chan struct{}
	err    error
}

// Start runs bin with args, env added to this process's environment, output to logPath.
func Start(bin, logPath string, env []string, args ...string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &Process{Cmd: cmd, Log: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Stop sends SIGTERM and waits for the exit; after timeout it kills. It returns the
// exit error (nil for a clean exit). Calling it again returns the same.
func (p *Process) Stop(timeout time.Duration) error {
	select {
	case <-p.exited:
		return p.err
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		_ = p.Cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("did not stop within %s; killed", timeout)
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Process) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.exited
}

// WaitHTTP polls url every 2ms (fine enough to time a start-up) until it answers 200,
// the process exits, ctx ends or a minute passes.
func WaitHTTP(ctx context.Context, url string, p *Process) error {
	deadline := time.Now().Add(time.Minute)
	client := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return fmt.Errorf("exited during start-up: %v (log: %s)", p.err, p.Log)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within a minute (log: %s)", url, p.Log)
}

// ReadEnv reads a NAME=value-per-line file, as the sandbox's -env-file writes.
func ReadEnv(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

// FreePorts returns n loopback ports that were free a moment ago.
func FreePorts(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	}
	return out, nil
}

// WaitIdle polls keysync's unfinished work (jobs.Tables.Unfinished: events not yet
// worked, jobs not yet done) until nothing is left, or fails after timeout. db is a
// *pgx.Conn or a *pgxpool.Pool on keysync's database.
func WaitIdle(ctx context.Context, db jobs.DB, timeout time.Duration) error {
	work := jobs.NewTables(db)
	deadline := time.Now().Add(timeout)
	for {
		n, err := work.Unfinished(ctx)
		if err == nil && n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("keysync did not become idle within %s: %v", timeout, err)
			}
			return fmt.Errorf("keysync did not become idle within %s: %d events or jobs left", timeout, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
