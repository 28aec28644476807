// Command vaultdev runs the real HashiCorp Vault server core, unsealed, on
// loopback, for credinject's tests and its local demo. It is built from the
// module proxy into a cache outside the repository (see ../build.sh) and is
// never linked into the product binary.
//
// Unlike `vault server -dev` it keeps its storage in a directory, so it can be
// stopped and started again (fault tests) with its data, unseal key and root
// token intact.
//
// With -tls-cert and -tls-key it serves HTTPS (TLS 1.2 or later); with
// -tls-client-ca as well it requires every client to present a certificate
// signed by that CA, like a Vault listener with
// tls_require_and_verify_client_cert. The first start bootstraps over a
// private plaintext loopback listener that is closed before the real one
// opens, so bootstrapping needs no client certificate.
//
// Vault Community has no namespaces and ignores X-Vault-Namespace. With
// -namespace NS every request on the listener except sys/health must carry
// X-Vault-Namespace: NS, as a client of an Enterprise or HCP namespace does,
// or it is refused with 400; the request is then served from the root
// namespace. Tests use it to show that a client sends the namespace on every
// call; it does not emulate namespaces.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	var tf tlsFiles
	flag.StringVar(&tf.cert, "tls-cert", "", "serve HTTPS with this certificate (PEM; with -tls-key)")
	flag.StringVar(&tf.key, "tls-key", "", "private key of -tls-cert (PEM)")
	flag.StringVar(&tf.clientCA, "tls-client-ca", "", "require client certificates signed by this CA (PEM)")
	ns := flag.String("namespace", "", "require X-Vault-Namespace: NS on every request but sys/health (Community Vault has no namespaces; see the package comment)")
	flag.Parse()
	if err := run(*addr, *dir, *rootToken, *logLevel, tf, *ns); err != nil {
		fmt.Fprintln(os.Stderr, "vaultdev:", err)
		os.Exit(1)
	}
}

type tlsFiles struct{ cert, key, clientCA string }

// config is the listener's TLS configuration; nil without -tls-cert.
func (f tlsFiles) config() (*tls.Config, error) {
	if f.cert == "" && f.key == "" {
		if f.clientCA != "" {
			return nil, errors.New("-tls-client-ca needs -tls-cert and -tls-key")
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert/-tls-key: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if f.clientCA != "" {
		pem, err := os.ReadFile(f.clientCA)
		if err != nil {
			return nil, fmt.Errorf("-tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-tls-client-ca %s: no PEM certificate", f.clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// requireNamespace refuses requests that do not name namespace ns.
func requireNamespace(ns string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("X-Vault-Namespace"); got != ns && r.URL.Path != "/v1/sys/health" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "{\"errors\":[\"vaultdev: X-Vault-Namespace %q, want %q\"]}\n", got, ns)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func run(addr, dir, rootToken, logLevel string, tf tlsFiles, ns string) error {
	tlsCfg, err := tf.config()
	if err != nil {
		return err
	}
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

	handler := vaulthttp.Handler.Handler(&vault.HandlerProperties{
		Core:           core,
		ListenerConfig: &configutil.Listener{Address: addr},
	})
	if first {
		if err := bootstrapPrivately(handler, dir, rootToken); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	scheme := "http"
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
		scheme = "https"
	}
	public := handler
	if ns != "" {
		public = requireNamespace(ns, handler)
	}
	srv := &http.Server{Handler: public, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)

	// The line tests and scripts wait for.
	fmt.Printf("vaultdev ready addr=%s://%s\n", scheme, ln.Addr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	return nil
}

// bootstrapPrivately runs bootstrap over a plaintext listener on a free
// loopback port that is closed before the real listener opens.
func bootstrapPrivately(handler http.Handler, dir, rootToken string) error {
	initToken, err := os.ReadFile(filepath.Join(dir, "init-root.token"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	return bootstrap("http://"+ln.Addr().String(), string(initToken), rootToken)
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
