package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/watcher"
)

// rotate writes a new credential version to Vault KV v2 and publishes the
// rotation event, saying exactly which step failed.
func rotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	def := config.Default()
	fs := flag.NewFlagSet("rotate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	vaultAddr := fs.String("vault-addr", envOr("VAULT_ADDR", "http://127.0.0.1:8200"), "Vault address (token from VAULT_TOKEN)")
	natsURL := fs.String("nats-url", envOr("NATS_URL", "nats://127.0.0.1:4222"), "NATS URL to publish the event on (empty: do not publish)")
	kvMount := fs.String("kv-mount", def.Vault.KVMount, "KV v2 mount")
	pathTmpl := fs.String("path", def.Vault.Path, "path template under the mount")
	subject := fs.String("subject", def.Events.Subject, "NATS subject")
	route := fs.String("route", "", "route name to put in the event (optional)")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of each step")
	vaultTLS := addVaultTLSFlags(fs)
	natsCreds := addNATSFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) < 2 {
		return usageError{errors.New("want NAMESPACE/SERVICEACCOUNT and at least one key=value")}
	}
	id, err := authz.ParseIdentity(rest[0])
	if err != nil {
		return usageError{fmt.Errorf("%q is not NAMESPACE/SERVICEACCOUNT: %w", rest[0], err)}
	}
	rot := events.Rotation{Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, Route: *route}
	if err := rot.Validate(); err != nil {
		return usageError{err}
	}
	data := map[string]any{}
	for _, kv := range rest[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageError{fmt.Errorf("%q is not key=value", kv)}
		}
		data[k] = v
	}
	token := os.Getenv("VAULT_TOKEN")
	if token == "" {
		return usageError{errors.New("VAULT_TOKEN is not set")}
	}
	path := authz.ExpandPath(*pathTmpl, id)
	var natsOpts []nats.Option
	if *natsURL != "" {
		// Check the NATS files before writing anything.
		if natsOpts, err = natsCreds.options(); err != nil {
			return err
		}
	}

	vc, err := watcher.NewVaultClient(vaultTLS.clientConfig(*vaultAddr))
	if err != nil {
		return fmt.Errorf("step 1/2 (write to Vault): %w", err)
	}
	vc.SetToken(token)
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	s, err := vc.KVv2(*kvMount).Put(wctx, path, data)
	cancel()
	if err != nil {
		return fmt.Errorf("step 1/2 (write %s/data/%s to Vault at %s): %w", *kvMount, path, *vaultAddr, err)
	}
	fmt.Fprintf(stdout, "wrote %s/%s version %d\n", *kvMount, path, s.VersionMetadata.Version)
	if *natsURL == "" {
		fmt.Fprintln(stdout, "no --nats-url: event not published (replicas pick the change up on their next refresh)")
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	nc, err := events.Connect(pctx, *natsURL, natsOpts...)
	if err != nil {
		return fmt.Errorf("step 2/2 (publish the event): the new version is in Vault, but NATS at %s: %w", *natsURL, err)
	}
	defer nc.Close()
	if err := events.NewPublisher(nc, *subject, "credinject/rotate").Publish(pctx, rot); err != nil {
		return fmt.Errorf("step 2/2 (publish the event): the new version is in Vault, but: %w", err)
	}
	fmt.Fprintf(stdout, "published %s on %s\n", rot, *subject)
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
