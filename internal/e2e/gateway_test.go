package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// The same checks behind every real gateway that speaks to credinject:
// Envoy (gRPC and HTTP ext_authz, deploy/envoy) and Caddy (forward_auth,
// deploy/caddy). nginx has its own test (nginx_test.go).

// received is one request as the upstream saw it.
type received struct {
	Method, Path, Host, Proto string
	Header                    http.Header
	Body                      string
}

// echoUpstream is the service behind the gateway: it records every request
// and answers with what it received, as JSON.
type echoUpstream struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []received
}

func newEchoUpstream(t *testing.T) *echoUpstream {
	t.Helper()
	u := &echoUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rec := received{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Proto: r.Proto, Header: r.Header.Clone(), Body: string(body)}
		u.mu.Lock()
		u.got = append(u.got, rec)
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rec)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *echoUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.got)
}

func (u *echoUpstream) last() received {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.got) == 0 {
		return received{}
	}
	return u.got[len(u.got)-1]
}

// everything returns every header name and value, path and body the
// upstream has seen.
func (u *echoUpstream) everything() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var vs []string
	for _, r := range u.got {
		vs = append(vs, r.Path, r.Body)
		for k, v := range r.Header {
			vs = append(vs, k)
			vs = append(vs, v...)
		}
	}
	return vs
}

// render fills a deploy/ template's placeholders (testenv.Render): the tests
// run the documented files, not copies of them.
func render(t *testing.T, rel string, values map[string]string) string {
	t.Helper()
	s, err := testenv.Render(rel, values)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func splitAddr(t *testing.T, addr string) (host, port string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

func gatewayBinary(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required for this test: %v; `make setup` (as root) installs it (scripts/setup.sh)", name, err)
	}
	return bin
}

// startEnvoy runs the real Envoy with deploy/envoy/envoy-<mode>.yaml in front
// of credinject's gRPC (mode "grpc") or HTTP ("http") listener and returns
// the gateway's base URL once Envoy's admin /ready says LIVE, and Envoy.
func startEnvoy(t *testing.T, mode, authzAddr, upstreamAddr string) (string, *testenv.Envoy) {
	t.Helper()
	return startEnvoyConfig(t, "deploy/envoy/envoy-"+mode+".yaml", authzAddr, upstreamAddr, nil)
}

// startEnvoyConfig runs the real Envoy with the deploy/ file rel, rendered
// with a free listen port, admin port 0, credinject at authzAddr and the
// upstream at upstreamAddr (host:port) and the values in extra, and returns
// the gateway's base URL once Envoy's admin /ready says LIVE, and Envoy.
// Envoy stops at the end of the test; its log is printed if the test failed.
func startEnvoyConfig(t *testing.T, rel, authzAddr, upstreamAddr string, extra map[string]string) (string, *testenv.Envoy) {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ah, ap := splitAddr(t, authzAddr)
	uh, up := splitAddr(t, upstreamAddr)
	values := map[string]string{
		"LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": fmt.Sprint(port), "ADMIN_PORT": "0",
		"CREDINJECT_ADDRESS": ah, "CREDINJECT_PORT": ap, "UPSTREAM_ADDRESS": uh, "UPSTREAM_PORT": up,
	}
	maps.Copy(values, extra)
	conf := render(t, rel, values)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := testenv.StartEnvoy(ctx, t.TempDir(), conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Stop()
		if t.Failed() {
			t.Logf("envoy log:\n%s", e.Log())
		}
	})
	return fmt.Sprintf("http://127.0.0.1:%d", port), e
}

// startCaddy runs the real Caddy with deploy/caddy/Caddyfile in front of
// credinject's HTTP listener and returns the gateway's base URL.
func startCaddy(t *testing.T, authzAddr, upstreamAddr string) string {
	t.Helper()
	bin := gatewayBinary(t, "caddy")
	dir := t.TempDir()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	conf := render(t, "deploy/caddy/Caddyfile", map[string]string{
		"LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": fmt.Sprint(port),
		"CREDINJECT": authzAddr, "UPSTREAM": upstreamAddr,
	})
	confPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// Caddy keeps its state under XDG folders: this test's, not the user's.
	env := append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
	caddy := testenv.RunProcess(t, "caddy", filepath.Join(dir, "caddy.log"), env, bin, "run", "--config", confPath, "--adapter", "caddyfile")
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	waitUntil(t, 30*time.Second, "caddy listening", func() error {
		if caddy.Exited() {
			t.Fatal("caddy exited at start")
		}
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return "http://" + listen
}

type reply struct {
	status int
	proto  string
	header http.Header
	body   string
}

// call sends one request through the gateway as a workload would.
func call(t *testing.T, client *http.Client, method, url, host, token, body string, extra http.Header) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range extra {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{status: resp.StatusCode, proto: resp.Proto, header: resp.Header, body: string(b)}
}

// noToken fails the test if any of values (seen by where: "upstream",
// "client") holds the workload's token or its signature.
func noToken(t *testing.T, where, token string, values []string) {
	t.Helper()
	sig := token[strings.LastIndexByte(token, '.')+1:]
	for _, v := range values {
		if strings.Contains(v, token) || strings.Contains(v, sig) {
			t.Fatalf("the workload's token reached the %s: %.60q…", where, v)
		}
	}
}

// headerValues flattens h into its names and values, for noToken.
func headerValues(h http.Header) []string {
	var vs []string
	for k, v := range h {
		vs = append(vs, k)
		vs = append(vs, v...)
	}
	return vs
}

// wantMissingToken sends a request without a token with send and checks
// the gateway's answer: 401 with exactly one WWW-Authenticate: Bearer and
// X-Credinject-Reason missing_token, and nothing sent to up.
func wantMissingToken(t *testing.T, up *echoUpstream, send func() reply) {
	t.Helper()
	before := up.count()
	r := send()
	if r.status != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401: %s", r.status, r.body)
	}
	if got := r.header.Values("WWW-Authenticate"); len(got) != 1 || got[0] != "Bearer" {
		t.Fatalf("WWW-Authenticate %q, want exactly [Bearer] (all: %v)", got, r.header)
	}
	if got := r.header.Get("X-Credinject-Reason"); got != "missing_token" {
		t.Fatalf("X-Credinject-Reason %q, want missing_token", got)
	}
	if up.count() != before {
		t.Fatal("a request without a token reached the upstream")
	}
}

// h2cClient speaks HTTP/2 without TLS (prior knowledge), as a gRPC-style or
// HTTP/2-only client would.
func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &p}}
}

type gatewayCase struct {
	name string
	// start runs the gateway in front of a (credinject) and up.
	start func(t *testing.T, a *app.App, up string) string
	h2c   bool
	// reasonOn503: the gateway passes credinject's x-credinject-reason on
	// with a 503. Envoy's HTTP ext_authz treats any 5xx of the authorizer as
	// an error and answers status_on_error (503) itself, without headers.
	reasonOn503 bool
	// accessLog, if set, is the gateway's log, whose access log lines name
	// the identity credinject allowed (ext_authz dynamic metadata).
	accessLog func() string
}

func TestEnvoyGRPCGateway(t *testing.T) {
	var e *testenv.Envoy
	testGateway(t, gatewayCase{name: "envoy-grpc", h2c: true, reasonOn503: true, start: func(t *testing.T, a *app.App, up string) string {
		url, started := startEnvoy(t, "grpc", a.GRPCAddr(), up)
		e = started
		return url
	}, accessLog: func() string { return e.Log() }})
}

func TestEnvoyHTTPGateway(t *testing.T) {
	testGateway(t, gatewayCase{name: "envoy-http", h2c: true, start: func(t *testing.T, a *app.App, up string) string {
		url, _ := startEnvoy(t, "http", a.HTTPAddr(), up)
		return url
	}})
}

func TestCaddyGateway(t *testing.T) {
	testGateway(t, gatewayCase{name: "caddy", h2c: true, reasonOn503: true, start: func(t *testing.T, a *app.App, up string) string {
		return startCaddy(t, a.HTTPAddr(), up)
	}})
}

const (
	openaiHost    = "api.openai.com"
	anthropicHost = "api.anthropic.com"
)

// testGateway: client → gateway → echo upstream, credinject deciding.
func testGateway(t *testing.T, g gatewayCase) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	a, stopCredinject := startCredinjectWith(t, func(c *config.Config) {
		c.Routes = []config.Route{{
			Name: "anthropic", Hosts: []string{anthropicHost},
			Path:   "anthropic/{namespace}/{serviceaccount}",
			Inject: config.Inject{Header: "x-api-key", Value: "{api_key}"},
		}}
	})
	up := newEchoUpstream(t)
	gw := g.start(t, a, up.srv.Listener.Addr().String())
	client := &http.Client{Timeout: 10 * time.Second}
	url := gw + "/v1/chat/completions"

	ns, sa, token := boundIdentity(ctx, t, env, "e2e-"+g.name, "sk-"+g.name+"-v1")
	key := "sk-" + g.name + "-v1"
	apiKey := "ak-" + g.name + "-v1"
	if _, err := env.Vault.PutCredential(ctx, "anthropic/"+ns+"/"+sa, map[string]any{"api_key": apiKey}); err != nil {
		t.Fatal(err)
	}
	// allowed checks one answer that should have reached the upstream with
	// the workload's key.
	allowed := func(t *testing.T, r reply) received {
		t.Helper()
		if r.status != http.StatusOK {
			t.Fatalf("status %d, want 200 from the upstream: %s (%v)", r.status, r.body, r.header)
		}
		var got received
		if err := json.Unmarshal([]byte(r.body), &got); err != nil {
			t.Fatalf("not the upstream's echo: %v: %q", err, r.body)
		}
		noToken(t, "upstream", token, up.everything())
		noToken(t, "client", token, headerValues(r.header))
		return got
	}

	t.Run("no token is 401 with www-authenticate", func(t *testing.T) {
		wantMissingToken(t, up, func() reply { return call(t, client, "GET", url, openaiHost, "", "", nil) })
	})

	t.Run("the upstream gets exactly the workload's key and never its token", func(t *testing.T) {
		got := allowed(t, call(t, client, "GET", url, openaiHost, token, "", nil))
		if v := got.Header.Values("Authorization"); len(v) != 1 || v[0] != "Bearer "+key {
			t.Fatalf("upstream authorization %q, want exactly [Bearer %s]", v, key)
		}
		if v, ok := got.Header["X-Api-Key"]; ok {
			t.Fatalf("upstream got x-api-key %q on an authorization route", v)
		}
		if got.Host != openaiHost || got.Path != "/v1/chat/completions" {
			t.Fatalf("upstream host %q path %q", got.Host, got.Path)
		}
		if g.accessLog != nil {
			// The gateway's access log names the identity (the per-request
			// audit trail), never the token.
			waitUntil(t, 10*time.Second, "an access log line with the identity", func() error {
				for _, line := range strings.Split(g.accessLog(), "\n") {
					if strings.Contains(line, `"namespace":"`+ns+`"`) && strings.Contains(line, `"serviceaccount":"`+sa+`"`) &&
						strings.Contains(line, `"status":200`) && strings.Contains(line, `"authority":"`+openaiHost+`"`) {
						return nil
					}
				}
				return errNotYet
			})
			noToken(t, "gateway's log", token, strings.Split(g.accessLog(), "\n"))
		}
	})

	t.Run("an unbound namespace is 403", func(t *testing.T) {
		_, _, other, err := env.Kube.Identity(ctx, "e2e-unbound")
		if err != nil {
			t.Fatal(err)
		}
		before := up.count()
		r := call(t, client, "GET", url, openaiHost, other, "", nil)
		if r.status != http.StatusForbidden || r.header.Get("X-Credinject-Reason") != "vault_denied" {
			t.Fatalf("status %d reason %q, want 403 vault_denied: %s", r.status, r.header.Get("X-Credinject-Reason"), r.body)
		}
		if up.count() != before {
			t.Fatal("a refused request reached the upstream")
		}
	})

	t.Run("an x-api-key route overwrites the client's value and drops authorization", func(t *testing.T) {
		got := allowed(t, call(t, client, "POST", gw+"/v1/messages", anthropicHost, token, `{"model":"m"}`,
			http.Header{"X-Api-Key": {"the-clients-own"}}))
		if v := got.Header.Values("X-Api-Key"); len(v) != 1 || v[0] != apiKey {
			t.Fatalf("upstream x-api-key %q, want exactly [%s]", v, apiKey)
		}
		if v, ok := got.Header["Authorization"]; ok {
			t.Fatalf("upstream got authorization %q on an x-api-key route", v)
		}
	})

	t.Run("bodies and methods pass through intact", func(t *testing.T) {
		for _, m := range []string{"PUT", "PATCH", "DELETE", "POST"} {
			body := fmt.Sprintf(`{"method":%q,"data":"%s"}`, m, strings.Repeat("x", 10_000))
			got := allowed(t, call(t, client, m, gw+"/v1/files/file-123?purpose=e2e", openaiHost, token, body, nil))
			if got.Method != m || got.Body != body || got.Path != "/v1/files/file-123?purpose=e2e" {
				t.Fatalf("%s: upstream got %s %s with a %d-byte body, want the %d bytes sent", m, got.Method, got.Path, len(got.Body), len(body))
			}
			if v := got.Header.Values("Authorization"); len(v) != 1 || v[0] != "Bearer "+key {
				t.Fatalf("%s: upstream authorization %q", m, v)
			}
		}
	})

	if g.h2c {
		t.Run("an h2c client is routed by :authority", func(t *testing.T) {
			h2 := h2cClient()
			defer h2.CloseIdleConnections()
			r := call(t, h2, "GET", gw+"/v1/models", anthropicHost, token, "", nil)
			if r.proto != "HTTP/2.0" {
				t.Fatalf("the client spoke %s, want HTTP/2.0", r.proto)
			}
			got := allowed(t, r)
			if v := got.Header.Values("X-Api-Key"); len(v) != 1 || v[0] != apiKey {
				t.Fatalf("upstream x-api-key %q, want [%s] (routed by :authority %s)", v, apiKey, anthropicHost)
			}
			r = call(t, h2, "GET", gw+"/v1/models", openaiHost, token, "", nil)
			if v := allowed(t, r).Header.Values("Authorization"); len(v) != 1 || v[0] != "Bearer "+key {
				t.Fatalf("upstream authorization %q", v)
			}
		})
	}

	t.Run("credinject rotate reaches the upstream within 1s", func(t *testing.T) {
		key2 := "sk-" + g.name + "-v2"
		cmd := exec.CommandContext(ctx, credinjectBinary(t), "rotate", "--vault-addr", env.Vault.Addr, "--nats-url", env.NATS.URL, ns+"/"+sa, "api_key="+key2)
		cmd.Env = append(os.Environ(), "VAULT_TOKEN="+env.Vault.RootToken)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("credinject rotate: %v\n%s", err, out)
		}
		waitUntil(t, time.Second, "the upstream to see the rotated key", func() error {
			r := call(t, client, "GET", url, openaiHost, token, "", nil)
			if r.status != http.StatusOK {
				return fmt.Errorf("status %d: %s", r.status, r.body)
			}
			if v := up.last().Header.Get("Authorization"); v != "Bearer "+key2 {
				return fmt.Errorf("upstream authorization %q", v)
			}
			return nil
		})
		noToken(t, "upstream", token, up.everything())
	})

	t.Run("Vault down and an identity never read is 503", func(t *testing.T) {
		_, _, cold := boundIdentity(ctx, t, env, "e2e-cold", "sk-cold")
		env.Vault.Stop()
		t.Cleanup(func() { restartVault(t, env) })
		before := up.count()
		r := call(t, client, "GET", url, openaiHost, cold, "", nil)
		want := ""
		if g.reasonOn503 {
			want = "vault_unavailable"
		}
		if r.status != http.StatusServiceUnavailable || r.header.Get("X-Credinject-Reason") != want {
			t.Fatalf("status %d reason %q, want 503 %q: %s", r.status, r.header.Get("X-Credinject-Reason"), want, r.body)
		}
		if up.count() != before {
			t.Fatal("a request without a credential reached the upstream")
		}
	})

	// Last: it stops credinject.
	t.Run("credinject stopped: the gateway fails closed", func(t *testing.T) {
		stopCredinject()
		before := up.count()
		r := call(t, client, "GET", url, openaiHost, token, "", nil)
		if r.status < 500 {
			t.Fatalf("status %d with credinject stopped, want a 5xx: %s", r.status, r.body)
		}
		if up.count() != before {
			t.Fatalf("with credinject stopped the upstream received %+v", up.last())
		}
	})
}

// restartVault brings the bed's Vault back after a fault test and waits
// until it answers, so the next test finds it as it was.
func restartVault(t *testing.T, env *testenv.Env) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := env.Vault.Start(ctx); err != nil {
		t.Fatalf("restart Vault: %v", err)
	}
	waitUntil(t, 30*time.Second, "Vault back", func() error {
		h, err := env.Vault.Client.Sys().HealthWithContext(ctx)
		if err != nil {
			return err
		}
		if h.Sealed || !h.Initialized {
			return errors.New("sealed or not initialized")
		}
		return nil
	})
}
