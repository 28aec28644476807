package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/devstack"
)

// dev runs the local demo: Vault (built on first use), NATS and credinject on
// loopback, a dev token issuer trusted by both credinject and Vault, seeded
// credentials, and a printed guide. It prints "ready" once credinject serves
// and stops everything on SIGINT/SIGTERM.
func dev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", defaultDevData(), "folder for Vault's storage and log (kept between runs)")
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:9191", "credinject gRPC (ext_authz) listen address")
	httpAddr := fs.String("http-addr", "127.0.0.1:8181", "credinject HTTP (/check) listen address")
	vaultAddr := fs.String("vault-addr", devstack.DefaultVaultAddr, "Vault listen address (port 0: any free port)")
	natsAddr := fs.String("nats-addr", devstack.DefaultNATSAddr, "NATS listen address (port 0: any free port)")
	ttl := fs.Duration("token-ttl", devstack.DefaultTokenTTL, "lifetime of the printed workload tokens")
	level := fs.String("log-level", "info", "credinject's log level: debug (one line per decision), info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	t0 := time.Now()
	stack, err := devstack.Start(ctx, devstack.Options{
		DataDir: *data, VaultAddr: *vaultAddr, NATSAddr: *natsAddr, TokenTTL: *ttl, Progress: stderr,
	})
	if err != nil {
		return interrupted(ctx, stderr, err)
	}
	defer func() {
		stack.Stop()
		fmt.Fprintln(stderr, "credinject dev: stopped")
	}()

	cfg := stack.Config(*grpcAddr, *httpAddr)
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a, err := app.New(ctx, app.Options{Config: cfg, Log: log, JWKS: stack.JWKS(), NoKubernetes: true, Dev: true, Minter: stack.Minter()})
	if err != nil {
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !a.Ready() {
		select {
		case err := <-runErr:
			return interrupted(ctx, stderr, err)
		case <-tick.C:
		}
	}
	g := devstack.Guide{Stack: stack, GRPCAddr: a.GRPCAddr(), HTTPAddr: a.HTTPAddr(), Command: selfCommand()}
	if err := g.Write(stdout); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "credinject dev: up in %v\n", time.Since(t0).Round(time.Millisecond))
	fmt.Fprintln(stdout, "ready")

	select {
	case err := <-runErr:
		return err
	case <-stack.VaultDone():
		cancel()
		<-runErr
		return fmt.Errorf("vault exited unexpectedly; see %s", stack.VaultLog())
	}
}

// interrupted turns an error caused by Ctrl-C during start-up into a clean
// exit.
func interrupted(ctx context.Context, stderr io.Writer, err error) error {
	if err == nil || ctx.Err() != nil && errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "credinject dev: interrupted")
		return nil
	}
	return err
}

func defaultDevData() string {
	dir := os.Getenv("XDG_CACHE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		dir = filepath.Join(home, ".cache")
	}
	return filepath.Join(dir, "credinject", "dev")
}

// selfCommand is how the guide tells the user to run credinject again.
func selfCommand() string {
	exe, err := os.Executable()
	if err != nil {
		return "credinject"
	}
	if strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return "go run ./cmd/credinject" // `go run`'s binary is gone after exit
	}
	if p, err := exec.LookPath(filepath.Base(exe)); err == nil {
		if a, err := filepath.EvalSymlinks(p); err == nil {
			if b, err := filepath.EvalSymlinks(exe); err == nil && a == b {
				return filepath.Base(exe)
			}
		}
	}
	return exe
}
