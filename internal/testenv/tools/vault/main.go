// Command vaultdev runs the real HashiCorp Vault server core, unsealed, on
// loopback, for credinject's tests and its local demo. It is built from the
// module proxy into a cache outside the repository (see ../build.sh) and is
// never linked into the product binary.
//
// Unlike `vault server -dev` it keeps its storage in a directory, so it can be
// stopped and started again (fault tests) with its data, unseal key and root
// token intact.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	jwtauth "github.com/hashicorp/vault-plugin-auth-jwt"
	kubeauth "github.com/hashicorp/vault-plugin-auth-kubernetes"
	kv "github.com/hashicorp/vault-plugin-secrets-kv"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/audit"
	"github.com/hashicorp/vault/builtin/logical/database"
	"github.com/hashicorp/vault/helper/namespace"
	"github.com/hashicorp/vault/helper/testhelpers/corehelpers"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/internalshared/configutil"
	dbpostgres "github.com/hashicorp/vault/plugins/database/postgresql"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/physical/file"
	"github.com/hashicorp/vault/vault"
	"github.com/hashicorp/vault/vault/plugincatalog"
	vaultseal "github.com/hashicorp/vault/vault/seal"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8200", "listen address")
	dir := flag.String("data", "", "storage directory (required; reused across restarts)")
	rootToken := flag.String("root-token", "root", "fixed root token id")
	logLevel := flag.String("log-level", "warn", "vault log level")
	flag.Parse()
	if err := run(*addr, *dir, *rootToken, *logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "vaultdev:", err)
		os.Exit(1)
	}
}

func run(addr, dir, rootToken, logLevel string) error {
	if dir == "" {
		return errors.New("-data is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "vault", Level: hclog.LevelFromString(logLevel), Output: os.Stderr})
	phys, err := file.NewFileBackend(map[string]string{"path": filepath.Join(dir, "storage")}, logger)
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	core, err := vault.NewCore(&vault.CoreConfig{
		Physical:           phys,
		Logger:             logger,
		DisableMlock:       true,
		BuiltinRegistry:    registry{corehelpers.NewMockBuiltinRegistry()},
		LogicalBackends:    map[string]logical.Factory{"kv": kv.Factory, "database": database.Factory},
		CredentialBackends: map[string]logical.Factory{"kubernetes": kubeauth.Factory, "jwt": jwtauth.Factory},
		AuditBackends:      map[string]audit.Factory{"file": audit.NewFileBackend, "socket": audit.NewSocketBackend},
	})
	if err != nil {
		return fmt.Errorf("new core: %w", err)
	}
	defer core.Shutdown()

	ctx := namespace.ContextWithNamespace(context.Background(), namespace.RootNamespace)
	keyFile := filepath.Join(dir, "unseal.key")
	inited, err := core.Initialized(ctx)
	if err != nil {
		return err
	}
	first := !inited
	if first {
		cfg := &vault.SealConfig{SecretShares: 1, SecretThreshold: 1, Name: "shamir"}
		if core.SealAccess().StoredKeysSupported() != vaultseal.StoredKeysNotSupported {
			cfg.StoredShares = 1
		}
		res, err := core.Initialize(ctx, &vault.InitParams{BarrierConfig: cfg})
		if err != nil {
			return fmt.Errorf("initialize: %w", err)
		}
		if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(res.SecretShares[0])), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "init-root.token"), []byte(res.RootToken), 0o600); err != nil {
			return err
		}
	}
	raw, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("unseal key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("unseal key: %w", err)
	}
	if ok, err := core.Unseal(key); err != nil || !ok {
		return fmt.Errorf("unseal: ok=%v err=%v", ok, err)
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	handler := vaulthttp.Handler.Handler(&vault.HandlerProperties{
		Core:           core,
		ListenerConfig: &configutil.Listener{Address: addr},
	})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)

	if first {
		initToken, err := os.ReadFile(filepath.Join(dir, "init-root.token"))
		if err != nil {
			return err
		}
		if err := bootstrap("http://"+ln.Addr().String(), string(initToken), rootToken); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	// The line tests and scripts wait for.
	fmt.Printf("vaultdev ready addr=http://%s\n", ln.Addr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	return nil
}

// registry is the test helpers' builtin registry with the real PostgreSQL
// database plugin in place of its stub, so the database secrets engine hands
// out real, leased PostgreSQL users.
type registry struct {
	plugincatalog.BuiltinRegistry
}

func (r registry) Get(name string, t consts.PluginType) (func() (interface{}, error), bool) {
	if name == "postgresql-database-plugin" && t == consts.PluginTypeDatabase {
		return dbpostgres.New, true
	}
	return r.BuiltinRegistry.Get(name, t)
}

// bootstrap makes the fresh server look like `vault server -dev`: a fixed root
// token and kv v2 at secret/.
func bootstrap(addr, initToken, rootToken string) error {
	cfg := api.DefaultConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	c.SetToken(initToken)
	if _, err := c.Logical().Write("auth/token/create", map[string]any{
		"id": rootToken, "policies": []string{"root"}, "no_parent": true, "period": "0",
	}); err != nil {
		return fmt.Errorf("root token: %w", err)
	}
	c.SetToken(rootToken)
	if err := c.Sys().Mount("secret", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		return fmt.Errorf("mount secret/: %w", err)
	}
	return nil
}
