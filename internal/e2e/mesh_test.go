package e2e_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/testca"
)

// meshIdentity is a workload known to the mesh by its SPIFFE ID.
type meshIdentity struct {
	ns, sa, key string
}

func (m meshIdentity) spiffe() string { return "spiffe://cluster.local/ns/" + m.ns + "/sa/" + m.sa }

// meshBed is credinject taking identities from peers (identity.sources
// [peer, token], loopback 127.0.0.1 its trusted gateway) and the mesh CA
// that signs the workloads' certificates.
type meshBed struct {
	r      *apptest.Running
	ca     *testca.CA
	files  testca.Files
	a, b   meshIdentity // bound, each with its own key
	denied meshIdentity // a namespace Vault's role does not bind
	gone   meshIdentity // bound, its ServiceAccount deleted by the test
}

func newMeshBed(t *testing.T) *meshBed {
	t.Helper()
	env := testenv.Get(t)
	ctx := context.Background()
	m := &meshBed{}
	// The issue's own example identity, and fresh ones.
	m.a = meshIdentity{ns: "egress-test", sa: "default", key: "sk-mesh-egress-test"}
	if _, err := env.Kube.CreateServiceAccount(ctx, m.a.ns, m.a.sa); err != nil {
		t.Fatal(err)
	}
	if err := env.Vault.BindNamespace(ctx, m.a.ns); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+m.a.ns+"/"+m.a.sa, map[string]any{"api_key": m.a.key}); err != nil {
		t.Fatal(err)
	}
	ns, sa, _ := boundIdentity(ctx, t, env, "mesh-b", "sk-mesh-b")
	m.b = meshIdentity{ns: ns, sa: sa, key: "sk-mesh-b"}
	ns, sa, _ = boundIdentity(ctx, t, env, "mesh-gone", "sk-mesh-gone")
	m.gone = meshIdentity{ns: ns, sa: sa, key: "sk-mesh-gone"}
	ns, sa, _, err := env.Kube.Identity(ctx, "mesh-unbound")
	if err != nil {
		t.Fatal(err)
	}
	m.denied = meshIdentity{ns: ns, sa: sa}

	if m.ca, err = testca.New("mesh-ca"); err != nil {
		t.Fatal(err)
	}
	gw, err := m.ca.Server("egress-gateway")
	if err != nil {
		t.Fatal(err)
	}
	if m.files, err = testca.Write(t.TempDir(), "gateway", m.ca, gw); err != nil {
		t.Fatal(err)
	}
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Identity.Sources = []string{config.IdentitySourcePeer, config.IdentitySourceToken}
	cfg.Listen.TrustedProxies = []string{"127.0.0.1"}
	m.r = apptest.Start(t, env, cfg)
	return m
}

// client presents a mesh certificate naming uri, as a sidecar does.
func (m *meshBed) client(t *testing.T, uri string) *http.Client {
	t.Helper()
	l, err := m.ca.ClientNamed("workload", uri)
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.TLS()
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: m.ca.Pool(), Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 15 * time.Second, Transport: tr}
}

// TestMeshIdentityThroughEnvoy: behind the real Envoy requiring mesh
// client certificates (SANITIZE_SET, URI set), in both ext_authz modes, a
// workload that sends no Authorization header gets its own key upstream:
// credinject logs in to Vault as it with a token it requests. A namespace
// Vault does not bind gets 403, another trust domain 401 invalid_peer, a
// client's own x-forwarded-client-cert chooses nothing, and a deleted
// ServiceAccount gets 401 unknown_serviceaccount.
func TestMeshIdentityThroughEnvoy(t *testing.T) {
	m := newMeshBed(t)
	up := newEchoUpstream(t)
	upAddr := strings.TrimPrefix(up.srv.URL, "http://")
	for _, mode := range []string{"grpc", "http"} {
		t.Run(mode, func(t *testing.T) {
			addr := m.r.App.GRPCAddr()
			if mode == "http" {
				addr = m.r.App.HTTPAddr()
			}
			base, _ := startEnvoyConfig(t, "deploy/envoy/envoy-mesh-"+mode+".yaml", addr, upAddr, map[string]string{
				"GATEWAY_CERT_FILE": m.files.Cert, "GATEWAY_KEY_FILE": m.files.Key, "MESH_CA_FILE": m.files.CA,
			})
			url := strings.Replace(base, "http://", "https://", 1) + "/v1/models"
			send := func(uri string, extra http.Header) reply {
				return call(t, m.client(t, uri), "GET", url, openaiHost, "", "", extra)
			}
			allowed := func(what string, r reply, key string) {
				t.Helper()
				if r.status != http.StatusOK {
					t.Fatalf("%s: %d %s (%s), want 200", what, r.status, r.header.Get("X-Credinject-Reason"), r.body)
				}
				if got := up.last().Header.Get("Authorization"); got != "Bearer "+key {
					t.Fatalf("%s: upstream got authorization %q, want Bearer %s", what, got, key)
				}
			}
			denied := func(what string, r reply, status int, reason string) {
				t.Helper()
				if r.status != status || r.header.Get("X-Credinject-Reason") != reason {
					t.Fatalf("%s: %d %q (%s), want %d %s", what, r.status, r.header.Get("X-Credinject-Reason"), r.body, status, reason)
				}
			}
			allowed("first identity", send(m.a.spiffe(), nil), m.a.key)
			allowed("second identity", send(m.b.spiffe(), nil), m.b.key)
			allowed("first identity again", send(m.a.spiffe(), nil), m.a.key)
			// The workload's own header names the second identity; the
			// gateway replaces it with the certificate's.
			allowed("own x-forwarded-client-cert", send(m.a.spiffe(), http.Header{
				"X-Forwarded-Client-Cert": {"URI=" + m.b.spiffe()},
			}), m.a.key)
			denied("unbound namespace", send(m.denied.spiffe(), nil), http.StatusForbidden, "vault_denied")
			denied("another trust domain", send("spiffe://evil.local/ns/"+m.a.ns+"/sa/"+m.a.sa, nil), http.StatusUnauthorized, "invalid_peer")
		})
	}
	t.Run("deleted serviceaccount", func(t *testing.T) {
		base, _ := startEnvoyConfig(t, "deploy/envoy/envoy-mesh-grpc.yaml", m.r.App.GRPCAddr(), upAddr, map[string]string{
			"GATEWAY_CERT_FILE": m.files.Cert, "GATEWAY_KEY_FILE": m.files.Key, "MESH_CA_FILE": m.files.CA,
		})
		url := strings.Replace(base, "http://", "https://", 1) + "/v1/models"
		c := m.client(t, m.gone.spiffe())
		if r := call(t, c, "GET", url, openaiHost, "", "", nil); r.status != http.StatusOK {
			t.Fatalf("before deletion: %d %s", r.status, r.header.Get("X-Credinject-Reason"))
		}
		if err := testenv.Get(t).Kube.DeleteServiceAccount(context.Background(), m.gone.ns, m.gone.sa); err != nil {
			t.Fatal(err)
		}
		apptest.Eventually(t, 10*time.Second, "401 unknown_serviceaccount after the deletion", func() bool {
			r := call(t, c, "GET", url, openaiHost, "", "", nil)
			return r.status == http.StatusUnauthorized && r.header.Get("X-Credinject-Reason") == "unknown_serviceaccount"
		})
	})
	if got := m.r.Counter(t, "credinject_check_total", map[string]string{"result": "allow", "identity_source": "peer"}); got < 8 {
		t.Fatalf(`credinject_check_total{result="allow",identity_source="peer"} = %v, want at least 8`, got)
	}
}

// TestMeshIdentityNeedsTheGateway: a caller that is not the trusted
// gateway (a TCP peer outside listen.trustedProxies: 127.0.0.2) sending a
// principal over gRPC or an x-forwarded-client-cert to /check gets nothing:
// the peer is ignored as absent (401 missing_token).
func TestMeshIdentityNeedsTheGateway(t *testing.T) {
	m := newMeshBed(t)
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	conn, err := grpc.NewClient("passthrough:///"+m.r.App.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := apptest.Request("", openaiHost)
	req.Attributes.Source = &authv3.AttributeContext_Peer{Principal: m.a.spiffe()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := apptest.Outcome(resp); !strings.HasPrefix(got, "deny 401 missing_token") {
		t.Fatalf("gRPC principal from 127.0.0.2: %s, want deny 401 missing_token", got)
	}
	// The same principal from the trusted address is the identity.
	if got := m.r.CheckHeader(t, "", openaiHost); !strings.HasPrefix(got, "deny 401 missing_token") {
		t.Fatalf("no principal from the gateway: %s", got)
	}

	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext}}
	defer hc.CloseIdleConnections()
	r, err := http.NewRequest("GET", m.r.HTTPURL+"/check/v1/models", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Host = openaiHost
	r.Header.Set("X-Forwarded-Client-Cert", "URI="+m.a.spiffe())
	hr, err := hc.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	hr.Body.Close()
	if hr.StatusCode != http.StatusUnauthorized || hr.Header.Get("X-Credinject-Reason") != "missing_token" || hr.Header.Get("Authorization") != "" {
		t.Fatalf("/check x-forwarded-client-cert from 127.0.0.2: %d %v, want 401 missing_token", hr.StatusCode, hr.Header)
	}
	// From the gateway's address, the same header is the identity.
	r.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://cluster.local/ns/istio-system/sa/gw;URI="+m.a.spiffe())
	hr, err = http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	hr.Body.Close()
	if hr.StatusCode != http.StatusOK || hr.Header.Get("Authorization") != "Bearer "+m.a.key {
		t.Fatalf("/check from the gateway: %d %v", hr.StatusCode, hr.Header)
	}
}
