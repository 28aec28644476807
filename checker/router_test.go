package checker_test

import (
	"testing"

	"github.com/credinject/credinject/checker"
)

// TestRouterFoldsASCIIOnly: a host with non-ASCII letters never matches an
// ASCII route, neither exactly nor by wildcard, whatever Unicode case
// folding would make of it (U+212A KELVIN SIGN lower-cases to 'k', U+0130
// to "i̇", U+017F LONG S upper-cases to 'S'); it gets the default route, or
// no route.
func TestRouterFoldsASCIIOnly(t *testing.T) {
	for _, hasDefault := range []bool{true, false} {
		r, err := checker.NewRouter([]checker.Route{
			{Name: "kelvin", Hosts: []string{"key.example.com", "*.kelvin.example"}},
			{Name: "sigv4", Hosts: []string{"s3.amazonaws.com"}},
			{Name: "punycode", Hosts: []string{"xn--bcher-kva.example"}},
		}, hasDefault)
		if err != nil {
			t.Fatal(err)
		}
		for host, want := range map[string]string{
			"key.example.com":          "kelvin",
			"KEY.example.com:443":      "kelvin",
			"a.KELVIN.example.":        "kelvin",
			"xn--bcher-kva.example":    "punycode",
			"\u212aey.example.com":     "",
			"\u212aEY.EXAMPLE.COM:443": "",
			"a.\u212aelvin.example":    "",
			"\u212a.kelvin.example":    "",
			"\u017f3.amazonaws.com":    "",
			"b\u00fccher.example":      "",
			"s3.amazonaws.com\u200b":   "",
			"key.example.com\xff":      "",
			"key.example.com.\u3002":   "",
		} {
			name, ok := r.Match(host)
			wantOK := want != "" || hasDefault
			if name != want || ok != wantOK {
				t.Errorf("default %v: Match(%q) = %q %v, want %q %v", hasDefault, host, name, ok, want, wantOK)
			}
		}
	}
}

// TestRouterRefusesAliasedHosts: routes whose hosts differ only by port
// (which the router ignores), case or a trailing dot are a configuration
// error, not a silent last-one-wins; so is a non-ASCII route host.
func TestRouterRefusesAliasedHosts(t *testing.T) {
	for name, routes := range map[string][]checker.Route{
		"ports":         {{Name: "a", Hosts: []string{"api.example.com:443"}}, {Name: "b", Hosts: []string{"api.example.com:8443"}}},
		"port and none": {{Name: "a", Hosts: []string{"api.example.com"}}, {Name: "b", Hosts: []string{"api.example.com:8443"}}},
		"case and dot":  {{Name: "a", Hosts: []string{"api.example.com"}}, {Name: "b", Hosts: []string{"API.Example.com."}}},
		"wildcards":     {{Name: "a", Hosts: []string{"*.example.com"}}, {Name: "b", Hosts: []string{"*.EXAMPLE.com."}}},
		"IPv6 ports":    {{Name: "a", Hosts: []string{"[::1]:80"}}, {Name: "b", Hosts: []string{"[::1]:443"}}},
		"non-ASCII":     {{Name: "a", Hosts: []string{"\u212aey.example.com"}}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := checker.NewRouter(routes, true); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	// One route may name a host more than once.
	if _, err := checker.NewRouter([]checker.Route{{Name: "a", Hosts: []string{"api.example.com:443", "api.example.com"}}}, true); err != nil {
		t.Fatal(err)
	}
}
