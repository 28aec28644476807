package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/testenv"
)

const nginxBin = "/usr/sbin/nginx"

// startNginx renders deploy/nginx/nginx.conf.template and runs the real nginx
// in the foreground as a child process, until the test ends. It returns the
// gateway's base URL.
func startNginx(t *testing.T, credinjectHTTP, upstreamAddr string) string {
	t.Helper()
	if _, err := os.Stat(nginxBin); err != nil {
		t.Fatalf("nginx is required for this test (Debian package nginx, %s): %v; .ci/run installs it, or: apt-get install -y nginx", nginxBin, err)
	}
	tmpl, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "nginx", "nginx.conf.template"))
	if err != nil {
		t.Fatal(err)
	}
	// Started as root, nginx's workers run as nobody: the prefix must be
	// traversable by them (README), which t.TempDir's 0700 parents are not.
	prefix, err := os.MkdirTemp("", "credinject-e2e-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(prefix) })
	if err := os.Chmod(prefix, 0o755); err != nil {
		t.Fatal(err)
	}
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	conf := strings.NewReplacer(
		"__LISTEN__", listen, "__CREDINJECT__", credinjectHTTP,
		"__UPSTREAM__", upstreamAddr, "__PREFIX__", prefix,
	).Replace(string(tmpl))
	if strings.Contains(conf, "__") {
		i := strings.Index(conf, "__")
		t.Fatalf("template has a placeholder left: %q", conf[i:min(len(conf), i+40)])
	}
	confPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", confPath, "-p", prefix, "-e", filepath.Join(prefix, "error.log")}
	if out, err := exec.Command(nginxBin, append([]string{"-t"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	t.Cleanup(func() { // after RunProcess's: nginx has stopped
		if t.Failed() {
			errLog, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			accessLog, _ := os.ReadFile(filepath.Join(prefix, "access.log"))
			t.Logf("nginx error.log:\n%s\naccess.log:\n%s", errLog, accessLog)
		}
	})
	// SIGTERM to its process group at the end of the test: fast shutdown
	// of the master and its workers.
	outPath := filepath.Join(prefix, "nginx.out")
	nginx := testenv.RunProcess(t, "nginx", outPath, nil, nginxBin, args...)
	waitUntil(t, 15*time.Second, "nginx listening", func() error {
		if nginx.Exited() {
			out, _ := os.ReadFile(outPath)
			errLog, _ := os.ReadFile(filepath.Join(prefix, "error.log"))
			t.Fatalf("nginx exited at start:\n%s\n%s", out, errLog)
		}
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return "http://" + listen
}

// get sends a GET for api.openai.com through the gateway at url, with the
// workload's token unless it is "".
func get(t *testing.T, client *http.Client, url, token string) reply {
	t.Helper()
	return call(t, client, http.MethodGet, url, "api.openai.com", token, "", nil)
}

// TestNginxGateway puts credinject behind the real nginx with the shipped
// template: the workload sends its service-account token, the upstream gets
// the workload's API key and never the token.
func TestNginxGateway(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	a := startCredinject(t)
	up := newEchoUpstream(t)
	gw := startNginx(t, a.HTTPAddr(), up.srv.Listener.Addr().String())
	client := &http.Client{Timeout: 10 * time.Second}
	url := gw + "/v1/chat/completions"

	ns, sa, token, err := env.Kube.Identity(ctx, "e2e-nginx")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Vault.BindNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	key1 := "sk-e2e-" + ns + "-v1"
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": key1}); err != nil {
		t.Fatal(err)
	}
	t.Run("no token is 401 with WWW-Authenticate: Bearer", func(t *testing.T) {
		wantMissingToken(t, up, func() reply { return get(t, client, url, "") })
	})

	t.Run("an authorized workload's key reaches the upstream, its token does not", func(t *testing.T) {
		before := up.count()
		r := get(t, client, url, token)
		if r.status != http.StatusOK || up.count() != before+1 {
			t.Fatalf("status %d body %q, want 200 from the upstream", r.status, r.body)
		}
		h := up.last()
		if got := h.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+key1 {
			t.Fatalf("upstream Authorization %q, want [Bearer %s]", got, key1)
		}
		if got := h.Host; got != "api.openai.com" {
			t.Fatalf("upstream Host %q, want api.openai.com", got)
		}
		noToken(t, "upstream", token, up.everything())
		noToken(t, "client", token, headerValues(r.header))
	})

	t.Run("an unbound namespace is 403", func(t *testing.T) {
		_, _, other, err := env.Kube.Identity(ctx, "e2e-unbound")
		if err != nil {
			t.Fatal(err)
		}
		before := up.count()
		r := get(t, client, url, other)
		if r.status != http.StatusForbidden {
			t.Fatalf("status %d, want 403: %s", r.status, r.body)
		}
		if got := r.header.Get("X-Credinject-Reason"); got != "vault_denied" {
			t.Fatalf("X-Credinject-Reason %q, want vault_denied", got)
		}
		if up.count() != before {
			t.Fatal("a refused request reached the upstream")
		}
	})

	t.Run("after credinject rotate the upstream gets the new key", func(t *testing.T) {
		bin := credinjectBinary(t)
		key2 := "sk-e2e-" + ns + "-v2"
		rctx, rcancel := context.WithTimeout(ctx, time.Minute)
		defer rcancel()
		cmd := exec.CommandContext(rctx, bin, "rotate", "--nats-url", env.NATS.URL, ns+"/"+sa, "api_key="+key2)
		cmd.Env = append(os.Environ(), "VAULT_TOKEN="+env.Vault.RootToken, "VAULT_ADDR="+env.Vault.Addr)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("credinject rotate: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "published") {
			t.Fatalf("credinject rotate published no event:\n%s", out)
		}
		waitUntil(t, 30*time.Second, "the upstream to see the rotated key", func() error {
			r := get(t, client, url, token)
			if r.status != http.StatusOK {
				return fmt.Errorf("status %d: %s", r.status, r.body)
			}
			if last := up.last().Header.Get("Authorization"); last != "Bearer "+key2 {
				return fmt.Errorf("upstream Authorization %q", last)
			}
			return nil
		})
		noToken(t, "upstream", token, up.everything())
	})
}
