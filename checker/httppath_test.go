package checker_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/testenv/rawhttp"
)

// rawRequest sends one HTTP/1.1 request with target written as is and
// returns the response, body read.
func rawRequest(t *testing.T, addr, method, target string, hdr map[string]string) *http.Response {
	t.Helper()
	resp, _ := rawhttp.Do(t, addr, method, target, hdr)
	return resp
}

// TestCheckPathsReachTheHandler: whatever path Envoy's HTTP mode appends to
// /check (double slashes, dot segments, escaped dots, a path naming
// another endpoint), and whatever the method, a real HTTP server in front
// of Mount answers with /check's decision: never a redirect, a 404 or
// another endpoint's answer.
func TestCheckPathsReachTheHandler(t *testing.T) {
	r := newRig(t, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, true)
	r.put(t, "", "team-a", "app", "authorization", "Bearer sk-a")
	r.put(t, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	tok := "Bearer " + r.token(t, "team-a", "app")
	probes := http.NewServeMux()
	probes.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	probes.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics\n")) })
	srv := httptest.NewServer(checker.NewHTTP(r.c).Mount(probes))
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	paths := []string{
		"/check", "/check/", "/check/v1/chat/completions", "/check?x=1", "/check/v1/files?version=2&next=../x",
		"/check//", "/check//x", "/check//evil.example.com/x", "/check/a//b",
		"/check/.", "/check/..", "/check/./x", "/check/../x", "/check/a/../../healthz", "/check/../metrics",
		"/check/%2e%2e/x", "/check/%2E%2E/%2e%2e/metrics", "/check/%2e", "/check/%2f%2fx", "/check%2f..%2fhealthz",
		"/check/..%2f..%2fmetrics", "/check/%252e%252e/x", "/check/\u00e9", "/check/%00",
	}
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PROPFIND"}
	for _, m := range methods {
		for _, p := range paths {
			t.Run(m+" "+p, func(t *testing.T) {
				for _, c := range []struct {
					what   string
					hdr    map[string]string
					status int
					header string // name=value expected in the answer
				}{
					{"allow", map[string]string{"Host": "api.openai.com", "Authorization": tok}, 200, "Authorization=Bearer sk-a"},
					{"routed allow", map[string]string{"Host": "API.Anthropic.com:443", "Authorization": tok}, 200, "X-Api-Key=ak-a"},
					{"deny", map[string]string{"Host": "api.openai.com"}, 401, "X-Credinject-Reason=missing_token"},
				} {
					resp := rawRequest(t, addr, m, p, c.hdr)
					name, value, _ := strings.Cut(c.header, "=")
					if resp.StatusCode != c.status || resp.Header.Get(name) != value || resp.Header.Get("Location") != "" {
						t.Fatalf("%s: %d %v, want %d with %s", c.what, resp.StatusCode, resp.Header, c.status, c.header)
					}
				}
			})
		}
	}

	// The other endpoints are still the mux's, and a path that only looks
	// like /check is not a decision.
	for p, want := range map[string]int{"/healthz": 200, "/metrics": 200, "/checkx": 404, "/check.": 404, "/": 404} {
		if resp := rawRequest(t, addr, "GET", p, map[string]string{"Host": "h", "Authorization": tok}); resp.StatusCode != want || resp.Header.Get("X-Credinject-Reason") != "" {
			t.Errorf("%s: %d %v, want %d and no decision", p, resp.StatusCode, resp.Header, want)
		}
	}
}

func TestIsCheckPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/check": true, "/check/": true, "/check/x": true, "/check//": true, "/check/../x": true,
		"": false, "/": false, "/checks": false, "/check.": false, "//check": false, "check": false, "/Check": false,
	} {
		if got := checker.IsCheckPath(p); got != want {
			t.Errorf("IsCheckPath(%q) = %v, want %v", p, got, want)
		}
	}
}
