package e2e_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"

	"google.golang.org/grpc/credentials"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// The gateway's and a workload's names, as Istio's SPIFFE identities.
const (
	gatewayName  = "spiffe://cluster.local/ns/gateway-system/sa/kuadrant-egressgateway-istio"
	workloadName = "spiffe://cluster.local/ns/default/sa/app"
)

// TestOnlyTheNamedGatewayGetsCredentials: with listen.tls.clientNames, a
// client certificate from the same CA as the gateway's, naming a workload,
// gets nothing with a valid token: gRPC fails the handshake, /check answers
// 403 client_not_allowed; both are counted. The gateway's certificate gets
// its answers on both listeners.
func TestOnlyTheNamedGatewayGetsCredentials(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "gwonly", "sk-gwonly")
	p := newListenerPKI(t)
	cert := func(cn, name string) tls.Certificate {
		l, err := p.ca.ClientNamed(cn, name)
		if err != nil {
			t.Fatal(err)
		}
		c, err := l.TLS()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	gateway, workload := cert("gateway", gatewayName), cert("workload", workloadName)
	cfg := tlsConfig(env, p, true)
	cfg.Listen.TLS.ClientNames = []string{gatewayName}
	r := apptest.StartTLS(t, env, cfg, p.clientConfig(gateway))

	if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-gwonly" {
		t.Fatalf("gRPC, the gateway's certificate: %q", got)
	}
	if got := r.HTTPCheck(t, "Bearer "+tok, "api.openai.com", "Authorization"); got != "allow authorization=Bearer sk-gwonly" {
		t.Fatalf("/check, the gateway's certificate: %q", got)
	}

	for name, c := range map[string]tls.Certificate{"a workload's name": workload, "no name (the CA's certificate)": p.client} {
		t.Run(name, func(t *testing.T) {
			if resp, _, err := grpcCheck(t, r.App.GRPCAddr(), credentials.NewTLS(p.clientConfig(c)), tok); err == nil {
				t.Fatalf("gRPC answered a certificate naming no gateway: %s", apptest.Outcome(resp))
			}
			resp, err := httpsCheck(r.HTTPURL, p.clientConfig(c), tok)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Credinject-Reason") != "client_not_allowed" || resp.Header.Get("Authorization") != "" {
				t.Fatalf("/check: %d %v, want 403 client_not_allowed and no credential", resp.StatusCode, resp.Header)
			}
		})
	}
	if got := r.Counter(t, "credinject_tls_client_refused_total", map[string]string{"stage": "handshake"}); got < 2 {
		t.Fatalf(`credinject_tls_client_refused_total{stage="handshake"} = %v, want at least 2`, got)
	}
	if got := r.Counter(t, "credinject_tls_client_refused_total", map[string]string{"stage": "request"}); got != 2 {
		t.Fatalf(`credinject_tls_client_refused_total{stage="request"} = %v, want 2`, got)
	}
	if got := r.Counter(t, "credinject_check_total", map[string]string{"reason": "client_not_allowed"}); got != 2 {
		t.Fatalf(`credinject_check_total{reason="client_not_allowed"} = %v, want 2`, got)
	}
}

// TestForwardedHostNeedsATrustedProxy: plain HTTP with the defaults, a
// caller (here on loopback) that is not a trusted proxy cannot pick the
// route with X-Forwarded-Host, X-Original-Host or Forwarded: its own Host
// decides (here a host with no route: 403 no_route). Trusting loopback
// (listen.trustedProxies) lets the same request through.
func TestForwardedHostNeedsATrustedProxy(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "fwdhost", "sk-fwdhost")
	noDefault := false
	for name, tc := range map[string]struct {
		proxies []string
		want    string
	}{
		"nobody trusted (default)": {nil, "deny 403 no_route"},
		"loopback trusted":         {[]string{"127.0.0.1/32", "::1"}, "allow authorization=Bearer sk-fwdhost"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := apptest.Config(env)
			cfg.Events.NatsURL = ""
			cfg.DefaultRoute = &noDefault
			cfg.Routes = []config.Route{{Name: "openai", Hosts: []string{"api.openai.com"}}}
			cfg.Listen.TrustedProxies = tc.proxies
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			r := apptest.Start(t, env, cfg)
			if got := r.HTTPCheck(t, "Bearer "+tok, "api.openai.com", "Authorization"); got != "allow authorization=Bearer sk-fwdhost" {
				t.Fatalf("the request's own Host: %q", got)
			}
			for _, hdr := range []string{"X-Forwarded-Host", "X-Original-Host", "Forwarded"} {
				req, _ := http.NewRequest(http.MethodGet, r.HTTPURL+"/check", nil)
				req.Host = "attacker.example"
				req.Header.Set("Authorization", "Bearer "+tok)
				v := "api.openai.com"
				if hdr == "Forwarded" {
					v = "for=127.0.0.1;host=api.openai.com"
				}
				req.Header.Set(hdr, v)
				resp, err := r.HTTPClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				got := "deny " + resp.Status[:3] + " " + resp.Header.Get("X-Credinject-Reason")
				if resp.StatusCode == http.StatusOK {
					got = "allow authorization=" + resp.Header.Get("Authorization")
				}
				if got != tc.want {
					t.Fatalf("Host attacker.example, %s api.openai.com: %q, want %q", hdr, got, tc.want)
				}
			}
		})
	}
}
