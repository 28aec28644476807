package e2e_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// startEnvoyTLS runs the real Envoy with deploy/envoy/envoy-grpc-<variant>.yaml
// ("tls" or "mtls") in front of credinject's TLS gRPC listener: it trusts
// caFile for credinject's certificate and, for mtls, presents clientCert and
// clientKey.
func startEnvoyTLS(t *testing.T, variant, authzAddr, upstreamAddr, caFile, clientCert, clientKey string) string {
	t.Helper()
	values := map[string]string{"CREDINJECT_CA_FILE": caFile, "CREDINJECT_NAME": "localhost"}
	if variant == "mtls" {
		values["CLIENT_CERT_FILE"], values["CLIENT_KEY_FILE"] = clientCert, clientKey
	}
	url, _ := startEnvoyConfig(t, "deploy/envoy/envoy-grpc-"+variant+".yaml", authzAddr, upstreamAddr, values)
	return url
}

// TestEnvoyGRPCGatewayTLS runs the real Envoy with the TLS and mutual-TLS
// variants of deploy/envoy's gRPC ext_authz configuration in front of
// credinject serving TLS (listen.tls) and mutual TLS (listen.tls.clientCAFile):
// the workload's key reaches the upstream, a missing token is 401, and an
// Envoy that does not trust credinject's CA, presents no client certificate or
// one of another CA gets no decision at all: 503, fail closed, nothing
// forwarded.
func TestEnvoyGRPCGatewayTLS(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := newListenerPKI(t)
	_, _, token := boundIdentity(ctx, t, env, "envoy-tls", "sk-envoy-tls")
	up := newEchoUpstream(t)
	upAddr := up.srv.Listener.Addr().String()
	client := &http.Client{Timeout: 10 * time.Second}

	tlsOnly, _ := startCredinjectWith(t, func(c *config.Config) {
		c.Listen.TLS = config.ListenTLS{CertFile: p.files.Cert, KeyFile: p.files.Key}
	})
	mutual, _ := startCredinjectWith(t, func(c *config.Config) {
		c.Listen.TLS = config.ListenTLS{CertFile: p.files.Cert, KeyFile: p.files.Key, ClientCAFile: p.files.CA}
	})
	for _, tc := range []struct {
		name, variant, authz, ca string
		client                   string // "own", "other"
		ok                       bool
	}{
		{name: "TLS", variant: "tls", authz: tlsOnly.GRPCAddr(), ca: p.files.CA, ok: true},
		{name: "mutual TLS", variant: "mtls", authz: mutual.GRPCAddr(), ca: p.files.CA, client: "own", ok: true},
		{name: "TLS, Envoy trusts another CA", variant: "tls", authz: tlsOnly.GRPCAddr(), ca: p.otherFiles.CA},
		{name: "mutual TLS, Envoy has no client certificate", variant: "tls", authz: mutual.GRPCAddr(), ca: p.files.CA},
		{name: "mutual TLS, Envoy's certificate is of another CA", variant: "mtls", authz: mutual.GRPCAddr(), ca: p.files.CA, client: "other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, key := p.clientFiles.Cert, p.clientFiles.Key
			if tc.client == "other" {
				cert, key = p.otherFiles.Cert, p.otherFiles.Key
			}
			gw := startEnvoyTLS(t, tc.variant, tc.authz, upAddr, tc.ca, cert, key)
			url := gw + "/v1/chat/completions"
			before := up.count()
			r := call(t, client, "GET", url, openaiHost, token, "", nil)
			if !tc.ok {
				if r.status != http.StatusServiceUnavailable || up.count() != before {
					t.Fatalf("status %d (want 503, fail closed), upstream reached: %v", r.status, up.count() != before)
				}
				return
			}
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if got := up.last().Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer sk-envoy-tls" {
				t.Fatalf("upstream authorization %q", got)
			}
			if r := call(t, client, "GET", url, openaiHost, "", "", nil); r.status != http.StatusUnauthorized || r.header.Get("X-Credinject-Reason") != "missing_token" {
				t.Fatalf("no token: %d %q", r.status, r.header.Get("X-Credinject-Reason"))
			}
		})
	}
}
