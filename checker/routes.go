package checker

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Route maps request hosts to a route name; the credential cache is keyed by
// (route name, identity). The default route has the empty name.
type Route struct {
	Name  string
	Hosts []string // exact host names or "*.suffix"
}

// Router picks a route by host. It is immutable after NewRouter.
type Router struct {
	exact      map[string]string
	wildcard   map[string]string // suffix ".example.com" -> route
	hasDefault bool
}

// NewRouter builds a router. With hasDefault, unmatched hosts use the default
// route; otherwise they are denied with no_route.
//
// Hosts are matched without their port, so two routes whose hosts differ
// only by port (or case, or a trailing dot) are an error, as is a host that
// is not ASCII (write an internationalised name in its punycode form,
// xn--…).
func NewRouter(routes []Route, hasDefault bool) (*Router, error) {
	r := &Router{exact: map[string]string{}, wildcard: map[string]string{}, hasDefault: hasDefault}
	claim := func(m map[string]string, key, h, route string) error {
		if other, ok := m[key]; ok && other != route {
			return fmt.Errorf("router: host %q of route %q is also route %q's (hosts are matched without port, case or trailing dot)", h, route, other)
		}
		m[key] = route
		return nil
	}
	for _, rt := range routes {
		if rt.Name == "" {
			return nil, errors.New("router: a route needs a name")
		}
		for _, h := range rt.Hosts {
			if !asciiOnly(h) {
				return nil, fmt.Errorf("router: host %q of route %q is not ASCII (use its punycode form)", h, rt.Name)
			}
			if suf, ok := strings.CutPrefix(h, "*"); ok {
				suf = strings.ToLower(strings.TrimSuffix(suf, "."))
				if !strings.HasPrefix(suf, ".") || len(suf) < 2 {
					return nil, fmt.Errorf("router: bad wildcard %q", h)
				}
				if err := claim(r.wildcard, suf, h, rt.Name); err != nil {
					return nil, err
				}
				continue
			}
			n := normalizeHost(h)
			if n == "" {
				return nil, fmt.Errorf("router: bad host %q", h)
			}
			if err := claim(r.exact, n, h, rt.Name); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// Match returns the route for host: an :authority or Host header in any
// case, with or without a port, in absolute form ("api.example.com.") or as
// an IPv6 literal ("[::1]:8080"). A host that is none of these (see
// normalizeHost) matches no route, nor does one with a byte outside ASCII
// (only the default): case is folded in ASCII only, so no Unicode letter (a
// KELVIN SIGN, a dotless i) stands in for an ASCII one.
func (r *Router) Match(host string) (string, bool) {
	if len(r.exact) == 0 && len(r.wildcard) == 0 {
		return "", r.hasDefault
	}
	if !asciiOnly(host) {
		return "", r.hasDefault
	}
	host = normalizeHost(host)
	if host == "" {
		return "", r.hasDefault
	}
	if name, ok := r.exact[host]; ok {
		return name, true
	}
	if strings.IndexByte(host, ':') >= 0 {
		return "", r.hasDefault // an IPv6 literal has no parent domain
	}
	// Longest suffix first: try each parent domain.
	for i := 0; i < len(host); i++ {
		if host[i] == '.' {
			if name, ok := r.wildcard[host[i:]]; ok {
				return name, true
			}
		}
	}
	return "", r.hasDefault
}

// normalizeHost reduces a host name to the form routes are keyed by: no
// port, no brackets around an IPv6 literal, no trailing dot, lower case. It
// answers "" for what is no host by the URI grammar, so that it matches no
// route: a port that is not digits ("a.example:1@b.example"), brackets
// around anything but an IPv6 literal or followed by anything but a port,
// an empty label, a byte other than an ASCII letter, digit, '-', '.', '_'
// (and ':', '%' in an IPv6 literal). Only ASCII letters are folded: a
// Unicode fold would make "api.o\u212ata.com" (a Kelvin sign) the name
// "api.okta.com". It allocates only when the name has upper-case letters.
func normalizeHost(h string) string {
	if rest, ok := strings.CutPrefix(h, "["); ok {
		i := strings.IndexByte(rest, ']')
		if i < 0 || !isPortSuffix(rest[i+1:]) || strings.IndexByte(rest[:i], ':') < 0 {
			return ""
		}
		h = rest[:i]
	} else if i := strings.IndexByte(h, ':'); i >= 0 && strings.IndexByte(h[i+1:], ':') < 0 {
		// host:port; a bare IPv6 literal has more than one colon and is kept.
		if !isPortSuffix(h[i:]) {
			return ""
		}
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || h[0] == '.' || strings.Contains(h, "..") {
		return ""
	}
	upper, v6 := false, strings.IndexByte(h, ':') >= 0
	for i := 0; i < len(h); i++ {
		switch c := h[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
		case c == ':' || c == '%':
			if !v6 {
				return ""
			}
		case 'A' <= c && c <= 'Z':
			upper = true
		default:
			return ""
		}
	}
	if !upper {
		return h
	}
	b := []byte(h)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// isPortSuffix reports whether s is empty or ':' and digits (an empty port
// is allowed, as in the URI grammar).
func isPortSuffix(s string) bool {
	if s == "" {
		return true
	}
	if s[0] != ':' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// asciiOnly reports whether s has no byte outside 7-bit ASCII.
func asciiOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
