package checker

import (
	"strings"
	"testing"

	"github.com/credinject/credinject/authz"
)

func TestBearerToken(t *testing.T) {
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	cases := map[string]struct {
		header string
		token  string
		reason authz.Reason
	}{
		"empty":                 {"", "", authz.ReasonMissingToken},
		"bearer only":           {"Bearer ", "", authz.ReasonMissingToken},
		"bearer spaces":         {"Bearer    ", "", authz.ReasonMissingToken},
		"basic scheme":          {"Basic dXNlcjpwYXNz", "", authz.ReasonMalformedToken},
		"no scheme":             {jwt, "", authz.ReasonMalformedToken},
		"lower-case scheme":     {"bearer " + jwt, jwt, authz.ReasonNone},
		"extra spaces":          {"Bearer   " + jwt, jwt, authz.ReasonNone},
		"valid":                 {"Bearer " + jwt, jwt, authz.ReasonNone},
		"two segments":          {"Bearer abc.def", "", authz.ReasonMalformedToken},
		"four segments":         {"Bearer a.b.c.d", "", authz.ReasonMalformedToken},
		"empty segment":         {"Bearer a..c", "", authz.ReasonMalformedToken},
		"leading dot":           {"Bearer .b.c", "", authz.ReasonMalformedToken},
		"trailing space inside": {"Bearer a.b.c d", "", authz.ReasonMalformedToken},
		"control character":     {"Bearer a.b.c\r\nx", "", authz.ReasonMalformedToken},
		"non-base64url":         {"Bearer a+b.c/d.e=", "", authz.ReasonMalformedToken},
		"too long":              {"Bearer " + strings.Repeat("a", maxTokenLen) + ".b.c", "", authz.ReasonMalformedToken},
		"utf-8":                 {"Bearer ä.b.c", "", authz.ReasonMalformedToken},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			tok, r := BearerToken(c.header)
			if tok != c.token || r != c.reason {
				t.Fatalf("BearerToken(%.40q) = %q, %q; want %q, %q", c.header, tok, r, c.token, c.reason)
			}
		})
	}
}

func TestParseServiceAccountUser(t *testing.T) {
	cases := map[string]struct {
		user, ns, name string
		ok             bool
	}{
		"service account": {"system:serviceaccount:egress-test:default", "egress-test", "default", true},
		"user":            {"alice", "", "", false},
		"no name":         {"system:serviceaccount:ns:", "", "", false},
		"no namespace":    {"system:serviceaccount::sa", "", "", false},
		"extra colon":     {"system:serviceaccount:ns:sa:x", "", "", false},
		"node":            {"system:node:n1", "", "", false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ns, n, ok := ParseServiceAccountUser(c.user)
			if ns != c.ns || n != c.name || ok != c.ok {
				t.Fatalf("got %q %q %v", ns, n, ok)
			}
		})
	}
}

func TestRouterMatch(t *testing.T) {
	r, err := NewRouter([]Route{
		{Name: "openai", Hosts: []string{"api.openai.com"}},
		{Name: "anthropic", Hosts: []string{"api.anthropic.com", "*.anthropic.com"}},
		{Name: "configured loosely", Hosts: []string{"API.Example.COM.", "*.Example.NET.", "[FE80::1]"}},
		{Name: "loopback", Hosts: []string{"::1"}},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		host  string
		route string
		ok    bool
	}{
		"exact":            {"api.openai.com", "openai", true},
		"exact with port":  {"api.openai.com:443", "openai", true},
		"upper case":       {"API.OpenAI.com", "openai", true},
		"wildcard":         {"eu.anthropic.com", "anthropic", true},
		"deep wildcard":    {"a.b.anthropic.com", "anthropic", true},
		"exact over wild":  {"api.anthropic.com", "anthropic", true},
		"bare suffix":      {"anthropic.com", "", false},
		"lookalike suffix": {"evilanthropic.com", "", false},
		"unknown":          {"example.com", "", false},
		"empty":            {"", "", false},
		"ipv6 with port":   {"[::1]:8080", "loopback", true},
		"ipv6 bracketed":   {"[::1]", "loopback", true},
		"ipv6 bare":        {"::1", "loopback", true},
		"ipv6 other":       {"[::2]:8080", "", false},
		"ipv6 upper case":  {"[fe80::1]:443", "configured loosely", true},
		"ipv6 bad bracket": {"[::1", "", false},
		"trailing dot":     {"api.openai.com.", "openai", true},
		"dot, port, case":  {"API.OPENAI.COM.:443", "openai", true},
		"two dots":         {"api.openai.com..", "", false},
		"wildcard dot":     {"eu.anthropic.com.", "anthropic", true},
		"configured forms": {"api.example.com", "configured loosely", true},
		"configured wild":  {"x.example.net:80", "configured loosely", true},
		"only a dot":       {".", "", false},
		"only a port":      {":443", "", false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			route, ok := r.Match(c.host)
			if route != c.route || ok != c.ok {
				t.Fatalf("Match(%q) = %q, %v; want %q, %v", c.host, route, ok, c.route, c.ok)
			}
		})
	}
	def, _ := NewRouter(nil, true)
	if route, ok := def.Match("anything.example"); !ok || route != "" {
		t.Fatalf("default router: %q %v", route, ok)
	}
}

// FuzzBearerToken: any Authorization value gets a token or one of the two
// token reasons; an accepted token is the header's own, well-shaped and
// bounded; the hot path's cutBearer agrees and allocates nothing.
func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"", "Bearer ", "Bearer a.b.c", "bearer x", "Basic abc", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "Bearer \x00.\xff.a", "Bearer a.b.c.d", "BEARER a.b.c", "bEaReR  a.b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, r := BearerToken(header)
		switch r {
		case authz.ReasonNone, authz.ReasonMissingToken, authz.ReasonMalformedToken:
		default:
			t.Fatalf("BearerToken(%q): reason %q outside the token reasons", header, r)
		}
		// The hot path's half agrees: it refuses no less and no more
		// than the scheme and size part of BearerToken.
		cut, cr := cutBearer(header)
		if r == authz.ReasonNone && (cr != authz.ReasonNone || cut != tok) || cr != authz.ReasonNone && cr != r {
			t.Fatalf("cutBearer(%q) = %q %q, BearerToken = %q %q", header, cut, cr, tok, r)
		}
		if n := testing.AllocsPerRun(1, func() { _, _ = cutBearer(header) }); n != 0 {
			t.Fatalf("cutBearer(%q) allocates %v times", header, n)
		}
		if r == authz.ReasonNone {
			// The token is the header past "Bearer " and its spaces, three
			// non-empty base64url segments, within the size bound.
			if !strings.EqualFold(header[:7], "bearer ") || strings.TrimLeft(header[7:], " ") != tok ||
				len(tok) > maxTokenLen || strings.Count(tok, ".") != 2 || strings.Contains(tok, "..") ||
				strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") != "" ||
				tok[0] == '.' || tok[len(tok)-1] == '.' {
				t.Fatalf("accepted %q as %q", header, tok)
			}
			// Decoding claims of an accepted token never panics.
			_, _ = UnverifiedClaims(tok)
		} else if tok != "" {
			t.Fatalf("rejected with a token: %q", tok)
		}
	})
}

// FuzzRouterMatch: any host string is answered without a panic, a host is
// matched only to a route one of whose patterns it fits (see fits), and
// ASCII case, a port and one trailing dot never change the answer.
func FuzzRouterMatch(f *testing.F) {
	for _, s := range []string{"api.openai.com", "API.OpenAI.com.:443", "eu.anthropic.com.", "[::1]:8080", "::1", "[::1", "]", ":", ".", "a..b", "[fe80::1%eth0]:1", "\x00.anthropic.com"} {
		f.Add(s)
	}
	r, err := NewRouter(fuzzRoutes, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, host string) {
		route, ok := r.Match(host)
		checkFits(t, fuzzRoutes, host, route, ok)
		if strings.ContainsAny(host, ":[]") || strings.HasSuffix(host, ".") {
			return
		}
		if !isASCII(host) {
			return
		}
		for _, v := range []string{strings.ToUpper(host), host + ".", host + ":443", strings.ToUpper(host) + ".:8443"} {
			if r2, ok2 := r.Match(v); r2 != route || ok2 != ok {
				t.Fatalf("Match(%q) = %q %v but Match(%q) = %q %v", host, route, ok, v, r2, ok2)
			}
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func FuzzUnverifiedClaims(f *testing.F) {
	f.Add("a.eyJleHAiOjF9.c")
	f.Add("a.eyJhdWQiOlsieCIsInkiXX0.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, tok string) {
		_, _ = UnverifiedClaims(tok)
	})
}
