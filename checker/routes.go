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
			if err := claim(r.exact, normalizeHost(h), h, rt.Name); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// Match returns the route for host: an :authority or Host header in any
// case, with or without a port, in absolute form ("api.example.com.") or as
// an IPv6 literal ("[::1]:8080"). A host with a byte outside ASCII matches
// no route (only the default): case is folded in ASCII only, so no Unicode
// letter (a KELVIN SIGN, a dotless i) stands in for an ASCII one.
func (r *Router) Match(host string) (string, bool) {
	if len(r.exact) == 0 && len(r.wildcard) == 0 {
		return "", r.hasDefault
	}
	if !asciiOnly(host) {
		return "", r.hasDefault
	}
	host = normalizeHost(host)
	if name, ok := r.exact[host]; ok {
		return name, true
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
// allocates only when the name has upper-case letters. Callers pass ASCII
// (strings.ToLower would fold some non-ASCII letters to ASCII ones).
func normalizeHost(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := strings.IndexByte(h, ':'); i >= 0 && strings.IndexByte(h[i+1:], ':') < 0 {
		// host:port; a bare IPv6 literal has more than one colon and is kept.
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	return strings.ToLower(h)
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
