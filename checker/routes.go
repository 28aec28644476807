package checker

import (
	"errors"
	"fmt"
	"strings"
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
func NewRouter(routes []Route, hasDefault bool) (*Router, error) {
	r := &Router{exact: map[string]string{}, wildcard: map[string]string{}, hasDefault: hasDefault}
	for _, rt := range routes {
		if rt.Name == "" {
			return nil, errors.New("router: a route needs a name")
		}
		for _, h := range rt.Hosts {
			if suf, ok := strings.CutPrefix(h, "*"); ok {
				suf = strings.ToLower(strings.TrimSuffix(suf, "."))
				if !strings.HasPrefix(suf, ".") || len(suf) < 2 {
					return nil, fmt.Errorf("router: bad wildcard %q", h)
				}
				r.wildcard[suf] = rt.Name
				continue
			}
			r.exact[normalizeHost(h)] = rt.Name
		}
	}
	return r, nil
}

// Match returns the route for host: an :authority or Host header in any
// case, with or without a port, in absolute form ("api.example.com.") or as
// an IPv6 literal ("[::1]:8080").
func (r *Router) Match(host string) (string, bool) {
	if len(r.exact) == 0 && len(r.wildcard) == 0 {
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
// allocates only when the name has upper-case letters.
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
