package checker_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/credinject/credinject/checker"
)

// The three ways a real gateway phrases a request that a hand-written client
// does not: any method on /check/<path>, header names in any case, host names
// in any form. Each is a kind, tested as a table.

func TestHTTPAnyMethod(t *testing.T) {
	r := newRig(t, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, true)
	r.put(t, "", "team-a", "app", "authorization", "Bearer sk-a")
	r.put(t, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	tok := "Bearer " + r.token(t, "team-a", "app")
	h := checker.NewHTTP(r.c)
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"}
	paths := []string{"/check", "/check/v1/files/file-123", "/check/v1/files/file-123?version=2"}
	for _, m := range methods {
		for _, p := range paths {
			t.Run(m+" "+p, func(t *testing.T) {
				// Envoy's HTTP mode: the original method and path, the
				// original Host, a body it does not forward.
				req := httptest.NewRequest(m, p, strings.NewReader("not for the authorizer"))
				req.Host = "api.openai.com"
				req.Header.Set("Authorization", tok)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK || w.Header().Get("Authorization") != "Bearer sk-a" {
					t.Fatalf("allow: %d %v", w.Code, w.Header())
				}
				req = httptest.NewRequest(m, p, nil)
				req.Host = "API.Anthropic.com.:443"
				req.Header.Set("Authorization", tok)
				w = httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK || w.Header().Get("X-Api-Key") != "ak-a" || w.Header().Get("X-Envoy-Auth-Headers-To-Remove") != "authorization" {
					t.Fatalf("routed allow: %d %v", w.Code, w.Header())
				}
				req = httptest.NewRequest(m, p, nil)
				w = httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusUnauthorized || w.Header().Get("X-Credinject-Reason") != "missing_token" || w.Header().Get("Www-Authenticate") != "Bearer" {
					t.Fatalf("deny: %d %v", w.Code, w.Header())
				}
			})
		}
	}
}

func TestGRPCHeaderNamesAnyCase(t *testing.T) {
	r := newRig(t, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, true)
	r.put(t, "", "team-a", "app", "authorization", "Bearer sk-a")
	r.put(t, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	tok := "Bearer " + r.token(t, "team-a", "app")
	headersReq := func(host string, hs map[string]string) *authv3.CheckRequest {
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Host: host, Method: "GET", Path: "/", Headers: hs},
		}}}
	}
	rawReq := func(host string, kv ...string) *authv3.CheckRequest {
		m := &corev3.HeaderMap{}
		for i := 0; i < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Host: host, Method: "GET", Path: "/", HeaderMap: m},
		}}}
	}
	cases := map[string]struct {
		req  *authv3.CheckRequest
		want string
	}{
		"lower case":                 {headersReq("api.openai.com", map[string]string{"authorization": tok}), "allow authorization=Bearer sk-a"},
		"capitalised":                {headersReq("api.openai.com", map[string]string{"Authorization": tok}), "allow authorization=Bearer sk-a"},
		"upper case":                 {headersReq("api.openai.com", map[string]string{"AUTHORIZATION": tok}), "allow authorization=Bearer sk-a"},
		"authority only, any case":   {headersReq("", map[string]string{"Authorization": tok, ":Authority": "api.anthropic.com"}), "allow x-api-key=ak-a"},
		"other headers only":         {headersReq("api.openai.com", map[string]string{"X-Authorization": tok}), "deny 401 missing_token www=Bearer"},
		"raw header map":             {rawReq("api.openai.com", "authorization", tok), "allow authorization=Bearer sk-a"},
		"raw header map capitalised": {rawReq("", "Authorization", tok, ":authority", "api.anthropic.com"), "allow x-api-key=ak-a"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			resp, err := r.g.Check(context.Background(), c.req)
			if err != nil {
				t.Fatal(err)
			}
			if got := outcome(resp); got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestDecisionsByHostForm: the route is the same whatever form the host
// takes on the way in, through gRPC and through /check.
func TestDecisionsByHostForm(t *testing.T) {
	r := newRig(t, []checker.Route{
		{Name: "anthropic", Hosts: []string{"api.anthropic.com", "*.anthropic.com"}},
		{Name: "local", Hosts: []string{"::1", "127.0.0.1"}},
	}, false)
	r.put(t, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	r.put(t, "local", "team-a", "app", "authorization", "Bearer local")
	tok := "Bearer " + r.token(t, "team-a", "app")
	h := checker.NewHTTP(r.c)
	cases := map[string]string{
		"api.anthropic.com":       "allow x-api-key=ak-a",
		"API.ANTHROPIC.COM":       "allow x-api-key=ak-a",
		"api.anthropic.com.":      "allow x-api-key=ak-a",
		"Api.Anthropic.Com.:8443": "allow x-api-key=ak-a",
		"eu.anthropic.com.":       "allow x-api-key=ak-a",
		"[::1]:8080":              "allow authorization=Bearer local",
		"[::1]":                   "allow authorization=Bearer local",
		"::1":                     "allow authorization=Bearer local",
		"127.0.0.1:80":            "allow authorization=Bearer local",
		"api.anthropic.com..":     "deny 403 no_route",
		"evilanthropic.com.":      "deny 403 no_route",
		"[::2]:8080":              "deny 403 no_route",
	}
	for host, want := range cases {
		t.Run(host, func(t *testing.T) {
			if got := outcome(check(t, r, tok, host)); got != want {
				t.Fatalf("gRPC: got %q, want %q", got, want)
			}
			req := httptest.NewRequest("GET", "/check", nil)
			req.Host = host
			req.Header.Set("Authorization", tok)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			got := fmt.Sprintf("deny %d %s", w.Code, w.Header().Get("X-Credinject-Reason"))
			if w.Code == http.StatusOK {
				got = "allow"
			}
			if !strings.HasPrefix(want, got) {
				t.Fatalf("/check: %d %q, want %q", w.Code, got, want)
			}
		})
	}
}
