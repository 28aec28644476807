package checker

import (
	"context"
	"errors"
	"fmt"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/credinject/credinject/authz"
)

// PeerLogins is what the checker needs to obtain a credential for a mesh
// peer, which presents no token to log in to Vault with: Prefetch makes
// the source hold id with tokens it requests itself (TokenRequest, with
// the audiences Vault's role expects), logs in as id and reads every route.
// Errors are *authz.Error (vault_denied, vault_unavailable, ...).
// *watcher.Watcher satisfies it.
type PeerLogins interface {
	Prefetch(ctx context.Context, id authz.Identity) error
}

// Request is what a check reads of one request.
type Request struct {
	// Authorization is the Authorization header's value ("" none).
	Authorization string
	// Peer is the mesh peer's identity a trusted caller vouched for: gRPC
	// CheckRequest.attributes.source.principal, or the URI= of the last
	// x-forwarded-client-cert element on /check. "" when there is none, or
	// when the caller is not trusted (its peer identity is ignored).
	Peer string
	// PeerUnreadable: a trusted caller sent a peer header that cannot be
	// read (invalid_peer).
	PeerUnreadable bool
	// Host is the original request's host.
	Host string
	// Path is the original request's path (its query is ignored): routes
	// with path prefixes match it.
	Path string
	// attrs is the whole request as the gRPC CheckRequest describes it
	// (method, target, headers, body), which signing reads; nil on /check.
	attrs *authv3.AttributeContext_HttpRequest
}

// maxPeerLen bounds a peer identity: a URI of a trust domain (255), a
// namespace (63) and a ServiceAccount name (253) with their separators.
const maxPeerLen = 640

// ErrInvalidPeer is wrapped by ParsePeer's errors.
var ErrInvalidPeer = errors.New("invalid peer identity")

// ParsePeer parses a mesh peer's SPIFFE ID, which must be exactly
// spiffe://<trustDomain>/ns/<namespace>/sa/<name> with a DNS-1123 label as
// namespace and a DNS-1123 subdomain as name (Istio's form). Errors wrap
// ErrInvalidPeer.
func ParsePeer(trustDomain, id string) (authz.Identity, error) {
	if len(id) > maxPeerLen {
		return authz.Identity{}, fmt.Errorf("%w: %d bytes (at most %d)", ErrInvalidPeer, len(id), maxPeerLen)
	}
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return authz.Identity{}, fmt.Errorf("%w: %q is not a spiffe:// URI", ErrInvalidPeer, id)
	}
	td, rest, _ := strings.Cut(rest, "/")
	if td != trustDomain {
		return authz.Identity{}, fmt.Errorf("%w: trust domain %q, want %q", ErrInvalidPeer, td, trustDomain)
	}
	rest, ok = strings.CutPrefix(rest, "ns/")
	ns, sa, ok2 := strings.Cut(rest, "/sa/")
	if !ok || !ok2 {
		return authz.Identity{}, fmt.Errorf("%w: %q is not spiffe://%s/ns/<namespace>/sa/<name>", ErrInvalidPeer, id, trustDomain)
	}
	if !authz.IsDNSLabel(ns) {
		return authz.Identity{}, fmt.Errorf("%w: namespace %q is not a DNS-1123 label", ErrInvalidPeer, ns)
	}
	if !authz.IsDNSSubdomain(sa) {
		return authz.Identity{}, fmt.Errorf("%w: serviceaccount %q is not a DNS-1123 subdomain", ErrInvalidPeer, sa)
	}
	return authz.NewIdentity(ns, sa), nil
}

// ErrXFCC is wrapped by XFCCURI's errors.
var ErrXFCC = errors.New("malformed x-forwarded-client-cert")

// XFCCURI returns the URI= value of the last element of an
// x-forwarded-client-cert header's values (Envoy's format: elements
// separated by commas, each key=value pairs separated by semicolons, a
// value holding ',', ';' or '=' double-quoted with '"' escaped as '\"').
// The last element is the one the nearest proxy, the trusted gateway,
// added. found is false when that element has no URI (or an empty one).
// Errors wrap ErrXFCC: an unterminated quote, a pair without '=', an empty
// element, or more than one URI in the element (a SPIFFE certificate has
// exactly one). Unescaped values are returned without copying.
func XFCCURI(values []string) (uri string, found bool, err error) {
	if len(values) == 0 {
		return "", false, nil
	}
	elem, err := lastXFCCElement(values[len(values)-1])
	if err != nil {
		return "", false, err
	}
	if elem == "" {
		return "", false, fmt.Errorf("%w: empty element", ErrXFCC)
	}
	for elem != "" {
		var pair string
		pair, elem = cutXFCC(elem, ';')
		pair = strings.TrimSpace(pair)
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" || strings.ContainsAny(k, `"\`) {
			return "", false, fmt.Errorf("%w: %q is not key=value", ErrXFCC, pair)
		}
		if v, err = xfccValue(v); err != nil {
			return "", false, err
		}
		if !strings.EqualFold(k, "URI") || v == "" {
			continue
		}
		if found {
			return "", false, fmt.Errorf("%w: more than one URI in the last element", ErrXFCC)
		}
		uri, found = v, true
	}
	return uri, found, nil
}

// lastXFCCElement is v's last comma-separated element outside quotes,
// without surrounding spaces.
func lastXFCCElement(v string) (string, error) {
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			start = i + 1
		}
	}
	if quoted {
		return "", fmt.Errorf("%w: unterminated quote", ErrXFCC)
	}
	return strings.TrimSpace(v[start:]), nil
}

// cutXFCC cuts s at the first sep outside quotes (quotes are balanced:
// lastXFCCElement checked them).
func cutXFCC(s string, sep byte) (before, after string) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case c == sep && !quoted:
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

// xfccValue unquotes a value: "…" with \" and \\ escapes, or a bare value
// with no quote in it.
func xfccValue(v string) (string, error) {
	if !strings.HasPrefix(v, `"`) {
		if strings.ContainsAny(v, `"\`) {
			return "", fmt.Errorf("%w: stray quote in %q", ErrXFCC, v)
		}
		return v, nil
	}
	if len(v) < 2 || v[len(v)-1] != '"' {
		return "", fmt.Errorf("%w: text after a quoted value", ErrXFCC)
	}
	inner := v[1 : len(v)-1]
	if !strings.ContainsAny(inner, `"\`) {
		return inner, nil
	}
	var b strings.Builder
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		switch {
		case c == '\\' && i+1 < len(inner):
			i++
			b.WriteByte(inner[i])
		case c == '\\', c == '"':
			// A lone backslash, or a quote inside closes the value early.
			return "", fmt.Errorf("%w: text after a quoted value", ErrXFCC)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// trustedGRPC reports whether ctx's gRPC caller may vouch for a peer: a TCP
// peer in proxies, or any client when the server requires named client
// certificates (listen.tls.clientNames: the handshake refused the others).
func trustedGRPC(ctx context.Context, proxies []netip.Prefix, named bool) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	if named {
		if _, tls := p.AuthInfo.(credentials.TLSInfo); tls {
			return true
		}
	}
	a, ok := p.Addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	addr := a.AddrPort().Addr().Unmap()
	for _, pr := range proxies {
		if pr.Contains(addr) {
			return true
		}
	}
	return false
}
