package checker

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/authz"
)

// HTTP is the forward-auth endpoint (/check) for nginx auth_request, Traefik
// ForwardAuth, Caddy forward_auth and Envoy's HTTP ext_authz: the same
// decision as Check, as a status and headers.
type HTTP struct {
	c       *Checker
	proxies []netip.Prefix
	clients ClientNames
	// peerHeader is the canonical name of the header a trusted caller
	// names the mesh peer in ("": the peer source is off).
	peerHeader string
}

// HTTPOptions say whose forwarded headers /check believes and, with client
// names, whom it answers at all. The zero value trusts nobody and answers
// everyone who reaches it.
type HTTPOptions struct {
	// TrustedProxies (listen.trustedProxies): a request whose TCP peer
	// address is in one of these prefixes is routed by the host its
	// X-Forwarded-Host, X-Original-Host or Forwarded (host=) header names;
	// any other request by its own Host header.
	TrustedProxies []netip.Prefix
	// Clients (listen.tls.clientNames; nil: none), asked once per TLS
	// connection: a client certificate naming none of the names gets 403
	// client_not_allowed; one that names one is also a trusted proxy.
	Clients ClientNames
	// PeerHeader (identity.peer.header; "": x-forwarded-client-cert) is
	// where a trusted caller names the mesh peer, when the checker takes
	// identities from peers: the URI= of its last element.
	PeerHeader string
}

// DefaultPeerHeader is where Envoy forwards the client certificate.
const DefaultPeerHeader = "x-forwarded-client-cert"

// ClientNames decides about a TLS client by its certificate's names.
// *tlsconfig.Reloader satisfies it.
type ClientNames interface {
	// HasClientNames reports whether names are required at all.
	HasClientNames() bool
	// ClientNamed reports whether the connection's verified client
	// certificate names one of them (cs nil: not TLS). It counts a refusal,
	// so it is called once per connection.
	ClientNamed(cs *tls.ConnectionState) bool
}

// NewHTTP wraps c as a forward-auth handler that trusts nobody's forwarded
// headers (NewHTTPWith(c, HTTPOptions{})).
func NewHTTP(c *Checker) *HTTP { return NewHTTPWith(c, HTTPOptions{}) }

// NewHTTPWith wraps c as a forward-auth handler with opts. Serve it from an
// http.Server whose ConnContext is the handler's, so that the caller is
// judged once per connection rather than on every request.
func NewHTTPWith(c *Checker, opts HTTPOptions) *HTTP {
	h := &HTTP{c: c, proxies: opts.TrustedProxies}
	if c.peerOn {
		h.peerHeader = opts.PeerHeader
		if h.peerHeader == "" {
			h.peerHeader = DefaultPeerHeader
		}
		h.peerHeader = http.CanonicalHeaderKey(h.peerHeader)
	}
	if opts.Clients != nil && opts.Clients.HasClientNames() {
		h.clients = opts.Clients
	}
	return h
}

// connKey keys the *conn ConnContext puts in a connection's context.
type connKey struct{}

// conn is what is known of one connection's caller.
type conn struct {
	// proxy: the TCP peer is a trusted proxy (decided at accept).
	proxy bool
	// named: the TLS client's certificate names a client name; decided on
	// the connection's first request, after the handshake (HTTP/2 streams
	// may ask at once).
	once  sync.Once
	named bool
}

// ConnContext is for http.Server.ConnContext: it judges the peer address
// once for the connection's lifetime.
func (h *HTTP) ConnContext(ctx context.Context, c net.Conn) context.Context {
	cn := &conn{}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		cn.proxy = h.trustedAddr(a.AddrPort().Addr())
	}
	return context.WithValue(ctx, connKey{}, cn)
}

func (h *HTTP) trustedAddr(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range h.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// caller says whether r's caller may ask (allowed) and whether its
// forwarded headers choose the route (trusted). Without the connection's
// state (a handler served without ConnContext) it judges r alone.
func (h *HTTP) caller(r *http.Request) (allowed, trusted bool) {
	cn, _ := r.Context().Value(connKey{}).(*conn)
	if cn != nil {
		trusted = cn.proxy
	} else if len(h.proxies) > 0 {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			trusted = h.trustedAddr(ap.Addr())
		}
	}
	if h.clients == nil {
		return true, trusted
	}
	var named bool
	if cn != nil {
		cn.once.Do(func() { cn.named = h.clients.ClientNamed(r.TLS) })
		named = cn.named
	} else {
		named = h.clients.ClientNamed(r.TLS)
	}
	return named, trusted || named
}

// ServeHTTP answers /check and /check/<path> for every method: Envoy's HTTP
// ext_authz keeps the original request's method and appends its path, so a
// PUT or DELETE through the gateway arrives here as a PUT or DELETE. The
// request body, if any, is not read.
//
// The original request's host is the request's own Host (Envoy sends the
// original one; so do Caddy and the nginx example), unless the caller is
// trusted (HTTPOptions): then X-Forwarded-Host (Traefik), then
// X-Original-Host, then the Forwarded header's host= decide, each the value
// the nearest proxy wrote (the last one). An untrusted caller's forwarded
// headers are ignored: a workload could otherwise send its request to one
// host with another route's credential.
//
// With the peer source on, a trusted caller's PeerHeader (the URI= of its
// last x-forwarded-client-cert element) names the mesh peer; anyone else's
// is ignored, as if absent.
func (h *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	allowed, trusted := h.caller(r)
	if !allowed {
		h.c.metrics.checks[authz.SourceToken][authz.ReasonClientNotAllowed].Inc()
		h.c.cfg.Log.Debug("deny", "reason", string(authz.ReasonClientNotAllowed), "peer", r.RemoteAddr)
		writeDeny(w, authz.ReasonClientNotAllowed)
		return
	}
	host := r.Host
	if trusted {
		if fh := forwardedHost(r.Header); fh != "" {
			host = fh
		}
	}
	ctx := r.Context()
	var span trace.Span
	if t := h.c.tracer; t != nil {
		// Canonical keys: a lookup of a lower-case name would allocate.
		th := traceHeaders{
			traceparent: first(r.Header["Traceparent"]), b3: first(r.Header["B3"]),
			b3TraceID: first(r.Header["X-B3-Traceid"]), b3Sampled: first(r.Header["X-B3-Sampled"]), b3Flags: first(r.Header["X-B3-Flags"]),
		}
		ctx, span = t.start(ctx, &th, propagation.HeaderCarrier(r.Header))
	}
	req := Request{Authorization: r.Header.Get("Authorization"), Host: host, Path: checkedPath(r.URL.Path)}
	if trusted && h.peerHeader != "" {
		// Only the gateway's word counts: from anyone else the header is
		// ignored, as if absent.
		uri, _, err := XFCCURI(r.Header[h.peerHeader])
		req.Peer, req.PeerUnreadable = uri, err != nil
	}
	d := h.c.DecideRequest(ctx, req)
	endCheck(span, &d)
	if d.Reason != authz.ReasonNone {
		writeDeny(w, d.Reason)
		return
	}
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	if e := d.Entry; e.Header != "" {
		hdr[http.CanonicalHeaderKey(e.Header)] = []string{e.Value}
	}
	if sh := d.Entry.Shapes; sh != nil {
		for _, f := range sh.Headers {
			hdr[http.CanonicalHeaderKey(f.Name)] = []string{f.Value}
		}
	}
	if !setsAuthorization(d.Entry) {
		// Another header is injected: the workload's token must not go on.
		// Envoy's HTTP ext_authz removes the headers this one names.
		hdr["X-Envoy-Auth-Headers-To-Remove"] = []string{headerAuthorization}
	}
	hdr["X-Credinject-Namespace"] = []string{d.Identity.Namespace}
	hdr["X-Credinject-Serviceaccount"] = []string{d.Identity.ServiceAccount}
	w.WriteHeader(http.StatusOK)
}

// writeDeny answers reason's status with x-credinject-reason (and
// www-authenticate: Bearer on a 401).
func writeDeny(w http.ResponseWriter, reason authz.Reason) {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	st := reason.Status()
	hdr["X-Credinject-Reason"] = []string{string(reason)}
	if st == http.StatusUnauthorized {
		hdr["Www-Authenticate"] = []string{"Bearer"}
	}
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(st)
	_, _ = w.Write([]byte(strconv.Itoa(st) + " " + string(reason) + "\n"))
}

// forwardedHost is the host a trusted proxy forwarded: X-Forwarded-Host,
// else X-Original-Host, else the Forwarded header's host= (RFC 7239); of a
// list, the last entry, which the nearest proxy wrote. "" if none.
func forwardedHost(h http.Header) string {
	if v := lastEntry(h["X-Forwarded-Host"]); v != "" {
		return v
	}
	if v := lastEntry(h["X-Original-Host"]); v != "" {
		return v
	}
	return forwardedParam(lastEntry(h["Forwarded"]), "host")
}

// lastEntry is the last comma-separated entry of a header's last line,
// without surrounding spaces.
func lastEntry(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	v := vs[len(vs)-1]
	return strings.TrimSpace(v[lastUnquotedComma(v)+1:])
}

// lastUnquotedComma is the index of v's last comma outside a quoted string
// (Forwarded: host="a,b" has none), or -1.
func lastUnquotedComma(v string) int {
	last, quoted := -1, false
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				last = i
			}
		}
	}
	return last
}

// forwardedParam is the value of name in one Forwarded element
// ("for=1.2.3.4;host=api.example.com;proto=https"), unquoted. A quoted value
// with an escape is refused (""), as is a missing one.
func forwardedParam(elem, name string) string {
	for elem != "" {
		var pair string
		pair, elem, _ = cutUnquoted(elem, ';')
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, name) {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
			if strings.ContainsAny(v, `\"`) {
				return ""
			}
		}
		return v
	}
	return ""
}

// cutUnquoted is strings.Cut at the first sep outside a quoted string.
func cutUnquoted(s string, sep byte) (before, after string, found bool) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quoted = !quoted
		case sep:
			if !quoted {
				return s[:i], s[i+1:], true
			}
		}
	}
	return s, "", false
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}
