package e2e_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/natsauth"
)

func natsConfig(env *testenv.Env, url string, f natsauth.Files) config.Config {
	cfg := apptest.Config(env)
	cfg.Prefetch.Refresh = time.Hour // only an event explains a change
	cfg.Events.NatsURL = url
	cfg.Events.CredsFile, cfg.Events.NKeyFile, cfg.Events.TokenFile = f.CredsFile, f.NKeyFile, f.TokenFile
	cfg.Events.CAFile, cfg.Events.CertFile, cfg.Events.KeyFile = f.CAFile, f.CertFile, f.KeyFile
	return cfg
}

// TestEventsWithNATSCredentials: against a NATS server requiring TLS with a
// client certificate and a creds-file user, credinject connects with
// events.credsFile/caFile/certFile/keyFile and a rotation published with the
// same files reaches it. With another account's user, /readyz says why
// events are down, credinject_events_connected is 0, and checks are still
// answered.
func TestEventsWithNATSCredentials(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	srv, err := natsauth.Start(t.TempDir(), natsauth.Creds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ns, sa, tok := boundIdentity(ctx, t, env, "natsauth", "sk-nats-1")

	t.Run("good credentials", func(t *testing.T) {
		r := apptest.Start(t, env, natsConfig(env, srv.URL, srv.Good))
		if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-nats-1" {
			t.Fatalf("before: %q", got)
		}
		apptest.Eventually(t, 10*time.Second, "NATS connection", func() bool {
			return r.Counter(t, "credinject_events_connected", nil) == 1
		})
		if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-nats-2"}); err != nil {
			t.Fatal(err)
		}
		opts, err := events.Credentials(srv.Good).Options()
		if err != nil {
			t.Fatal(err)
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		nc, err := events.Connect(pctx, srv.URL, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if err := events.NewPublisher(nc, "credinject.rotated", "e2e").Publish(pctx, events.Rotation{Namespace: ns, ServiceAccount: sa}); err != nil {
			t.Fatal(err)
		}
		apptest.Eventually(t, 10*time.Second, "the rotated key", func() bool {
			return r.Check(t, tok, "api.openai.com") == "allow authorization=Bearer sk-nats-2"
		})
	})

	t.Run("wrong credentials", func(t *testing.T) {
		r := apptest.Start(t, env, natsConfig(env, srv.URL, srv.Wrong))
		var body string
		apptest.Eventually(t, 10*time.Second, "/readyz naming the NATS error", func() bool {
			resp, err := http.Get(r.HTTPURL + "/readyz")
			if err != nil {
				return false
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			return resp.StatusCode == http.StatusOK && strings.Contains(body, "events: "+events.StatusDisconnected+" (last error: nats: Authorization Violation")
		})
		t.Logf("/readyz:\n%s", body)
		if got := r.Counter(t, "credinject_events_connected", nil); got != 0 {
			t.Fatalf("credinject_events_connected %v", got)
		}
		if got := r.Check(t, tok, "api.openai.com"); !strings.HasPrefix(got, "allow authorization=Bearer sk-nats-") {
			t.Fatalf("Check while NATS refuses us: %q", got)
		}
	})
}

// TestRotateCommandOverTLS runs `credinject rotate` against a Vault that
// serves HTTPS, requires a client certificate and the namespace header, and
// a NATS server that requires TLS, a client certificate and a creds user; a
// credinject configured with the same files serves the new key at once.
func TestRotateCommandOverTLS(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	vt := startVaultTLS(t, env)
	nsrv, err := natsauth.Start(t.TempDir(), natsauth.Creds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nsrv.Stop)
	ns, sa, tok, err := env.Kube.Identity(ctx, "rotatetls")
	if err != nil {
		t.Fatal(err)
	}
	if err := vt.vault.BindNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if _, err := vt.vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-old"}); err != nil {
		t.Fatal(err)
	}
	cfg := natsConfig(env, nsrv.URL, nsrv.Good)
	vcfg := vt.config(env)
	cfg.Vault = vcfg.Vault
	r := apptest.Start(t, env, cfg)
	if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-old" {
		t.Fatalf("before: %q", got)
	}
	apptest.Eventually(t, 10*time.Second, "NATS connection", func() bool {
		return r.Counter(t, "credinject_events_connected", nil) == 1
	})

	g := nsrv.Good
	cmd := exec.Command(credinjectBinary(t), "rotate",
		"--vault-addr", vt.vault.Addr, "--vault-ca-file", vt.ca.CA,
		"--vault-client-cert-file", vt.client.Cert, "--vault-client-key-file", vt.client.Key,
		"--vault-namespace", vaultNamespace, "--vault-tls-server-name", "vault.example",
		"--nats-url", nsrv.URL, "--nats-creds-file", g.CredsFile, "--nats-ca-file", g.CAFile,
		"--nats-cert-file", g.CertFile, "--nats-key-file", g.KeyFile,
		ns+"/"+sa, "api_key=sk-new")
	cmd.Env = append(os.Environ(), "VAULT_TOKEN="+vt.vault.RootToken)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	t.Logf("rotate:\n%s", out)
	apptest.Eventually(t, 10*time.Second, "the rotated key", func() bool {
		return r.Check(t, tok, "api.openai.com") == "allow authorization=Bearer sk-new"
	})

	// Without the client certificate Vault refuses the write, and the
	// command says which step failed.
	cmd = exec.Command(credinjectBinary(t), "rotate", "--vault-addr", vt.vault.Addr, "--vault-ca-file", vt.ca.CA,
		"--vault-namespace", vaultNamespace, "--nats-url", "", ns+"/"+sa, "api_key=sk-never")
	cmd.Env = append(os.Environ(), "VAULT_TOKEN="+vt.vault.RootToken)
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "step 1/2") || !strings.Contains(string(out), "tls") {
		t.Fatalf("rotate without a client certificate: %v\n%s", err, out)
	}
}
