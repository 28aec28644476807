// Package e2e_test runs credinject end to end on the real test bed
// (kube-apiserver, Vault, NATS): behind a real nginx, as the `credinject dev`
// demo, and the deploy/kubernetes manifests against the real API server.
package e2e_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/logbuf"
	"github.com/credinject/credinject/internal/testenv/poll"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.All) }

// repoRoot is the module's root (tests run in internal/e2e).
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// credinjectBinary builds cmd/credinject once per test binary, into the bed's
// folder (removed at exit unless a test failed).
func credinjectBinary(t *testing.T) string {
	t.Helper()
	env := testenv.Get(t)
	buildOnce.Do(func() {
		binPath = filepath.Join(env.Dir, "bin", "credinject")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/credinject")
		cmd.Dir = repoRoot(t)
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/credinject: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

// startCredinject runs credinject in-process on the bed (tokenreview, Vault
// Kubernetes auth, NATS events) on free loopback ports, until the test ends.
func startCredinject(t *testing.T) *app.App {
	t.Helper()
	a, _ := startCredinjectWith(t, nil)
	return a
}

// startCredinjectWith is startCredinject with the configuration changed by
// configure (nil: as is); stop stops it before the test ends (idempotent).
func startCredinjectWith(t *testing.T, configure func(*config.Config)) (a *app.App, stop func()) {
	t.Helper()
	env := testenv.Get(t)
	cfg := config.Default()
	cfg.Listen = config.Listen{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0"}
	cfg.Vault.Address = env.Vault.Addr
	cfg.Events.NatsURL = env.NATS.URL
	if configure != nil {
		configure(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, app.Options{
		Config: cfg, RestConfig: env.Kube.RestConfig(),
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("credinject run: %v", err)
			}
			done <- nil
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("credinject log:\n%s", logs.String())
		}
	})
	waitUntil(t, 30*time.Second, "credinject ready", func() error {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("credinject stopped before ready: %v", err)
		default:
		}
		if !a.Ready() {
			return errNotYet
		}
		return nil
	})
	return a, stop
}

var errNotYet = errors.New("not yet")

// waitUntil polls cond until it returns nil or the deadline passes: a
// condition with a deadline, never a sleep.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	poll.Until(t, timeout, what, cond)
}
