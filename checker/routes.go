package checker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/credinject/credinject/authz"
)

// Route maps requests to a route name; the credential cache is keyed by
// (route name, identity). The default route has the empty name.
type Route struct {
	Name  string
	Hosts []string // exact host names or "*.suffix"
	// Paths are request path prefixes ("/v1/"); empty: every path. Among
	// the routes of one host the longest matching prefix wins.
	Paths []string
	// Subjects, when set, are the only identities the route serves; any
	// other caller is denied subject_not_allowed.
	Subjects *Subjects
}

// Subjects select identities: every ServiceAccount of Namespaces, and each
// of ServiceAccounts ("namespace/name").
type Subjects struct {
	Namespaces      []string
	ServiceAccounts []string
}

// Target is a route as the router found it.
type Target struct {
	Name string
	// namespaces and serviceAccounts (by Key) are the subjects allowed;
	// both nil: everyone.
	namespaces, serviceAccounts map[string]struct{}
}

// Allows reports whether the route serves id. It allocates nothing.
func (t *Target) Allows(id authz.Identity) bool {
	if t.namespaces == nil && t.serviceAccounts == nil {
		return true
	}
	if _, ok := t.namespaces[id.Namespace]; ok {
		return true
	}
	_, ok := t.serviceAccounts[id.Key()]
	return ok
}

// hostRoutes are the routes of one host: the one for every path, and those
// of path prefixes, longest first.
type hostRoutes struct {
	all      *Target
	prefixes []prefixTarget
}

type prefixTarget struct {
	prefix string
	t      *Target
}

// match is the route of path: the longest matching prefix, else the route
// for every path, else none.
func (h *hostRoutes) match(path string) *Target {
	for i := range h.prefixes {
		if strings.HasPrefix(path, h.prefixes[i].prefix) {
			return h.prefixes[i].t
		}
	}
	return h.all
}

// Router picks a route by host and path. It is immutable after NewRouter.
type Router struct {
	exact    map[string]*hostRoutes
	wildcard map[string]*hostRoutes // suffix ".example.com" -> routes
	def      *Target                // nil: no default route
}

// defaultTarget is the default route's: every identity.
var defaultTarget = &Target{}

// NewRouter builds a router. With hasDefault, hosts that no route names
// use the default route; otherwise they are denied with no_route. A host
// that routes name, on a path none of its routes' prefixes matches, is
// denied no_route too (it never falls back to a wildcard or the default).
//
// Hosts are matched without their port, so two routes claiming the same
// path prefix (or every path) of hosts that differ only by port (or case,
// or a trailing dot) are an error, as is a host that is not ASCII (write
// an internationalised name in its punycode form, xn--…).
func NewRouter(routes []Route, hasDefault bool) (*Router, error) {
	r := &Router{exact: map[string]*hostRoutes{}, wildcard: map[string]*hostRoutes{}}
	if hasDefault {
		r.def = defaultTarget
	}
	owner := map[[2]string]string{} // (host key, prefix) -> route
	claim := func(m map[string]*hostRoutes, key, h string, t *Target, paths []string) error {
		hr := m[key]
		if hr == nil {
			hr = &hostRoutes{}
			m[key] = hr
		}
		if len(paths) == 0 {
			paths = []string{""}
		}
		for _, p := range paths {
			k := [2]string{key, p}
			if other, ok := owner[k]; ok {
				if other == t.Name {
					continue
				}
				return fmt.Errorf("router: host %q path %q of route %q is also route %q's (hosts are matched without port, case or trailing dot)", h, p, t.Name, other)
			}
			owner[k] = t.Name
			if p == "" {
				hr.all = t
				continue
			}
			hr.prefixes = append(hr.prefixes, prefixTarget{prefix: p, t: t})
		}
		return nil
	}
	for _, rt := range routes {
		if rt.Name == "" {
			return nil, errors.New("router: a route needs a name")
		}
		for _, p := range rt.Paths {
			if !strings.HasPrefix(p, "/") {
				return nil, fmt.Errorf("router: path %q of route %q does not start with '/'", p, rt.Name)
			}
		}
		t := &Target{Name: rt.Name}
		if s := rt.Subjects; s != nil && (len(s.Namespaces) > 0 || len(s.ServiceAccounts) > 0) {
			t.namespaces, t.serviceAccounts = map[string]struct{}{}, map[string]struct{}{}
			for _, ns := range s.Namespaces {
				t.namespaces[ns] = struct{}{}
			}
			for _, sa := range s.ServiceAccounts {
				t.serviceAccounts[sa] = struct{}{}
			}
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
				if err := claim(r.wildcard, suf, h, t, rt.Paths); err != nil {
					return nil, err
				}
				continue
			}
			n := normalizeHost(h)
			if n == "" {
				return nil, fmt.Errorf("router: bad host %q", h)
			}
			if err := claim(r.exact, n, h, t, rt.Paths); err != nil {
				return nil, err
			}
		}
	}
	for _, m := range []map[string]*hostRoutes{r.exact, r.wildcard} {
		for _, hr := range m {
			slices.SortStableFunc(hr.prefixes, func(a, b prefixTarget) int { return len(b.prefix) - len(a.prefix) })
		}
	}
	return r, nil
}

// Match returns the name of the route for host on every path (see Route).
func (r *Router) Match(host string) (string, bool) {
	t := r.Route(host, "")
	if t == nil {
		return "", false
	}
	return t.Name, true
}

// Route returns the route for a request's host and path (nil: none). The
// host is an :authority or Host header in any case, with or without a
// port, in absolute form ("api.example.com.") or as an IPv6 literal
// ("[::1]:8080"). A host that is none of these (see normalizeHost) matches
// no route, nor does one with a byte outside ASCII (only the default):
// case is folded in ASCII only, so no Unicode letter (a KELVIN SIGN, a
// dotless i) stands in for an ASCII one. The path is compared byte by byte
// with the routes' prefixes, its query ignored: the gateway should
// normalize paths (Envoy's normalize_path, merge_slashes). It allocates
// nothing for a lower-case host.
func (r *Router) Route(host, path string) *Target {
	if len(r.exact) == 0 && len(r.wildcard) == 0 {
		return r.def
	}
	if !asciiOnly(host) {
		return r.def
	}
	host = normalizeHost(host)
	if host == "" {
		return r.def
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if hr, ok := r.exact[host]; ok {
		return hr.match(path)
	}
	if strings.IndexByte(host, ':') >= 0 {
		return r.def // an IPv6 literal has no parent domain
	}
	// Longest suffix first: try each parent domain.
	for i := 0; i < len(host); i++ {
		if host[i] == '.' {
			if hr, ok := r.wildcard[host[i:]]; ok {
				return hr.match(path)
			}
		}
	}
	return r.def
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
