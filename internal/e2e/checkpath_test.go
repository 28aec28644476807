package e2e_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/rawhttp"
)

// sendRaw sends one HTTP/1.1 request with target written as is to addr
// and returns the status, the headers and the body.
func sendRaw(t *testing.T, addr, method, target string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	resp, body := rawhttp.Do(t, addr, method, target, hdr)
	return resp.StatusCode, resp.Header, body
}

// checkPaths are request paths as a workload may send them; Envoy's HTTP
// mode appends them to /check.
var checkPaths = []string{
	"/v1/chat/completions", "/", "//", "//evil.example.com/x", "/a//b", "/.", "/..", "/./x", "/../x",
	"/a/../../healthz", "/../metrics", "/%2e%2e/x", "/%2E%2E/%2e%2e/metrics", "/%2f%2fx", "/..%2f..%2fmetrics",
	"/x?next=../y",
}

// TestCheckPathsThroughTheServer: the real credinject's HTTP listener
// answers /check<path> with /check's decision for every path and method,
// and so does a real Envoy in HTTP ext_authz mode in front of it: the
// workload's request reaches the upstream with its credential whatever its
// path, and without a token it is refused 401, never a redirect or a 404
// from the authorizer.
func TestCheckPathsThroughTheServer(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "paths", "sk-paths")
	srv := apptest.Start(t, env, apptest.Config(env))
	authzAddr := srv.App.HTTPAddr()
	for _, m := range []string{"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"} {
		for _, p := range append(checkPaths, "") {
			st, h, body := sendRaw(t, authzAddr, m, "/check"+p, map[string]string{"Host": "api.openai.com", "Authorization": "Bearer " + tok})
			if st != http.StatusOK || h.Get("Authorization") != "Bearer sk-paths" {
				t.Errorf("credinject %s /check%s: %d %v %q", m, p, st, h, body)
			}
			st, h, _ = sendRaw(t, authzAddr, m, "/check"+p, map[string]string{"Host": "api.openai.com"})
			if st != http.StatusUnauthorized || h.Get("X-Credinject-Reason") != "missing_token" {
				t.Errorf("credinject %s /check%s without a token: %d %v", m, p, st, h)
			}
		}
	}

	up := newEchoUpstream(t)
	gw, _ := startEnvoy(t, "http", authzAddr, up.srv.Listener.Addr().String())
	gwAddr := strings.TrimPrefix(gw, "http://")
	for _, p := range checkPaths {
		st, _, body := sendRaw(t, gwAddr, "GET", p, map[string]string{"Host": "api.openai.com", "Authorization": "Bearer " + tok})
		if st != http.StatusOK || !strings.Contains(body, "Bearer sk-paths") {
			t.Errorf("through Envoy GET %s: %d %.300s", p, st, body)
		}
		st, h, _ := sendRaw(t, gwAddr, "GET", p, map[string]string{"Host": "api.openai.com"})
		if st != http.StatusUnauthorized || h.Get("X-Credinject-Reason") != "missing_token" {
			t.Errorf("through Envoy GET %s without a token: %d %v", p, st, h)
		}
	}
}
