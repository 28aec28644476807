package checker_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
)

const trustDomain = "cluster.local"

func TestParsePeer(t *testing.T) {
	for name, c := range map[string]struct {
		in   string
		want string // identity key; "" an error
	}{
		"istio form":           {"spiffe://cluster.local/ns/egress-test/sa/default", "egress-test/default"},
		"dotted sa":            {"spiffe://cluster.local/ns/a/sa/b.c-d", "a/b.c-d"},
		"other trust domain":   {"spiffe://evil.local/ns/egress-test/sa/default", ""},
		"trust domain suffix":  {"spiffe://cluster.local.evil/ns/a/sa/b", ""},
		"not spiffe":           {"https://cluster.local/ns/a/sa/b", ""},
		"upper-case namespace": {"spiffe://cluster.local/ns/A/sa/b", ""},
		"extra segment":        {"spiffe://cluster.local/ns/a/sa/b/c", ""},
		"no sa":                {"spiffe://cluster.local/ns/a", ""},
		"empty names":          {"spiffe://cluster.local/ns//sa/", ""},
		"sa first":             {"spiffe://cluster.local/sa/b/ns/a", ""},
		"query":                {"spiffe://cluster.local/ns/a/sa/b?x=1", ""},
		"too long":             {"spiffe://cluster.local/ns/a/sa/" + strings.Repeat("b", 700), ""},
		"dns subject":          {"CN=workload", ""},
		"trailing slash":       {"spiffe://cluster.local/ns/a/sa/b/", ""},
		"namespace of 64":      {"spiffe://cluster.local/ns/" + strings.Repeat("a", 64) + "/sa/b", ""},
	} {
		t.Run(name, func(t *testing.T) {
			id, err := checker.ParsePeer(trustDomain, c.in)
			switch {
			case c.want == "" && err == nil:
				t.Fatalf("ParsePeer(%q) = %v, want an error", c.in, id)
			case c.want == "" && !errors.Is(err, checker.ErrInvalidPeer):
				t.Fatalf("error %v does not wrap ErrInvalidPeer", err)
			case c.want != "" && (err != nil || id.Key() != c.want):
				t.Fatalf("ParsePeer(%q) = %v, %v; want %s", c.in, id, err, c.want)
			}
		})
	}
}

func TestXFCCURI(t *testing.T) {
	const u = "spiffe://cluster.local/ns/a/sa/b"
	for name, c := range map[string]struct {
		in    []string
		uri   string
		found bool
		bad   bool
	}{
		"absent":              {nil, "", false, false},
		"envoy set":           {[]string{`By=spiffe://cluster.local/ns/istio-system/sa/gw;Hash=abc;URI=` + u}, u, true, false},
		"quoted subject":      {[]string{`Hash=abc;Subject="CN=x,O=a;b";URI=` + u}, u, true, false},
		"quoted uri":          {[]string{`URI="` + u + `"`}, u, true, false},
		"escaped quote":       {[]string{`Subject="a\"b,c";URI=` + u}, u, true, false},
		"last element counts": {[]string{`URI=spiffe://cluster.local/ns/x/sa/y,By=gw;URI=` + u}, u, true, false},
		"last line counts":    {[]string{`URI=spiffe://cluster.local/ns/x/sa/y`, `URI=` + u}, u, true, false},
		"comma inside quotes": {[]string{`URI=` + u + `;Subject="CN=a,URI=spiffe://cluster.local/ns/x/sa/y"`}, u, true, false},
		"no uri":              {[]string{`Hash=abc;DNS=a.example`}, "", false, false},
		"empty uri":           {[]string{`Hash=abc;URI=`}, "", false, false},
		"case of key":         {[]string{`uri=` + u}, u, true, false},
		"spaces":              {[]string{` Hash=abc ; URI=` + u + ` `}, u, true, false},
		"unterminated quote":  {[]string{`URI="` + u}, "", false, true},
		"two uris":            {[]string{`URI=` + u + `;URI=spiffe://cluster.local/ns/x/sa/y`}, "", false, true},
		"pair without =":      {[]string{`URI`}, "", false, true},
		"trailing comma":      {[]string{`URI=` + u + `,`}, "", false, true},
		"stray quote":         {[]string{`URI=sp"iffe`}, "", false, true},
		"text after quote":    {[]string{`URI="a"b`}, "", false, true},
		"backslash at end":    {[]string{`URI="a\`}, "", false, true},
	} {
		t.Run(name, func(t *testing.T) {
			uri, found, err := checker.XFCCURI(c.in)
			if (err != nil) != c.bad || uri != c.uri || found != c.found {
				t.Fatalf("XFCCURI(%q) = %q, %v, %v; want %q, %v, error %v", c.in, uri, found, err, c.uri, c.found, c.bad)
			}
			if err != nil && !errors.Is(err, checker.ErrXFCC) {
				t.Fatalf("error %v does not wrap ErrXFCC", err)
			}
		})
	}
}

// FuzzXFCCURI: any header value gives a URI, none, or an ErrXFCC; never a
// panic, and a URI found is a substring-sized value without a quote.
func FuzzXFCCURI(f *testing.F) {
	for _, s := range []string{
		`By=spiffe://cluster.local/ns/istio-system/sa/gw;Hash=abc;URI=spiffe://cluster.local/ns/a/sa/b`,
		`Hash=abc;Subject="CN=x,O=a;b";URI=spiffe://td/ns/a/sa/b`, `Subject="a\"b,c";URI="x"`, `URI="a\`, `,`, `a=b,c=d;e="f,g"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		uri, found, err := checker.XFCCURI([]string{v})
		if err != nil {
			if !errors.Is(err, checker.ErrXFCC) || found || uri != "" {
				t.Fatalf("XFCCURI(%q) = %q, %v, %v", v, uri, found, err)
			}
			return
		}
		if found == (uri == "") || len(uri) > len(v) {
			t.Fatalf("XFCCURI(%q) = %q, %v", v, uri, found)
		}
	})
}

// peerLogins is PeerLogins' stand-in: it counts the identities handed over
// and answers err.
type peerLogins struct {
	mu  sync.Mutex
	ids []string
	err error
}

func (p *peerLogins) Prefetch(_ context.Context, id authz.Identity) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ids = append(p.ids, id.Key())
	return p.err
}

func (p *peerLogins) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.ids...)
}

var gatewayAddr = netip.MustParseAddrPort("10.0.0.7:40000")

// newPeerRig is a rig whose checker takes identities from sources, with the
// peer's trust domain cluster.local and 10.0.0.0/24 its trusted gateway.
func newPeerRig(tb testing.TB, sources ...authz.IdentitySource) (*rig, *peerLogins) {
	tb.Helper()
	pl := &peerLogins{}
	r := newRigMod(tb, nil, true, nil, checker.Tracing{}, func(c *checker.Config) {
		c.Sources, c.TrustDomain, c.PeerLogins = sources, trustDomain, pl
	}, &checker.GRPCOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}})
	return r, pl
}

// from is a gRPC context whose TCP peer is addr.
func from(addr netip.AddrPort) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(addr)})
}

// peerRequest is request with source.principal set.
func peerRequest(authorization, principal, host string) *authv3.CheckRequest {
	q := request(authorization, host)
	q.Attributes.Source = &authv3.AttributeContext_Peer{Principal: principal}
	return q
}

func checkFrom(tb testing.TB, r *rig, ctx context.Context, q *authv3.CheckRequest) string {
	tb.Helper()
	resp, err := r.g.Check(ctx, q)
	if err != nil {
		tb.Fatalf("Check returned an error: %v", err)
	}
	// Every 401 carries www-authenticate: Bearer (check_test covers it).
	return strings.TrimSuffix(outcome(resp), " www=Bearer")
}

// TestPeerIdentity: with the peer source on, a trusted gateway's
// source.principal is the identity (no Authorization needed, and none
// inspected when the peer comes first); an untrusted caller's principal is
// ignored as if absent; the order of identity.sources decides which of
// the two a request carrying both uses.
func TestPeerIdentity(t *testing.T) {
	const principal = "spiffe://cluster.local/ns/egress-test/sa/default"
	peerFirst, _ := newPeerRig(t, authz.SourcePeer, authz.SourceToken)
	tokenFirst, _ := newPeerRig(t, authz.SourceToken, authz.SourcePeer)
	for _, r := range []*rig{peerFirst, tokenFirst} {
		r.put(t, "", "egress-test", "default", "authorization", "Bearer peer-key")
		r.put(t, "", "ns", "sa", "authorization", "Bearer token-key")
	}
	tok := "Bearer " + peerFirst.token(t, "ns", "sa")
	tokB := "Bearer " + tokenFirst.token(t, "ns", "sa")
	untrusted := netip.MustParseAddrPort("10.0.1.7:40000")
	for name, c := range map[string]struct {
		r    *rig
		ctx  context.Context
		q    *authv3.CheckRequest
		want string
	}{
		"gateway, peer only":                {peerFirst, from(gatewayAddr), peerRequest("", principal, "h"), "allow authorization=Bearer peer-key"},
		"gateway, garbage token not read":   {peerFirst, from(gatewayAddr), peerRequest("Basic x", principal, "h"), "allow authorization=Bearer peer-key"},
		"gateway, token first wins":         {tokenFirst, from(gatewayAddr), peerRequest(tokB, principal, "h"), "allow authorization=Bearer token-key"},
		"gateway, token first, no token":    {tokenFirst, from(gatewayAddr), peerRequest("", principal, "h"), "allow authorization=Bearer peer-key"},
		"untrusted principal ignored":       {peerFirst, from(untrusted), peerRequest("", principal, "h"), "deny 401 missing_token"},
		"untrusted falls back to token":     {peerFirst, from(untrusted), peerRequest(tok, principal, "h"), "allow authorization=Bearer token-key"},
		"no peer address ignored":           {peerFirst, context.Background(), peerRequest("", principal, "h"), "deny 401 missing_token"},
		"wrong trust domain":                {peerFirst, from(gatewayAddr), peerRequest("", "spiffe://other.local/ns/egress-test/sa/default", "h"), "deny 401 invalid_peer"},
		"not a service account":             {peerFirst, from(gatewayAddr), peerRequest("", "spiffe://cluster.local/workload/x", "h"), "deny 401 invalid_peer"},
		"token with the principal in it":    {tokenFirst, from(untrusted), peerRequest("Bearer "+principal, "", "h"), "deny 401 malformed_token"},
		"peer off: principal means nothing": {newRig(t, nil, true), from(gatewayAddr), peerRequest("", principal, "h"), "deny 401 missing_token"},
	} {
		t.Run(name, func(t *testing.T) {
			for range 2 { // a miss, then the cached result
				if got := checkFrom(t, c.r, c.ctx, c.q); got != c.want {
					t.Fatalf("got %s, want %s", got, c.want)
				}
			}
		})
	}
}

// TestPeerDeletedServiceAccount: a peer whose ServiceAccount is deleted is
// refused (unknown_serviceaccount) from the next check on, as a token is.
func TestPeerDeletedServiceAccount(t *testing.T) {
	r, _ := newPeerRig(t, authz.SourcePeer)
	r.put(t, "", "a", "b", "authorization", "Bearer k")
	q := peerRequest("", "spiffe://cluster.local/ns/a/sa/b", "h")
	if got := checkFrom(t, r, from(gatewayAddr), q); got != "allow authorization=Bearer k" {
		t.Fatal(got)
	}
	r.sas.remove("a/b")
	if got := checkFrom(t, r, from(gatewayAddr), q); got != "deny 401 unknown_serviceaccount" {
		t.Fatalf("after deletion: %s", got)
	}
}

// TestPeerMissLogsIn: a peer's credential miss hands the identity to
// PeerLogins (it brings no token) before asking the source, which gets no
// token; a refusal there is the answer.
func TestPeerMissLogsIn(t *testing.T) {
	r, pl := newPeerRig(t, authz.SourcePeer)
	var gotToken []string
	r.source = func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
		gotToken = append(gotToken, token)
		now := r.clock.Now()
		return &cache.Entry{Route: route, Identity: id, Header: "authorization", Value: "Bearer minted", ReadAt: now, FreshUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}, nil
	}
	q := peerRequest("", "spiffe://cluster.local/ns/a/sa/b", "h")
	if got := checkFrom(t, r, from(gatewayAddr), q); got != "allow authorization=Bearer minted" {
		t.Fatal(got)
	}
	if ids := pl.asked(); len(ids) != 1 || ids[0] != "a/b" || len(gotToken) != 1 || gotToken[0] != "" {
		t.Fatalf("PeerLogins asked %v; source given tokens %q", ids, gotToken)
	}
	pl.err = authz.Deny(authz.ReasonVaultDenied, errors.New("role does not bind namespace c"))
	if got := checkFrom(t, r, from(gatewayAddr), peerRequest("", "spiffe://cluster.local/ns/c/sa/d", "h")); got != "deny 403 vault_denied" {
		t.Fatal(got)
	}
	if len(gotToken) != 1 {
		t.Fatalf("the source was asked after PeerLogins refused: %d calls", len(gotToken))
	}
}

// TestPeerNeedsItsParts: the peer source without a trust domain or
// PeerLogins is a configuration error.
func TestPeerNeedsItsParts(t *testing.T) {
	_, err := checker.New(checker.Config{Validator: checker.ValidatorFunc(nil), Credentials: &cache.Credentials{}, Source: sourceFunc(nil),
		Router: &checker.Router{}, TokenCache: checker.TokenCacheConfig{TTL: time.Second, NegativeTTL: time.Second},
		Sources: []authz.IdentitySource{authz.SourcePeer}})
	if err == nil {
		t.Fatal("New accepted the peer source without TrustDomain and PeerLogins")
	}
}

// TestPeerHTTP: /check takes the peer from the URI= of the last
// x-forwarded-client-cert element of a trusted proxy's request, and ignores
// the header from anyone else; an unreadable header from the proxy is
// invalid_peer.
func TestPeerHTTP(t *testing.T) {
	r, _ := newPeerRig(t, authz.SourcePeer, authz.SourceToken)
	r.put(t, "", "a", "b", "authorization", "Bearer ab")
	h := checker.NewHTTPWith(r.c, checker.HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}})
	for name, c := range map[string]struct {
		remote, xfcc string
		status       int
		want         string
	}{
		"gateway":             {"10.0.0.7:4000", `By=spiffe://cluster.local/ns/istio-system/sa/gw;Hash=ab;Subject="";URI=spiffe://cluster.local/ns/a/sa/b`, 200, "Bearer ab"},
		"client's own first":  {"10.0.0.7:4000", `URI=spiffe://cluster.local/ns/x/sa/y,Hash=ab;URI=spiffe://cluster.local/ns/a/sa/b`, 200, "Bearer ab"},
		"untrusted ignored":   {"10.9.0.7:4000", `URI=spiffe://cluster.local/ns/a/sa/b`, 401, "missing_token"},
		"unreadable":          {"10.0.0.7:4000", `URI="spiffe://cluster.local/ns/a/sa/b`, 401, "invalid_peer"},
		"wrong trust domain":  {"10.0.0.7:4000", `URI=spiffe://evil/ns/a/sa/b`, 401, "invalid_peer"},
		"no uri: token asked": {"10.0.0.7:4000", `Hash=ab`, 401, "missing_token"},
	} {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/check", nil)
			req.RemoteAddr = c.remote
			req.Header.Set("X-Forwarded-Client-Cert", c.xfcc)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			got := w.Header().Get("Authorization")
			if w.Code != http.StatusOK {
				got = w.Header().Get(checker.HeaderReason)
			}
			if w.Code != c.status || got != c.want {
				t.Fatalf("%d %s, want %d %s", w.Code, got, c.status, c.want)
			}
		})
	}
}

// TestPeerDecisionsNameTheirSource: the audit trail's Use, the metrics and
// the Check span say which source gave the identity.
func TestPeerDecisionsNameTheirSource(t *testing.T) {
	var mu sync.Mutex
	var uses []checker.Use
	rec := checker.RecorderFunc(func(u checker.Use) { mu.Lock(); uses = append(uses, u); mu.Unlock() })
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	r := newRigMod(t, nil, true, rec, checker.Tracing{TracerProvider: tp, SamplingRatio: 1}, func(c *checker.Config) {
		c.Sources, c.TrustDomain, c.PeerLogins = []authz.IdentitySource{authz.SourcePeer, authz.SourceToken}, trustDomain, &peerLogins{}
	}, &checker.GRPCOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}})
	r.put(t, "", "a", "b", "authorization", "Bearer k")
	checkFrom(t, r, from(gatewayAddr), peerRequest("", "spiffe://cluster.local/ns/a/sa/b", "h"))
	checkFrom(t, r, from(gatewayAddr), peerRequest("Bearer "+r.token(t, "a", "b"), "", "h"))
	mu.Lock()
	defer mu.Unlock()
	if len(uses) != 2 || uses[0].IdentitySource != authz.SourcePeer || uses[0].Identity.Key() != "a/b" || uses[1].IdentitySource != authz.SourceToken {
		t.Fatalf("uses %+v", uses)
	}
	spans := sr.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans", len(spans))
	}
	for i, want := range []string{"peer", "token"} {
		found := false
		for _, a := range spans[i].Attributes() {
			if a.Key == checker.AttrIdentitySource && a.Value.AsString() == want {
				found = true
			}
		}
		if !found {
			t.Fatalf("span %d attributes %v, want credinject.identity_source=%s", i, spans[i].Attributes(), want)
		}
	}
	if got := counterOf(t, r, "allow", "", "peer"); got != 1 {
		t.Fatalf(`credinject_check_total{result="allow",identity_source="peer"} = %v`, got)
	}
}

// counterOf finds credinject_check_total{result,reason,identity_source}.
func counterOf(t *testing.T, r *rig, result, reason, source string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "credinject_check_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["result"] == result && l["reason"] == reason && l["identity_source"] == source {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no credinject_check_total{result=%q,reason=%q,identity_source=%q}", result, reason, source)
	return 0
}

// TestPeerFromNamedClient: with named client certificates required
// (listen.tls.clientNames: the handshake refused everyone else), a TLS
// caller's principal counts wherever it connects from; a plaintext one's
// does not.
func TestPeerFromNamedClient(t *testing.T) {
	pl := &peerLogins{}
	r := newRigMod(t, nil, true, nil, checker.Tracing{}, func(c *checker.Config) {
		c.Sources, c.TrustDomain, c.PeerLogins = []authz.IdentitySource{authz.SourcePeer}, trustDomain, pl
	}, &checker.GRPCOptions{NamedClients: true})
	r.put(t, "", "a", "b", "authorization", "Bearer k")
	q := peerRequest("", "spiffe://cluster.local/ns/a/sa/b", "h")
	addr := net.TCPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.9:5000"))
	tlsPeer := peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{}})
	plainPeer := peer.NewContext(context.Background(), &peer.Peer{Addr: addr})
	if got := checkFrom(t, r, tlsPeer, q); got != "allow authorization=Bearer k" {
		t.Fatalf("named TLS client: %s", got)
	}
	if got := checkFrom(t, r, plainPeer, q); got != "deny 401 missing_token" {
		t.Fatalf("plaintext client: %s", got)
	}
}
