package checker

import (
	"errors"
	"fmt"
	"net"
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
			h = strings.ToLower(h)
			if suf, ok := strings.CutPrefix(h, "*"); ok {
				if !strings.HasPrefix(suf, ".") || len(suf) < 2 {
					return nil, fmt.Errorf("router: bad wildcard %q", h)
				}
				r.wildcard[suf] = rt.Name
				continue
			}
			r.exact[h] = rt.Name
		}
	}
	return r, nil
}

// Match returns the route for host (an :authority, port allowed).
func (r *Router) Match(host string) (string, bool) {
	if len(r.exact) == 0 && len(r.wildcard) == 0 {
		return "", r.hasDefault
	}
	host = stripPort(host)
	host = strings.ToLower(host)
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

func stripPort(host string) string {
	if strings.HasPrefix(host, "[") {
		if h, _, err := net.SplitHostPort(host); err == nil {
			return h
		}
		return host
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		return host[:i]
	}
	return host
}
