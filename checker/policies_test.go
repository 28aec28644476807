package checker_test

import (
	"context"
	"fmt"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/credinject/credinject/checker"
)

// TestRouterPaths: among a host's routes the longest matching path prefix
// wins; a host with routes but none matching the path gets no route (never
// a wildcard's or the default); the query is not part of the path.
func TestRouterPaths(t *testing.T) {
	r, err := checker.NewRouter([]checker.Route{
		{Name: "v1", Hosts: []string{"api.example.com"}, Paths: []string{"/v1/"}},
		{Name: "v1-chat", Hosts: []string{"api.example.com"}, Paths: []string{"/v1/chat/"}},
		{Name: "v2", Hosts: []string{"api.example.com"}, Paths: []string{"/v2"}},
		{Name: "wild", Hosts: []string{"*.example.com"}},
		{Name: "all", Hosts: []string{"all.example.com"}},
		{Name: "all-admin", Hosts: []string{"all.example.com"}, Paths: []string{"/admin/"}},
	}, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ host, path, want string }{
		{"api.example.com", "/v1/models", "v1"},
		{"API.example.com:443", "/v1/chat/completions", "v1-chat"},
		{"api.example.com", "/v1/chat?x=/v1/chat/", "v1"},
		{"api.example.com", "/v2", "v2"},
		{"api.example.com", "/v2beta/x", "v2"},
		{"api.example.com", "/v3/", "-"},
		{"api.example.com", "/", "-"},
		{"other.example.com", "/v3/", "wild"},
		{"all.example.com", "/admin/users", "all-admin"},
		{"all.example.com", "/adminx", "all"},
		{"elsewhere.test", "/v1/", ""},
	} {
		got := "-"
		if tg := r.Route(c.host, c.path); tg != nil {
			got = tg.Name
		}
		if got != c.want {
			t.Errorf("Route(%q, %q) = %q, want %q", c.host, c.path, got, c.want)
		}
	}
	// One (host, prefix) claimed by two routes is an error.
	if _, err := checker.NewRouter([]checker.Route{
		{Name: "a", Hosts: []string{"api.example.com"}, Paths: []string{"/v1/"}},
		{Name: "b", Hosts: []string{"API.example.com:8443"}, Paths: []string{"/v1/"}},
	}, true); err == nil {
		t.Error("a claimed path prefix was accepted twice")
	}
}

// TestSubjects: a route with subjects serves only them; anyone else gets 403
// subject_not_allowed before any credential is looked up.
func TestSubjects(t *testing.T) {
	r := newRig(t, []checker.Route{
		{Name: "team", Hosts: []string{"api.openai.com"}, Subjects: &checker.Subjects{Namespaces: []string{"team-a"}, ServiceAccounts: []string{"team-b/agent"}}},
	}, true)
	for _, id := range [][2]string{{"team-a", "x"}, {"team-a", "y"}, {"team-b", "agent"}, {"team-b", "other"}, {"team-c", "agent"}} {
		r.put(t, "team", id[0], id[1], "authorization", "Bearer "+id[0]+"-"+id[1])
	}
	for _, c := range []struct{ ns, sa, want string }{
		{"team-a", "x", "allow authorization=Bearer team-a-x"},
		{"team-a", "y", "allow authorization=Bearer team-a-y"},
		{"team-b", "agent", "allow authorization=Bearer team-b-agent"},
		{"team-b", "other", "deny 403 subject_not_allowed"},
		{"team-c", "agent", "deny 403 subject_not_allowed"},
	} {
		if got := outcome(check(t, r, "Bearer "+r.token(t, c.ns, c.sa), "api.openai.com")); got != c.want {
			t.Errorf("%s/%s: %s, want %s", c.ns, c.sa, got, c.want)
		}
	}
	// The default route serves everyone.
	r.put(t, "", "team-c", "agent", "authorization", "Bearer default")
	if got := outcome(check(t, r, "Bearer "+r.token(t, "team-c", "agent"), "other.example")); got != "allow authorization=Bearer default" {
		t.Errorf("default route: %s", got)
	}
	if r.calls.Load() != 0 {
		t.Errorf("%d source calls; a refused subject must not reach the source", r.calls.Load())
	}
}

// TestSetRouter: a new router applies to the next request.
func TestSetRouter(t *testing.T) {
	r := newRig(t, nil, false)
	r.put(t, "new", "ns", "sa", "authorization", "Bearer new")
	tok := "Bearer " + r.token(t, "ns", "sa")
	if got := outcome(check(t, r, tok, "api.openai.com")); got != "deny 403 no_route" {
		t.Fatalf("before: %s", got)
	}
	nr, err := checker.NewRouter([]checker.Route{{Name: "new", Hosts: []string{"api.openai.com"}}}, false)
	if err != nil {
		t.Fatal(err)
	}
	r.c.SetRouter(nr)
	if got := outcome(check(t, r, tok, "api.openai.com")); got != "allow authorization=Bearer new" {
		t.Fatalf("after: %s", got)
	}
}

// policyFixture is a rig with n identities and, with perHost, n routes (one
// per host h-i.example, path prefix /v1/, subjects the identity's
// namespace), else one route for every host; each identity asks its own.
func policyFixture(tb testing.TB, n int, perHost bool) *benchFixture {
	var routes []checker.Route
	if perHost {
		for i := range n {
			routes = append(routes, checker.Route{Name: fmt.Sprintf("p-%d", i), Hosts: []string{fmt.Sprintf("h-%d.example", i)},
				Paths: []string{"/v1/"}, Subjects: &checker.Subjects{Namespaces: []string{fmt.Sprintf("ns-%d", i)}}})
		}
	} else {
		routes = []checker.Route{{Name: "p", Hosts: []string{"h.example"}}}
	}
	r := newRig(tb, routes, false)
	reqs := make([]*authv3.CheckRequest, n)
	for i := range n {
		ns, route, host := fmt.Sprintf("ns-%d", i), "p", "h.example"
		if perHost {
			route, host = fmt.Sprintf("p-%d", i), fmt.Sprintf("h-%d.example", i)
		}
		r.put(tb, route, ns, "sa", "authorization", fmt.Sprintf("Bearer key-%d", i))
		reqs[i] = request("Bearer "+r.token(tb, ns, "sa"), host)
	}
	return &benchFixture{r: r, reqs: reqs}
}

// BenchmarkCheckPolicies is BenchmarkCheck's hit on 1,000 identities with
// one route, and with 1,000 routes (policies) on 1,000 hosts, each with a
// path prefix and subjects.
func BenchmarkCheckPolicies(b *testing.B) {
	for _, perHost := range []bool{false, true} {
		name := "routes=1"
		if perHost {
			name = "routes=1000"
		}
		b.Run(name, func(b *testing.B) {
			f := policyFixture(b, 1_000, perHost)
			ctx := context.Background()
			for range 3 {
				for _, q := range f.reqs {
					f.r.g.Check(ctx, q)
				}
			}
			runHits(b, f.r, f.reqs)
		})
	}
}

// BenchmarkRouterRoute is the router alone: one route, and 1,000 routes on
// 1,000 hosts with a path prefix and subjects, asked for each host in turn.
func BenchmarkRouterRoute(b *testing.B) {
	for _, n := range []int{1, 1_000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			routes := make([]checker.Route, n)
			hosts := make([]string, n)
			for i := range n {
				hosts[i] = fmt.Sprintf("h-%d.example", i)
				routes[i] = checker.Route{Name: fmt.Sprintf("p-%d", i), Hosts: []string{hosts[i]}, Paths: []string{"/v1/"},
					Subjects: &checker.Subjects{Namespaces: []string{fmt.Sprintf("ns-%d", i)}}}
			}
			r, err := checker.NewRouter(routes, false)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if r.Route(hosts[i%n], "/v1/chat/completions") == nil {
					b.Fatal("no route")
				}
				i += 7919
			}
		})
	}
}
