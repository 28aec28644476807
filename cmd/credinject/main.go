// Command credinject is the credential-injecting ext_authz server and its
// tools. It only turns flags into wiring; the parts live in their packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Set at build time (-ldflags "-X main.version=… -X main.commit=…").
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `credinject: per-workload credential injection for Envoy egress gateways

Usage:
  credinject serve --config FILE [--grpc-addr A] [--http-addr A] [--log-level L]
  credinject dev [--data DIR] [--grpc-addr A] [--http-addr A] [--vault-addr A] [--nats-addr A]
                 [--token-ttl D] [--log-level L]  a local demo: Vault, NATS and credinject on loopback
  credinject rotate [--vault-addr A] [--nats-url N] NAMESPACE/SERVICEACCOUNT key=value ...
  credinject vault-audit-bridge [flags]  publish rotation events from Vault's audit stream
  credinject version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stderr)
	case "dev":
		err = dev(ctx, args[1:], stdout, stderr)
	case "rotate":
		err = rotate(ctx, args[1:], stdout, stderr)
	case "vault-audit-bridge":
		err = auditBridge(ctx, args[1:], stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "credinject %s (commit %s)\n", version, commit)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "credinject: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "credinject %s: %v\n", args[0], err)
			return 2
		}
		fmt.Fprintf(stderr, "credinject %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

type usageError struct{ error }

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", level)}
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}
