package e2e_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/testca"
)

// listenerPKI is a CA generated in the test, credinject's serving
// certificate (files in a temp folder), a client certificate of the same CA
// and one of another CA.
type listenerPKI struct {
	ca          *testca.CA
	files       testca.Files
	client      tls.Certificate
	otherClient tls.Certificate
	// The client certificates as files (for gateways), and the other CA.
	clientFiles, otherFiles testca.Files
}

func newListenerPKI(t *testing.T) listenerPKI {
	t.Helper()
	ca, err := testca.New("credinject-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server("credinject")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := testca.Write(dir, "credinject", ca, srv)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.Client("envoy")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testca.New("another-ca")
	if err != nil {
		t.Fatal(err)
	}
	ocl, err := other.Client("envoy")
	if err != nil {
		t.Fatal(err)
	}
	p := listenerPKI{ca: ca, files: files}
	if p.clientFiles, err = testca.Write(dir, "client", ca, cl); err != nil {
		t.Fatal(err)
	}
	if p.otherFiles, err = testca.Write(dir, "other-client", other, ocl); err != nil {
		t.Fatal(err)
	}
	if p.client, err = cl.TLS(); err != nil {
		t.Fatal(err)
	}
	if p.otherClient, err = ocl.TLS(); err != nil {
		t.Fatal(err)
	}
	return p
}

// clientConfig trusts the test CA and presents certs.
func (p listenerPKI) clientConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", Certificates: certs, MinVersion: tls.VersionTLS12}
}

func tlsConfig(env *testenv.Env, p listenerPKI, mutual bool) config.Config {
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Listen.Health = "127.0.0.1:0"
	cfg.Listen.TLS = config.ListenTLS{CertFile: p.files.Cert, KeyFile: p.files.Key}
	if mutual {
		cfg.Listen.TLS.ClientCAFile = p.files.CA
	}
	return cfg
}

// grpcCheck makes a new gRPC connection with creds and calls Check once.
func grpcCheck(t *testing.T, addr string, creds credentials.TransportCredentials, tok string) (*authv3.CheckResponse, *peer.Peer, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p peer.Peer
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, apptest.Request("Bearer "+tok, "api.openai.com"), grpc.Peer(&p))
	return resp, &p, err
}

// httpsCheck calls /check with a fresh client.
func httpsCheck(url string, cfg *tls.Config, tok string) (*http.Response, error) {
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, url+"/check", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Host = "api.openai.com"
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// TestListenersTLS: with listen.tls, ext_authz gRPC and /check answer over
// TLS only; gRPC health answers over TLS; the plaintext health port serves
// probes and metrics but never a decision.
func TestListenersTLS(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "tls", "sk-tls")
	p := newListenerPKI(t)
	r := apptest.StartTLS(t, env, tlsConfig(env, p, false), p.clientConfig())
	if !r.App.TLS() {
		t.Fatal("App.TLS() false")
	}
	if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-tls" {
		t.Fatalf("gRPC over TLS: %q", got)
	}
	if got := r.HTTPCheck(t, "Bearer "+tok, "api.openai.com", "Authorization"); got != "allow authorization=Bearer sk-tls" {
		t.Fatalf("/check over TLS: %q", got)
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hresp, err := healthpb.NewHealthClient(r.Conn).Check(hctx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
	if err != nil || hresp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health over TLS: %v %v", hresp, err)
	}

	// Plaintext clients get nothing.
	if _, _, err := grpcCheck(t, r.App.GRPCAddr(), insecure.NewCredentials(), tok); err == nil {
		t.Fatal("a plaintext gRPC client got an answer")
	}
	if resp, err := http.Get("http://" + r.App.HTTPAddr() + "/check"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plaintext /check: %d", resp.StatusCode)
		}
	}
	// A client that does not trust the CA refuses the server.
	if _, err := httpsCheck(r.HTTPURL, &tls.Config{ServerName: "localhost"}, tok); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client without the CA: %v", err)
	}

	// The health port: plaintext probes and metrics, no decisions.
	health := "http://" + r.App.HealthAddr()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/check": 404} {
		resp, err := http.Get(health + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("health port %s: %d, want %d", path, resp.StatusCode, want)
		}
		if path == "/metrics" && !strings.Contains(string(body), "credinject_tls_certificate_expiry_timestamp_seconds") {
			t.Fatal("/metrics lacks the TLS certificate expiry")
		}
	}
}

// TestListenersMutualTLS: with listen.tls.clientCAFile, a client without a
// certificate and one whose certificate another CA signed are refused on
// both listeners; the CA's client gets its answers.
func TestListenersMutualTLS(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "mtls", "sk-mtls")
	p := newListenerPKI(t)
	r := apptest.StartTLS(t, env, tlsConfig(env, p, true), p.clientConfig(p.client))
	if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-mtls" {
		t.Fatalf("gRPC with the CA's client certificate: %q", got)
	}
	if got := r.HTTPCheck(t, "Bearer "+tok, "api.openai.com", "Authorization"); got != "allow authorization=Bearer sk-mtls" {
		t.Fatalf("/check with the CA's client certificate: %q", got)
	}
	for name, cfg := range map[string]*tls.Config{
		"no client certificate":          p.clientConfig(),
		"another CA's client cert":       p.clientConfig(p.otherClient),
		"no client certificate, TLS 1.2": func() *tls.Config { c := p.clientConfig(); c.MaxVersion = tls.VersionTLS12; return c }(),
	} {
		t.Run(name, func(t *testing.T) {
			if resp, _, err := grpcCheck(t, r.App.GRPCAddr(), credentials.NewTLS(cfg), tok); err == nil {
				t.Fatalf("gRPC answered: %s", apptest.Outcome(resp))
			}
			if resp, err := httpsCheck(r.HTTPURL, cfg, tok); err == nil {
				t.Fatalf("/check answered %d", resp.StatusCode)
			}
		})
	}
	// The kubelet's probes have no certificate: the health port serves them.
	resp, err := http.Get("http://" + r.App.HealthAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz on the health port: %d", resp.StatusCode)
	}
}

// TestListenerCertificateRotation replaces the serving certificate on disk,
// as cert-manager does: new connections (gRPC and HTTPS) get the new one
// without a restart, while connections opened before keep working with the
// certificate they negotiated.
func TestListenerCertificateRotation(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "rotcert", "sk-rotcert")
	p := newListenerPKI(t)
	client := p.clientConfig(p.client)
	r := apptest.StartTLS(t, env, tlsConfig(env, p, true), client)

	// Open one gRPC and one keep-alive HTTPS connection.
	var before peer.Peer
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := r.Client.Check(cctx, apptest.Request("Bearer "+tok, "api.openai.com"), grpc.Peer(&before)); err != nil {
		t.Fatal(err)
	}
	if cn := peerCN(t, &before); cn != "credinject" {
		t.Fatalf("first certificate %q", cn)
	}
	httpCN := func() string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, r.HTTPURL+"/healthz", nil)
		resp, err := r.HTTPClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if cn := httpCN(); cn != "credinject" {
		t.Fatalf("first HTTPS certificate %q", cn)
	}

	renewed, err := p.ca.Server("credinject-renewed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testca.Write(filepath.Dir(p.files.Cert), "credinject", p.ca, renewed); err != nil {
		t.Fatal(err)
	}

	// New connections see the new certificate within the check interval.
	waitUntil(t, 15*time.Second, "the renewed certificate on a new gRPC connection", func() error {
		_, pr, err := grpcCheck(t, r.App.GRPCAddr(), credentials.NewTLS(client), tok)
		if err != nil {
			return err
		}
		if cn := peerCN(t, pr); cn != "credinject-renewed" {
			return fmt.Errorf("served %q", cn)
		}
		return nil
	})
	resp, err := httpsCheck(r.HTTPURL, client, tok)
	if err != nil {
		t.Fatal(err)
	}
	if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != "credinject-renewed" || resp.StatusCode != http.StatusOK {
		t.Fatalf("a new HTTPS connection: %d, certificate %q", resp.StatusCode, cn)
	}

	// The connections opened before still answer, on the old certificate.
	var after peer.Peer
	out, err := r.Client.Check(cctx, apptest.Request("Bearer "+tok, "api.openai.com"), grpc.Peer(&after))
	if err != nil {
		t.Fatalf("the gRPC connection opened before the rotation: %v", err)
	}
	if got := apptest.Outcome(out); got != "allow authorization=Bearer sk-rotcert" {
		t.Fatalf("old gRPC connection: %q", got)
	}
	if cn := peerCN(t, &after); cn != "credinject" {
		t.Fatalf("the old gRPC connection now shows %q: it was replaced, not kept", cn)
	}
	if cn := httpCN(); cn != "credinject" {
		t.Fatalf("the old HTTPS connection now shows %q: it was replaced, not kept", cn)
	}
	if got := r.Counter(t, "credinject_tls_reloads_total", map[string]string{"result": "ok"}); got != 1 {
		t.Fatalf("credinject_tls_reloads_total{result=ok} = %v", got)
	}
}

func peerCN(t *testing.T, p *peer.Peer) string {
	t.Helper()
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		t.Fatalf("no TLS peer: %#v", p.AuthInfo)
	}
	return info.State.PeerCertificates[0].Subject.CommonName
}

// TestServeBinaryMutualTLS runs the real `credinject serve --config FILE`
// with listen.tls (mutual TLS) and listen.health written in YAML, as a user
// would: probes answer on the plaintext health port, ext_authz answers a
// client with the CA's certificate, and the logs carry neither the token nor
// the credential.
func TestServeBinaryMutualTLS(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "servetls", "sk-serve-tls")
	p := newListenerPKI(t)
	kubeconfig, err := env.Kube.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = testenv.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
listen:
  grpc: "127.0.0.1:%d"
  http: "127.0.0.1:%d"
  health: "127.0.0.1:%d"
  tls: {certFile: %q, keyFile: %q, clientCAFile: %q}
kubernetes: {kubeconfig: %q, tokenValidation: tokenreview}
vault: {address: %q}
`, ports[0], ports[1], ports[2], p.files.Cert, p.files.Key, p.files.CA, kubeconfig, env.Vault.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, "--config", cfgPath, "--log-level", "debug")
	waitUntil(t, 30*time.Second, "/readyz on the health port", func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[2]))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	resp, _, err := grpcCheck(t, addr, credentials.NewTLS(p.clientConfig(p.client)), tok)
	if err != nil {
		t.Fatal(err)
	}
	if got := apptest.Outcome(resp); got != "allow authorization=Bearer sk-serve-tls" {
		t.Fatalf("Check: %q", got)
	}
	if _, _, err := grpcCheck(t, addr, credentials.NewTLS(p.clientConfig()), tok); err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
	hresp, err := httpsCheck(fmt.Sprintf("https://127.0.0.1:%d", ports[1]), p.clientConfig(p.client), tok)
	if err != nil || hresp.StatusCode != http.StatusOK {
		t.Fatalf("/check over mutual TLS: %v %v", hresp, err)
	}
	srv.stop(t)
	out := srv.logs.String()
	if strings.Contains(out, tok) || strings.Contains(out, "sk-serve-tls") {
		t.Fatal("the logs contain the SA token or the credential")
	}
	if !strings.Contains(out, `"mutualTLS":true`) {
		t.Fatalf("the start-up line does not say mutual TLS:\n%s", out)
	}
}
