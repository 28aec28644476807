package checker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/credinject/credinject/checker"
)

// discardWriter is a ResponseWriter that keeps one header map, cleared per
// request, so the benchmark counts the handler's allocations, not a
// recorder's.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// peerConn is a net.Conn that only has a remote address (for ConnContext).
type peerConn struct {
	net.Conn
	addr *net.TCPAddr
}

func (c peerConn) RemoteAddr() net.Addr { return c.addr }

// BenchmarkCheckHTTP is /check on a token and credential cache hit, by
// caller: NewHTTP (nobody trusted), a peer judged per connection
// (ConnContext) untrusted or trusted with X-Forwarded-Host, one judged per
// request (no ConnContext), and a TLS client judged by its names once per
// connection. The trust decision adds no allocation to the handler's own.
func BenchmarkCheckHTTP(b *testing.B) {
	r := newRig(b, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, true)
	r.put(b, "", "team-a", "app", "authorization", "Bearer sk-a")
	r.put(b, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	tok := "Bearer " + r.token(b, "team-a", "app")
	proxies := checker.HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	gateway := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{DNSNames: []string{"gateway"}}}}
	type bcase struct {
		h        *checker.HTTP
		peer     string
		connCtx  bool
		tls      *tls.ConnectionState
		want     string // header expected
		forwards bool
	}
	cases := map[string]bcase{
		"NewHTTP":                          {h: checker.NewHTTP(r.c), peer: "10.1.1.1:4000", want: "Authorization"},
		"untrusted peer, per connection":   {h: checker.NewHTTPWith(r.c, proxies), peer: "192.0.2.1:4000", connCtx: true, want: "Authorization"},
		"trusted proxy, per connection":    {h: checker.NewHTTPWith(r.c, proxies), peer: "10.1.1.1:4000", connCtx: true, want: "X-Api-Key", forwards: true},
		"trusted proxy, per request":       {h: checker.NewHTTPWith(r.c, proxies), peer: "10.1.1.1:4000", want: "X-Api-Key", forwards: true},
		"named TLS client, per connection": {h: checker.NewHTTPWith(r.c, checker.HTTPOptions{Clients: &namesFake{}}), peer: "192.0.2.1:4000", connCtx: true, tls: gateway, want: "X-Api-Key", forwards: true},
	}
	for name, tc := range cases {
		b.Run(name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/check", nil)
			req.Host = "api.openai.com"
			req.RemoteAddr = tc.peer
			req.TLS = tc.tls
			req.Header.Set("Authorization", tok)
			if tc.forwards {
				req.Header.Set("X-Forwarded-Host", "api.anthropic.com")
			}
			if tc.connCtx {
				ap := netip.MustParseAddrPort(tc.peer)
				req = req.WithContext(tc.h.ConnContext(context.Background(), peerConn{addr: net.TCPAddrFromAddrPort(ap)}))
			}
			w := &discardWriter{h: http.Header{}}
			serve := func() {
				clear(w.h)
				tc.h.ServeHTTP(w, req)
			}
			serve() // fill the token cache
			for range 100 {
				if serve(); w.code != http.StatusOK || w.h.Get(tc.want) == "" {
					b.Fatalf("%d %v", w.code, w.h)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				serve()
			}
		})
	}
}
