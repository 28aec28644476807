package e2e_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/devstack"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/logbuf"
	"github.com/credinject/credinject/internal/testenv/testca"
)

// vaultNamespace is the namespace every request to the TLS Vault must name
// (vaultdev -namespace: Community Vault has no namespaces, so this shows the
// header on every call, not namespace semantics).
const vaultNamespace = "admin/team-a"

// vaultTLS is a second bed Vault serving HTTPS with a CA generated in the
// test and requiring client certificates of that CA and the namespace
// header, with the bed's Kubernetes auth, role and policy.
type vaultTLS struct {
	vault                *testenv.Vault
	ca                   testca.Files // CA of the server
	client               testca.Files // credinject's client certificate
	otherCA, otherClient testca.Files // another CA and a client certificate it signed
}

func startVaultTLS(t *testing.T, env *testenv.Env) vaultTLS {
	t.Helper()
	dir := t.TempDir()
	ca, err := testca.New("vault-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("vault", "vault.example")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := testca.Write(dir, "vault", ca, srv)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.Client("credinject")
	if err != nil {
		t.Fatal(err)
	}
	clFiles, err := testca.Write(dir, "credinject", ca, cl)
	if err != nil {
		t.Fatal(err)
	}
	other, err := testca.New("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	ocl, err := other.Client("credinject")
	if err != nil {
		t.Fatal(err)
	}
	oFiles, err := testca.Write(dir, "other", other, ocl)
	if err != nil {
		t.Fatal(err)
	}
	v, err := testenv.StartVaultWith(context.Background(), filepath.Join(dir, "vault"), env.Kube, testenv.VaultOptions{
		TLS: &devstack.VaultTLS{
			CertFile: srvFiles.Cert, KeyFile: srvFiles.Key, ClientCAFile: srvFiles.CA,
			CAFile: srvFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key,
		},
		Namespace: vaultNamespace,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Stop)
	return vaultTLS{vault: v, ca: srvFiles, client: clFiles, otherCA: oFiles, otherClient: oFiles}
}

func (vt vaultTLS) config(env *testenv.Env) config.Config {
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Vault.Address = vt.vault.Addr
	cfg.Vault.CAFile = vt.ca.CA
	cfg.Vault.ClientCertFile = vt.client.Cert
	cfg.Vault.ClientKeyFile = vt.client.Key
	cfg.Vault.Namespace = vaultNamespace
	return cfg
}

// TestVaultOverTLS: credinject logs in to and reads from a real Vault that
// serves HTTPS and requires a client certificate, naming vault.namespace on
// every call (without it the login is refused: 403). A wrong CA, a missing or
// foreign client certificate, or a wrong server name never allow: the
// answer is 503 vault_unavailable and the log says which keys to check. A
// CA file that does not exist stops the start, naming the key.
func TestVaultOverTLS(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	vt := startVaultTLS(t, env)
	ns, sa, tok, err := env.Kube.Identity(ctx, "vaulttls")
	if err != nil {
		t.Fatal(err)
	}
	if err := vt.vault.BindNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if _, err := vt.vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-vault-tls"}); err != nil {
		t.Fatal(err)
	}

	t.Run("CA, client certificate and server name", func(t *testing.T) {
		cfg := vt.config(env)
		// The address names the IP; the certificate is checked against
		// the name the configuration gives.
		cfg.Vault.TLSServerName = "vault.example"
		r := apptest.Start(t, env, cfg)
		if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-vault-tls" {
			t.Fatalf("Check: %q", got)
		}
		if got := r.Counter(t, "credinject_vault_requests_total", map[string]string{"op": "read", "result": "ok"}); got < 1 {
			t.Fatalf("no successful Vault read counted (%v)", got)
		}
	})

	t.Run("no namespace", func(t *testing.T) {
		t.Setenv("VAULT_NAMESPACE", "")
		cfg := vt.config(env)
		cfg.Vault.Namespace = ""
		r := apptest.Start(t, env, cfg)
		if got := r.Check(t, tok, "api.openai.com"); got != "deny 403 vault_denied" {
			t.Fatalf("Check without the namespace: %q", got)
		}
	})

	for name, tc := range map[string]struct {
		adjust  func(*config.Config)
		wantLog string
	}{
		"wrong CA": {func(c *config.Config) { c.Vault.CAFile = vt.otherCA.CA }, "certificate signed by unknown authority"},
		"no client certificate": {func(c *config.Config) {
			c.Vault.ClientCertFile, c.Vault.ClientKeyFile = "", ""
		}, "TLS handshake failed"},
		"another CA's client certificate": {func(c *config.Config) {
			c.Vault.ClientCertFile, c.Vault.ClientKeyFile = vt.otherClient.Cert, vt.otherClient.Key
		}, "TLS handshake failed"},
		"wrong server name": {func(c *config.Config) { c.Vault.TLSServerName = "vault.wrong.example" }, "vault.tlsServerName"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("VAULT_CACERT", "")
			cfg := vt.config(env)
			tc.adjust(&cfg)
			logs := &logbuf.Buffer{}
			r := apptest.StartWith(t, env, cfg, func(o *app.Options) {
				o.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
			})
			if got := r.Check(t, tok, "api.openai.com"); got != "deny 503 vault_unavailable" {
				t.Fatalf("Check: %q, want deny 503 vault_unavailable", got)
			}
			if got := r.HTTPCheck(t, "Bearer "+tok, "api.openai.com", "Authorization"); got != "deny 503 vault_unavailable" {
				t.Fatalf("/check: %q, want deny 503 vault_unavailable", got)
			}
			waitUntil(t, 15e9, "the start-up Vault probe's log line", func() error {
				if s := logs.String(); !strings.Contains(s, "vault: TLS handshake failed") || !strings.Contains(s, tc.wantLog) {
					return errString("log so far:\n" + s)
				}
				return nil
			})
		})
	}

	t.Run("missing CA file", func(t *testing.T) {
		cfg := vt.config(env)
		cfg.Vault.CAFile = filepath.Join(t.TempDir(), "nope.crt")
		a, err := app.New(ctx, app.Options{Config: cfg, RestConfig: env.Kube.RestConfig()})
		if err == nil {
			a.Run(canceled())
			t.Fatal("started with a missing vault.caFile")
		}
		if !strings.Contains(err.Error(), "vault.caFile") || !strings.Contains(err.Error(), cfg.Vault.CAFile) {
			t.Fatalf("error %q does not name vault.caFile and the file", err)
		}
	})
}

type errString string

func (e errString) Error() string { return string(e) }

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
