package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/devstack"
)

// proc is one server process with its log file.
type proc struct {
	name    string
	bin     string
	args    []string
	logPath string
	// cred, when set, runs the process as another user (PostgreSQL refuses
	// to run as root).
	cred *syscall.Credential
	// env, when set, is the process's whole environment.
	env []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Stdout = logf
	cmd.Stderr = logf
	// The server dies with the test binary, even if the binary is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true, Credential: p.cred}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

func (p *proc) exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return true
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after a grace period, and waits.
func (p *proc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func (p *proc) tail(n int) string { return devstack.Tail(p.logPath, n) }

// Process is a program a test runs itself (a gateway such as Caddy), started
// by RunProcess.
type Process struct{ p *proc }

// RunProcess starts bin with args as the test bed's servers are started: its
// own process group, killed with the test binary, stdout and stderr appended
// to logPath; env, when not nil, is its whole environment. When the test
// ends it is stopped (SIGTERM, then SIGKILL after 10 s) and, if the test
// failed, its log is logged. A failed start fails the test.
func RunProcess(t testing.TB, name, logPath string, env []string, bin string, args ...string) *Process {
	t.Helper()
	p := &proc{name: name, bin: bin, args: args, env: env, logPath: logPath}
	if err := p.start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return &Process{p: p}
}

// Exited reports whether the process has exited (or was stopped).
func (p *Process) Exited() bool { return p.p.exited() }

// waitFor polls check until it succeeds, the process exits or the deadline
// passes. It is how servers are waited for: a condition, not a sleep.
func waitFor(ctx context.Context, p *proc, what string, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited while waiting for %s: %v\n%s", p.name, what, last, p.tail(30))
		}
		select {
		case <-ctx.Done():
			msg := ""
			if p != nil {
				msg = "\n" + p.tail(30)
			}
			return fmt.Errorf("timed out waiting for %s: %v%s", what, last, msg)
		case <-tick.C:
		}
	}
}

func httpOK(client *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: status %d", url, resp.StatusCode)
		}
		return nil
	}
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// freePorts returns n loopback ports (FreePort n times).
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	return ports, nil
}

// ToolDir returns the folder holding a test-bed tool's binaries ("vault",
// "kube"), building it first if the cache lacks it (tools/build.sh).
func ToolDir(name string) (string, error) {
	if d := os.Getenv("CREDINJECT_" + strings.ToUpper(name) + "_DIR"); d != "" {
		return d, nil
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("testenv: cannot locate tools/build.sh")
	}
	script := filepath.Join(filepath.Dir(file), "tools", "build.sh")
	var out, stderr bytes.Buffer
	cmd := exec.Command("bash", script, "path", name)
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("testenv: %s path %s: %v\n%s", script, name, err, stderr.String())
	}
	return strings.TrimSpace(out.String()), nil
}
