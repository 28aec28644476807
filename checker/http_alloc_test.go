//go:build !race

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

// TestHTTPTrustAllocatesNothing: judging the caller (a trusted proxy per
// connection or per request, a named TLS client) costs /check no
// allocation beyond what NewHTTP's answer itself makes.
func TestHTTPTrustAllocatesNothing(t *testing.T) {
	r, tok := forwardedRig(t)
	proxies := checker.HTTPOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	gateway := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{DNSNames: []string{"gateway"}}}}
	allocs := func(h *checker.HTTP, connCtx bool, cs *tls.ConnectionState, forwarded string) float64 {
		req := httptest.NewRequest("GET", "/check", nil)
		req.Host = "api.openai.com"
		req.RemoteAddr = "10.1.1.1:4000"
		req.TLS = cs
		req.Header.Set("Authorization", tok)
		if forwarded != "" {
			req.Header.Set("X-Forwarded-Host", forwarded)
		}
		if connCtx {
			req = req.WithContext(h.ConnContext(context.Background(), peerConn{addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(req.RemoteAddr))}))
		}
		w := &discardWriter{h: http.Header{}}
		serve := func() {
			clear(w.h)
			h.ServeHTTP(w, req)
			if w.code != http.StatusOK {
				t.Fatalf("%d %v", w.code, w.h)
			}
		}
		// The token cache fills asynchronously: the first request's
		// result is in it once WaitTokens returns.
		serve()
		r.c.WaitTokens()
		return testing.AllocsPerRun(500, serve)
	}
	base := allocs(checker.NewHTTP(r.c), false, nil, "")
	for name, got := range map[string]float64{
		"trusted proxy, per connection": allocs(checker.NewHTTPWith(r.c, proxies), true, nil, "api.openai.com"),
		"trusted proxy, per request":    allocs(checker.NewHTTPWith(r.c, proxies), false, nil, "api.openai.com"),
		"named client, per connection":  allocs(checker.NewHTTPWith(r.c, checker.HTTPOptions{Clients: &namesFake{}}), true, gateway, "api.openai.com"),
	} {
		// The same route as NewHTTP's, named by X-Forwarded-Host.
		if got != base {
			t.Errorf("%s: %v allocations per /check, NewHTTP %v", name, got, base)
		}
	}
}
