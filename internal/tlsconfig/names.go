package tlsconfig

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ClientNames is the set of names a client certificate must carry one of,
// beyond being signed by the client CA: the CA alone says "someone the CA
// issued to", which in a cluster is often every workload.
//
// An entry is either a URI SAN, compared whole and exactly
// ("spiffe://cluster.local/ns/istio-system/sa/egress-gateway"), or a DNS SAN:
// exact ("gateway.example.internal") or "*." and a suffix, which matches one
// more label ("*.gw.example" matches "a.gw.example", neither "gw.example" nor
// "a.b.gw.example"), as a wildcard does in TLS. DNS names are compared in
// any case and without a trailing dot. The subject's common name is never
// looked at (as in Go's own verification since 1.15), nor a certificate's own
// wildcard DNS SANs, which name no one in particular.
type ClientNames struct {
	exact    map[string]bool // lower-case DNS names
	suffixes []string        // ".gw.example" for "*.gw.example"
	uris     map[string]bool // url.URL.String() of each URI entry
}

// ParseClientNames checks and compiles entries; key names the list in
// errors ("listen.tls.clientNames" gives "listen.tls.clientNames[2]: ...").
// An empty list is valid and matches nothing.
func ParseClientNames(key string, entries []string) (ClientNames, error) {
	n := ClientNames{exact: map[string]bool{}, uris: map[string]bool{}}
	var errs []error
	for i, e := range entries {
		if err := n.add(e); err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %q: %w", key, i, e, err))
		}
	}
	return n, errors.Join(errs...)
}

func (n *ClientNames) add(e string) error {
	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil {
			return err
		}
		if u.Host == "" || strings.Contains(e, "*") {
			return errors.New("a URI SAN needs a scheme and an authority, and has no wildcard")
		}
		n.uris[u.String()] = true
		return nil
	}
	d := strings.TrimSuffix(strings.ToLower(e), ".")
	suffix, wild := strings.CutPrefix(d, "*.")
	if !dnsName(suffix) {
		return errors.New(`not a DNS name, "*." and a DNS name, or a URI (scheme://…)`)
	}
	if wild {
		n.suffixes = append(n.suffixes, "."+suffix)
	} else {
		n.exact[d] = true
	}
	return nil
}

// dnsName: dot-separated labels of letters, digits, '-' and '_' (SPIFFE-ish
// service names use it), none empty.
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Empty reports whether there are no entries (any CA-signed certificate
// will do).
func (n ClientNames) Empty() bool {
	return len(n.exact) == 0 && len(n.suffixes) == 0 && len(n.uris) == 0
}

// Match reports whether cert carries a DNS or URI SAN matching an entry.
// A nil certificate matches nothing.
func (n ClientNames) Match(cert *x509.Certificate) bool {
	if cert == nil {
		return false
	}
	for _, d := range cert.DNSNames {
		if n.matchDNS(d) {
			return true
		}
	}
	for _, u := range cert.URIs {
		if n.uris[u.String()] {
			return true
		}
	}
	return false
}

func (n ClientNames) matchDNS(d string) bool {
	if strings.Contains(d, "*") {
		return false
	}
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if n.exact[d] {
		return true
	}
	for _, s := range n.suffixes {
		// One label before the suffix, as a TLS wildcard matches.
		if label, ok := strings.CutSuffix(d, s); ok && label != "" && !strings.Contains(label, ".") {
			return true
		}
	}
	return false
}
