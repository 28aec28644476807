package watcher_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/credinject/credinject/internal/testenv/testca"
	"github.com/credinject/credinject/watcher"
)

// tlsVault is an HTTPS server requiring a client certificate of ca; it
// answers a login and records what it saw. It stands in for Vault's
// listener only: the real Vault over TLS is tested in internal/e2e.
type tlsVault struct {
	url string
	mu  sync.Mutex
	// seen: namespace header and client certificate CN of each request.
	namespaces []string
	clients    []string
}

func startTLSVault(t *testing.T, ca *testca.CA, srv *testca.Leaf) *tlsVault {
	t.Helper()
	fv := &tlsVault{}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fv.mu.Lock()
		fv.namespaces = append(fv.namespaces, r.Header.Get("X-Vault-Namespace"))
		fv.clients = append(fv.clients, r.TLS.PeerCertificates[0].Subject.CommonName)
		fv.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{"client_token": "hvs.test", "lease_duration": 60}})
	}))
	cert, err := srv.TLS()
	if err != nil {
		t.Fatal(err)
	}
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	fv.url = ts.URL
	return fv
}

func (fv *tlsVault) last() (namespace, client string) {
	fv.mu.Lock()
	defer fv.mu.Unlock()
	if len(fv.namespaces) == 0 {
		return "", ""
	}
	return fv.namespaces[len(fv.namespaces)-1], fv.clients[len(fv.clients)-1]
}

// login logs in through a clone, as the watcher does for each identity.
func login(t *testing.T, vc *vaultapi.Client) error {
	t.Helper()
	c, err := vc.Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloneConfig().HttpClient.CloseIdleConnections()
	_, err = c.Logical().Write("auth/kubernetes/login", map[string]any{"role": "r", "jwt": "x"})
	return err
}

// TestVaultClientTLSAndNamespace: the Vault client built from the
// configuration verifies Vault with vault.caFile, presents
// vault.clientCertFile, expects vault.tlsServerName and sends
// vault.namespace on every clone; the VAULT_* variables apply where the
// configuration is silent and lose where it speaks.
func TestVaultClientTLSAndNamespace(t *testing.T) {
	dir := t.TempDir()
	ca, err := testca.New("vault-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvLeaf, err := ca.Server("vault")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := testca.Write(dir, "vault", ca, srvLeaf)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.Client("credinject")
	if err != nil {
		t.Fatal(err)
	}
	clFiles, err := testca.Write(dir, "client", ca, cl)
	if err != nil {
		t.Fatal(err)
	}
	other, err := testca.New("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	otherLeaf, _ := other.Client("x")
	otherFiles, err := testca.Write(dir, "other", other, otherLeaf)
	if err != nil {
		t.Fatal(err)
	}
	fv := startTLSVault(t, ca, srvLeaf)

	named, err := ca.ServerOnly("vault-named", "vault.example")
	if err != nil {
		t.Fatal(err)
	}
	fvNamed := startTLSVault(t, ca, named)

	full := watcher.VaultClientConfig{Address: fv.url, CAFile: srvFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key, Namespace: "admin/team-a"}
	for name, tc := range map[string]struct {
		cfg     watcher.VaultClientConfig
		env     map[string]string
		wantErr string // "" = the login succeeds
		wantNS  string
	}{
		"config":                     {cfg: full, wantNS: "admin/team-a"},
		"config wins over env":       {cfg: full, env: map[string]string{"VAULT_CACERT": otherFiles.CA, "VAULT_NAMESPACE": "from-env", "VAULT_CLIENT_CERT": otherFiles.Cert, "VAULT_CLIENT_KEY": otherFiles.Key}, wantNS: "admin/team-a"},
		"env where config is silent": {cfg: watcher.VaultClientConfig{Address: fv.url}, env: map[string]string{"VAULT_CACERT": srvFiles.CA, "VAULT_NAMESPACE": "from-env", "VAULT_CLIENT_CERT": clFiles.Cert, "VAULT_CLIENT_KEY": clFiles.Key}, wantNS: "from-env"},
		"no namespace":               {cfg: watcher.VaultClientConfig{Address: fv.url, CAFile: srvFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key}, wantNS: ""},
		"wrong CA":                   {cfg: watcher.VaultClientConfig{Address: fv.url, CAFile: otherFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key}, wantErr: "certificate signed by unknown authority"},
		"no client certificate":      {cfg: watcher.VaultClientConfig{Address: fv.url, CAFile: srvFiles.CA}, wantErr: "certificate"},
		"server name expected": {
			cfg:    watcher.VaultClientConfig{Address: fvNamed.url, CAFile: srvFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key, TLSServerName: "vault.example"},
			wantNS: "",
		},
		// VAULT_SKIP_VERIFY never turns verification off when the
		// configuration names a CA: a certificate that CA did not sign is
		// refused, and one it signed is accepted as without the variable.
		"skip verify loses to caFile": {
			cfg:     watcher.VaultClientConfig{Address: fv.url, CAFile: otherFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key},
			env:     map[string]string{"VAULT_SKIP_VERIFY": "true"},
			wantErr: "certificate signed by unknown authority",
		},
		"skip verify, right caFile": {
			cfg:    watcher.VaultClientConfig{Address: fv.url, CAFile: srvFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key},
			env:    map[string]string{"VAULT_SKIP_VERIFY": "1"},
			wantNS: "",
		},
		"skip verify where config is silent": {
			cfg:    watcher.VaultClientConfig{Address: fv.url, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key},
			env:    map[string]string{"VAULT_SKIP_VERIFY": "true"},
			wantNS: "",
		},
		"server name not given": {
			cfg:     watcher.VaultClientConfig{Address: fvNamed.url, CAFile: srvFiles.CA, ClientCertFile: clFiles.Cert, ClientKeyFile: clFiles.Key},
			wantErr: "x509: cannot validate certificate",
		},
	} {
		t.Run(name, func(t *testing.T) {
			for _, k := range []string{"VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY", "VAULT_TLS_SERVER_NAME", "VAULT_ADDR", "VAULT_SKIP_VERIFY"} {
				t.Setenv(k, tc.env[k])
			}
			vc, err := watcher.NewVaultClient(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = login(t, vc)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("login: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			srv := fv
			if tc.cfg.TLSServerName != "" {
				srv = fvNamed
			}
			ns, client := srv.last()
			if ns != tc.wantNS || client != "credinject" {
				t.Fatalf("Vault saw namespace %q from %q, want %q from credinject", ns, client, tc.wantNS)
			}
		})
	}
}

func TestVaultClientBadFiles(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for name, cfg := range map[string]watcher.VaultClientConfig{
		"missing CA":          {Address: "https://v:8200", CAFile: missing},
		"garbage CA":          {Address: "https://v:8200", CAFile: garbage},
		"missing client cert": {Address: "https://v:8200", ClientCertFile: missing, ClientKeyFile: missing},
		"cert without key":    {Address: "https://v:8200", ClientCertFile: garbage},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("VAULT_CACERT", "")
			_, err := watcher.NewVaultClient(cfg)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "vault client: TLS") {
				t.Fatalf("error %q does not say TLS", err)
			}
		})
	}
}

// TestVaultTransportRisks: a plaintext address, and an https one whose
// certificate VAULT_SKIP_VERIFY leaves unverified, are told apart from a
// verified one (internal/app warns of both at start and on /readyz).
func TestVaultTransportRisks(t *testing.T) {
	ca, err := testca.New("vault-ca")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Server("vault")
	if err != nil {
		t.Fatal(err)
	}
	files, err := testca.Write(t.TempDir(), "vault", ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		cfg                   watcher.VaultClientConfig
		skipVerify            string
		plaintext, unverified bool
	}{
		"http":                       {cfg: watcher.VaultClientConfig{Address: "http://vault:8200"}, plaintext: true},
		"HTTP upper case":            {cfg: watcher.VaultClientConfig{Address: "HTTP://vault:8200"}, plaintext: true},
		"https":                      {cfg: watcher.VaultClientConfig{Address: "https://vault:8200"}},
		"https, skip verify":         {cfg: watcher.VaultClientConfig{Address: "https://vault:8200"}, skipVerify: "true", unverified: true},
		"https, caFile, skip verify": {cfg: watcher.VaultClientConfig{Address: "https://vault:8200", CAFile: files.CA}, skipVerify: "true"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("VAULT_SKIP_VERIFY", c.skipVerify)
			t.Setenv("VAULT_CACERT", "")
			vc, err := watcher.NewVaultClient(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if p, u := watcher.VaultTransportRisks(vc); p != c.plaintext || u != c.unverified {
				t.Fatalf("plaintext %v unverified %v, want %v %v", p, u, c.plaintext, c.unverified)
			}
		})
	}
}
