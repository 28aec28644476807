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
		"ipv6":             {"[::1]:8080", "", false},
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

func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"", "Bearer ", "Bearer a.b.c", "bearer x", "Basic abc", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "Bearer \x00.\xff.a", "Bearer a.b.c.d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, r := BearerToken(header)
		if r == authz.ReasonNone {
			if tok == "" || strings.Count(tok, ".") != 2 || !strings.Contains(header, tok) {
				t.Fatalf("accepted %q as %q", header, tok)
			}
			// Decoding claims of an accepted token never panics.
			_, _ = UnverifiedClaims(tok)
		} else if tok != "" {
			t.Fatalf("rejected with a token: %q", tok)
		}
	})
}

func FuzzUnverifiedClaims(f *testing.F) {
	f.Add("a.eyJleHAiOjF9.c")
	f.Add("a.eyJhdWQiOlsieCIsInkiXX0.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, tok string) {
		_, _ = UnverifiedClaims(tok)
	})
}
