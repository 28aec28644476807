package checker

import (
	"net/netip"
	"strings"
	"testing"
)

// hostName reduces an :authority or Host value to the name it addresses, by
// the URI grammar (RFC 3986 authority without userinfo), written apart from
// normalizeHost: "[v6]" or "[v6]:port", a bare IPv6 literal, or a name with
// an optional ":port" of digits and one optional trailing dot. The name is
// lower-cased in ASCII. ok is false for anything else: such a host addresses
// nothing a route could name.
func hostName(h string) (name string, ok bool) {
	if rest, found := strings.CutPrefix(h, "["); found {
		lit, port, found := strings.Cut(rest, "]")
		if !found || (port != "" && !isPort(port[1:])) || (port != "" && port[0] != ':') {
			return "", false
		}
		if _, err := netip.ParseAddr(lit); err != nil || !strings.Contains(lit, ":") {
			return "", false
		}
		return strings.ToLower(lit), true
	}
	if strings.Count(h, ":") > 1 {
		if a, err := netip.ParseAddr(h); err != nil || !a.Is6() {
			return "", false
		}
		return strings.ToLower(h), true
	}
	if n, port, found := strings.Cut(h, ":"); found {
		if !isPort(port) {
			return "", false
		}
		h = n
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" {
		return "", false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return "", false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", false
			}
		}
	}
	return strings.ToLower(h), true
}

func isPort(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// fits reports whether host is addressed by pattern: an exact host (in any
// configured form) or "*.suffix", which names one or more labels before
// the suffix, never the suffix alone.
func fits(host, pattern string) bool {
	name, ok := hostName(host)
	if !ok {
		return false
	}
	if suf, wild := strings.CutPrefix(pattern, "*."); wild {
		suf = strings.ToLower(strings.TrimSuffix(suf, "."))
		return strings.HasSuffix(name, "."+suf) && len(name) > len(suf)+1
	}
	p, ok := hostName(pattern)
	return ok && p == name
}

// fuzzRoutes are the routes of FuzzRouterMatch: exact names, a wildcard,
// IPv6 and IPv4 literals, one of them configured in a loose form.
var fuzzRoutes = []Route{
	{Name: "openai", Hosts: []string{"api.openai.com"}},
	{Name: "anthropic", Hosts: []string{"*.anthropic.com"}},
	{Name: "okta", Hosts: []string{"api.okta.com", "*.Kelvin.Example."}},
	{Name: "loopback", Hosts: []string{"::1", "[fe80::1]", "127.0.0.1"}},
}

// checkFits fails when r matched host to a named route none of whose
// patterns host fits.
func checkFits(t *testing.T, routes []Route, host, route string, ok bool) {
	t.Helper()
	if !ok || route == "" {
		return
	}
	for _, rt := range routes {
		if rt.Name != route {
			continue
		}
		for _, p := range rt.Hosts {
			if fits(host, p) {
				return
			}
		}
		t.Fatalf("Match(%q) = %q, but the host fits none of %q", host, route, rt.Hosts)
	}
	t.Fatalf("Match(%q) = %q, a route that does not exist", host, route)
}

// FuzzRouterPatterns: for any configured pattern and any host, the router
// matches host to the route only when host fits the pattern, and every
// host built to fit it (a label before a wildcard, a port, a trailing dot,
// upper case) is matched.
func FuzzRouterPatterns(f *testing.F) {
	for _, s := range [][2]string{
		{"api.openai.com", "api.openai.com"}, {"*.anthropic.com", "eu.anthropic.com"},
		{"*.anthropic.com", ".anthropic.com"}, {"*.anthropic.com", "x.anthropic.com:443@evil.example"},
		{"*.anthropic.com", "evil.example/x.anthropic.com"}, {"api.okta.com", "api.o\u212ata.com"},
		{"::1", "[::1]:8080"}, {"[fe80::1]", "FE80::1"}, {"127.0.0.1", "127.0.0.1:80"},
		{"a.b", "[a.b]:1"}, {"a.b", "a.b:x"}, {"*.a", "b..a"}, {"*", ""}, {"*.", "."},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, host string) {
		// Only the patterns the configuration accepts: a host name or an
		// IP literal, or "*." and a host name.
		if n, ok := hostName(strings.TrimPrefix(pattern, "*.")); !ok || strings.HasPrefix(pattern, "*.") && strings.Contains(n, ":") {
			return
		}
		routes := []Route{{Name: "r", Hosts: []string{pattern}}}
		r, err := NewRouter(routes, false)
		if err != nil {
			return
		}
		route, ok := r.Match(host)
		checkFits(t, routes, host, route, ok)
		// Liveness: a plain host built from a plain pattern is matched.
		name, plain := hostName(strings.TrimPrefix(pattern, "*."))
		if !plain || strings.Contains(name, ":") {
			return
		}
		want := name
		if strings.HasPrefix(pattern, "*.") {
			want = "x." + name
		}
		for _, v := range []string{want, strings.ToUpper(want) + ".", want + ":8443"} {
			if got, ok := r.Match(v); !ok || got != "r" {
				t.Fatalf("pattern %q: Match(%q) = %q %v, want r", pattern, v, got, ok)
			}
		}
	})
}

// TestFits: the oracle of the router fuzz targets says what the README
// says a route matches.
func TestFits(t *testing.T) {
	yes := [][2]string{
		{"api.openai.com", "api.openai.com"}, {"API.OpenAI.com.:443", "api.openai.com"},
		{"eu.anthropic.com", "*.anthropic.com"}, {"a.b.anthropic.com", "*.anthropic.com"},
		{"[::1]:8080", "::1"}, {"::1", "::1"}, {"[FE80::1]", "[fe80::1]"}, {"127.0.0.1:80", "127.0.0.1"},
		{"api.okta.com", "api.okta.com"}, {"x.kelvin.example", "*.Kelvin.Example."},
	}
	no := [][2]string{
		{"anthropic.com", "*.anthropic.com"}, {".anthropic.com", "*.anthropic.com"},
		{"evilanthropic.com", "*.anthropic.com"}, {"x.anthropic.com:443@evil.example", "*.anthropic.com"},
		{"evil.example/x.anthropic.com", "*.anthropic.com"}, {"api.o\u212ata.com", "api.okta.com"},
		{"[api.openai.com]", "api.openai.com"}, {"api.openai.com:x", "api.openai.com"},
		{"api.openai.com..", "api.openai.com"}, {"[::1", "::1"}, {"[::1]x", "::1"}, {"", "*.a"},
	}
	for _, c := range yes {
		if !fits(c[0], c[1]) {
			t.Errorf("fits(%q, %q) = false", c[0], c[1])
		}
	}
	for _, c := range no {
		if fits(c[0], c[1]) {
			t.Errorf("fits(%q, %q) = true", c[0], c[1])
		}
	}
}
