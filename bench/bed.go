package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// CreateIdentities creates n ServiceAccounts on the bed, perNamespace to a
// fresh namespace, binds each namespace to the Vault role, stores a distinct
// key for each at secret/egress/<ns>/<sa> and mints each a token for the API
// server's default audience.
func CreateIdentities(ctx context.Context, env *testenv.Env, n, perNamespace int) ([]Identity, error) {
	if env.Kube == nil || env.Vault == nil {
		return nil, errors.New("bench: identities need the bed's kube-apiserver and Vault")
	}
	if perNamespace <= 0 {
		perNamespace = 10
	}
	ids := make([]Identity, n)
	var namespaces []string
	for i := range ids {
		if i%perNamespace == 0 {
			ns := testenv.UniqueName("bench")
			if err := env.Kube.CreateNamespace(ctx, ns); err != nil {
				return nil, err
			}
			// One at a time: each call rewrites the role's whole list.
			if err := env.Vault.BindNamespace(ctx, ns); err != nil {
				return nil, err
			}
			namespaces = append(namespaces, ns)
		}
		ids[i] = Identity{
			Namespace:      namespaces[len(namespaces)-1],
			ServiceAccount: fmt.Sprintf("workload-%d", i%perNamespace),
			APIKey:         "sk-bench-" + randHex(12),
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range ids {
		id := &ids[i]
		g.Go(func() error {
			if _, err := env.Kube.CreateServiceAccount(gctx, id.Namespace, id.ServiceAccount); err != nil {
				return err
			}
			if _, err := env.Vault.PutCredential(gctx, "egress/"+id.Key(), map[string]any{"api_key": id.APIKey}); err != nil {
				return err
			}
			tok, err := env.Kube.Token(gctx, id.Namespace, id.ServiceAccount, nil, time.Hour)
			if err != nil {
				return err
			}
			id.Token = tok
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return ids, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Credinject is the real server, wired by internal/app, running in this
// process against the bed.
type Credinject struct {
	App    *app.App
	cancel context.CancelFunc
	done   chan error
}

// CredinjectConfig is credinject's default configuration pointed at the bed:
// token validation by TokenReview, Vault's Kubernetes auth and KV mount as
// the reference design has them, rotation events from the bed's NATS.
func CredinjectConfig(env *testenv.Env) config.Config {
	cfg := config.Default()
	cfg.Listen.GRPC, cfg.Listen.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Kubernetes.TokenValidation = "tokenreview"
	cfg.Kubernetes.Audiences = []string{testenv.Audience}
	cfg.Vault.Address = env.Vault.Addr
	cfg.Vault.Role = testenv.VaultRole
	cfg.Vault.AuthMount = testenv.VaultKubeMount
	cfg.Vault.KVMount = testenv.VaultKVMount
	// The audit trail stays on, as in production, but in a file: stdout is
	// the report's.
	cfg.Audit.Output = filepath.Join(env.Dir, "audit.jsonl")
	if env.NATS != nil {
		cfg.Events.NatsURL = env.NATS.URL
	}
	return cfg
}

// StartCredinject starts credinject with cfg and waits until it is ready.
func StartCredinject(ctx context.Context, env *testenv.Env, cfg config.Config, log *slog.Logger) (*Credinject, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench: credinject config: %w", err)
	}
	a, err := app.New(ctx, app.Options{Config: cfg, RestConfig: env.Kube.RestConfig(), Log: log})
	if err != nil {
		return nil, fmt.Errorf("bench: credinject: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Credinject{App: a, cancel: cancel, done: make(chan error, 1)}
	go func() { c.done <- a.Run(rctx) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(time.Minute)
	for !a.Ready() {
		select {
		case err := <-c.done:
			cancel()
			return nil, fmt.Errorf("bench: credinject stopped before ready: %w", err)
		case <-deadline:
			_ = c.Stop()
			return nil, errors.New("bench: credinject not ready after a minute")
		case <-ctx.Done():
			_ = c.Stop()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
	return c, nil
}

// Addr is the gRPC address.
func (c *Credinject) Addr() string { return c.App.GRPCAddr() }

// Stop shuts credinject down and waits for it.
func (c *Credinject) Stop() error {
	c.cancel()
	return <-c.done
}

// Warm sends one request per identity until each is answered correctly, so
// that a run measures the cache-first path (token results and credentials
// cached) rather than the first fill. Identities are warmed 8 at a time.
func Warm(ctx context.Context, t *Target, ids []Identity, timeout time.Duration) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range ids {
		id := &ids[i]
		g.Go(func() error {
			wctx, cancel := context.WithTimeout(gctx, timeout)
			defer cancel()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			var last string
			for {
				rctx, rcancel := context.WithTimeout(wctx, 5*time.Second)
				last, _ = t.call(rctx, nil, id)
				rcancel()
				if last == "" {
					return nil
				}
				select {
				case <-wctx.Done():
					return fmt.Errorf("bench: warm-up of %s on %s: last answer %s: %w", id.Key(), t.Name, last, wctx.Err())
				case <-tick.C:
				}
			}
		})
	}
	return g.Wait()
}
