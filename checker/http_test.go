package checker_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/testenv/testca"
)

// forwardedRig: the default route injects "Bearer sk-a" for team-a/app,
// the anthropic route "x-api-key: ak-a".
func forwardedRig(t *testing.T) (*rig, string) {
	t.Helper()
	r := newRig(t, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, true)
	r.put(t, "", "team-a", "app", "authorization", "Bearer sk-a")
	r.put(t, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	return r, "Bearer " + r.token(t, "team-a", "app")
}

// answer is "default", "anthropic" or "deny <status> <reason>".
func answer(w *httptest.ResponseRecorder) string {
	switch {
	case w.Code != http.StatusOK:
		return "deny " + http.StatusText(w.Code) + " " + w.Header().Get("X-Credinject-Reason")
	case w.Header().Get("X-Api-Key") == "ak-a":
		return "anthropic"
	case w.Header().Get("Authorization") == "Bearer sk-a":
		return "default"
	}
	return "allow without a credential"
}

// TestForwardedHostOnlyFromTrustedProxies: the route a request gets from
// X-Forwarded-Host, X-Original-Host or Forwarded when its TCP peer is a
// trusted proxy; from its own Host otherwise, whatever it claims.
func TestForwardedHostOnlyFromTrustedProxies(t *testing.T) {
	r, tok := forwardedRig(t)
	h := checker.NewHTTPWith(r.c, checker.HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}})
	const proxy, workload = "10.1.2.3:40000", "192.0.2.7:40000"
	cases := map[string]struct {
		peer    string
		headers map[string]string
		want    string
	}{
		"proxy, X-Forwarded-Host":              {proxy, map[string]string{"X-Forwarded-Host": "api.anthropic.com"}, "anthropic"},
		"proxy, X-Original-Host":               {proxy, map[string]string{"X-Original-Host": "api.anthropic.com"}, "anthropic"},
		"proxy, Forwarded host=":               {proxy, map[string]string{"Forwarded": "for=192.0.2.7;host=api.anthropic.com;proto=https"}, "anthropic"},
		"proxy, Forwarded quoted host":         {proxy, map[string]string{"Forwarded": `For="[2001:db8::1]:4711";Host="api.anthropic.com:443"`}, "anthropic"},
		"proxy, Forwarded: the nearest's host": {proxy, map[string]string{"Forwarded": "host=api.anthropic.com, for=192.0.2.7;host=api.openai.com"}, "default"},
		"proxy, X-Forwarded-Host list":         {proxy, map[string]string{"X-Forwarded-Host": "api.openai.com, api.anthropic.com"}, "anthropic"},
		"proxy, Forwarded with an escape":      {proxy, map[string]string{"Forwarded": `host="api.anthropic\.com"`}, "default"},
		"proxy, X-Forwarded-Host first":        {proxy, map[string]string{"X-Forwarded-Host": "api.anthropic.com", "Forwarded": "host=api.openai.com"}, "anthropic"},
		"proxy, no forwarded header":           {proxy, nil, "default"},
		"IPv6 proxy":                           {"[fd00::5]:40000", map[string]string{"X-Forwarded-Host": "api.anthropic.com"}, "anthropic"},
		"IPv4-mapped proxy":                    {"[::ffff:10.9.9.9]:40000", map[string]string{"X-Forwarded-Host": "api.anthropic.com"}, "anthropic"},
		"workload, X-Forwarded-Host ignored":   {workload, map[string]string{"X-Forwarded-Host": "api.anthropic.com"}, "default"},
		"workload, X-Original-Host ignored":    {workload, map[string]string{"X-Original-Host": "api.anthropic.com"}, "default"},
		"workload, Forwarded ignored":          {workload, map[string]string{"Forwarded": "host=api.anthropic.com"}, "default"},
		"workload next to the proxy range":     {"11.0.0.1:40000", map[string]string{"X-Forwarded-Host": "api.anthropic.com"}, "default"},
		"unparsable peer":                      {"pipe", map[string]string{"X-Forwarded-Host": "api.anthropic.com"}, "default"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/check", nil)
			req.Host = "api.openai.com"
			req.RemoteAddr = tc.peer
			req.Header.Set("Authorization", tok)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if got := answer(w); got != tc.want {
				t.Fatalf("%s", got)
			}
		})
	}
	// Host decides for anyone: the route of the request's own host.
	req := httptest.NewRequest("GET", "/check", nil)
	req.Host = "api.anthropic.com"
	req.RemoteAddr = workload
	req.Header.Set("Authorization", tok)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if got := answer(w); got != "anthropic" {
		t.Fatalf("an untrusted caller's own Host: %s", got)
	}
}

// TestForwardedHostTrustPerConnection: served with ConnContext, the peer
// address is judged when the connection is accepted; NewHTTP trusts no one.
func TestForwardedHostTrustPerConnection(t *testing.T) {
	r, tok := forwardedRig(t)
	for name, tc := range map[string]struct {
		h    *checker.HTTP
		want string
	}{
		"loopback trusted": {checker.NewHTTPWith(r.c, checker.HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}), "anthropic"},
		"another range":    {checker.NewHTTPWith(r.c, checker.HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}), "default"},
		"NewHTTP":          {checker.NewHTTP(r.c), "default"},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(tc.h)
			srv.Config.ConnContext = tc.h.ConnContext
			srv.Start()
			defer srv.Close()
			for range 2 { // a new connection, then the same one again
				if got := get(t, srv.Client(), srv.URL, tok, "api.openai.com", "api.anthropic.com"); got != tc.want {
					t.Fatalf("%s", got)
				}
			}
		})
	}
}

// get calls url/check with Host and X-Forwarded-Host and returns the answer.
func get(t *testing.T, c *http.Client, url, tok, host, forwarded string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/check", nil)
	req.Host = host
	req.Header.Set("Authorization", tok)
	req.Header.Set("X-Forwarded-Host", forwarded)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	w := httptest.NewRecorder()
	w.Code = resp.StatusCode
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	return answer(w)
}

// namesFake allows certificates with the DNS name "gateway" and counts
// its calls.
type namesFake struct{ calls atomic.Int64 }

func (*namesFake) HasClientNames() bool { return true }
func (f *namesFake) ClientNamed(cs *tls.ConnectionState) bool {
	f.calls.Add(1)
	return cs != nil && len(cs.PeerCertificates) > 0 && len(cs.PeerCertificates[0].DNSNames) > 0 && cs.PeerCertificates[0].DNSNames[0] == "gateway"
}

// TestClientNamesOnCheck: a TLS client whose certificate names no client
// name gets 403 client_not_allowed (counted) and no credential; the named
// one gets its answer and is trusted with X-Forwarded-Host.
func TestClientNamesOnCheck(t *testing.T) {
	r, tok := forwardedRig(t)
	names := &namesFake{}
	h := checker.NewHTTPWith(r.c, checker.HTTPOptions{Clients: names})
	withCert := func(dns ...string) *tls.ConnectionState {
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{DNSNames: dns}}}
	}
	for name, tc := range map[string]struct {
		cs   *tls.ConnectionState
		want string
	}{
		"the gateway":      {withCert("gateway"), "anthropic"},
		"a workload":       {withCert("workload"), "deny Forbidden client_not_allowed"},
		"no TLS":           {nil, "deny Forbidden client_not_allowed"},
		"no certificate":   {&tls.ConnectionState{}, "deny Forbidden client_not_allowed"},
		"the gateway, too": {withCert("gateway"), "anthropic"},
	} {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/check", nil)
			req.Host = "api.openai.com"
			req.TLS = tc.cs
			req.Header.Set("Authorization", tok)
			req.Header.Set("X-Forwarded-Host", "api.anthropic.com")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if got := answer(w); got != tc.want {
				t.Fatalf("%s", got)
			}
			if w.Code != http.StatusOK && (w.Header().Get("Authorization") != "" || w.Header().Get("X-Api-Key") != "") {
				t.Fatalf("a refused client got a credential: %v", w.Header())
			}
		})
	}
	if got := denies(t, r, "client_not_allowed"); got != 3 {
		t.Fatalf(`credinject_check_total{reason="client_not_allowed"} = %v, want 3`, got)
	}
}

// TestClientNamesOncePerConnection: over a real TLS server with
// ConnContext, a keep-alive connection's certificate is judged once.
func TestClientNamesOncePerConnection(t *testing.T) {
	r, tok := forwardedRig(t)
	ca, err := testca.New("ca")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string) tls.Certificate {
		l, err := ca.ClientNamed(name, name)
		if err != nil {
			t.Fatal(err)
		}
		c, err := l.TLS()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for name, tc := range map[string]struct {
		cert tls.Certificate
		want string
	}{
		"gateway":  {issue("gateway"), "anthropic"},
		"workload": {issue("workload"), "deny Forbidden client_not_allowed"},
	} {
		t.Run(name, func(t *testing.T) {
			names := &namesFake{}
			h := checker.NewHTTPWith(r.c, checker.HTTPOptions{Clients: names})
			srv := httptest.NewUnstartedServer(h)
			srv.Config.ConnContext = h.ConnContext
			srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
			srv.StartTLS()
			defer srv.Close()
			c := srv.Client()
			c.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{tc.cert}
			for range 3 {
				if got := get(t, c, srv.URL, tok, "api.openai.com", "api.anthropic.com"); got != tc.want {
					t.Fatalf("%s", got)
				}
			}
			if n := names.calls.Load(); n != 1 {
				t.Fatalf("ClientNamed called %d times for one connection", n)
			}
		})
	}
}

// denies is credinject_check_total{result="deny",reason}, summed over
// identity sources.
func denies(t *testing.T, r *rig, reason string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found, sum := false, 0.0
	for _, mf := range mfs {
		if mf.GetName() != "credinject_check_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["result"] == "deny" && labels["reason"] == reason {
				found, sum = true, sum+m.GetCounter().GetValue()
			}
		}
	}
	if !found {
		t.Fatalf("no credinject_check_total{reason=%q}", reason)
	}
	return sum
}
