package checker_test

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/checker"
)

// FuzzServeHTTP drives /check with any method, path, Host, forwarded host
// and Authorization value, read from the wire as net/http's server reads
// them. Every answer is a decision of the closed set with its status and
// headers; an allow is only ever given to the rig's one valid token, on a
// host that the route's patterns fit, with that route's credential; the
// token never appears in the answer.
func FuzzServeHTTP(f *testing.F) {
	routes := []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com", "*.anthropic.com"}}}
	r := newRig(f, routes, false)
	r.put(f, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	tok := r.token(f, "team-a", "app")
	h := checker.NewHTTP(r.c)
	for _, s := range []struct {
		method, path, host, fwd, orig, auth string
		valid                               uint8
	}{
		{"GET", "/check", "api.anthropic.com", "", "", "", 1},
		{"POST", "/check/v1/messages?x=1", "api.openai.com", "eu.anthropic.com", "", "", 1},
		{"PATCH", "/check/v1", "api.openai.com", "", "EU.anthropic.com.", "", 1},
		{"PUT", "/check", "API.ANTHROPIC.COM.:443", "", "", "", 2},
		{"DELETE", "/check/x", "x.anthropic.com:443@evil.example", "", "", "", 1},
		{"GET", "/check", "api.anthropic.com", "", "", "Bearer a.b.c", 0},
		{"GET", "/check", "api.anthropic.com", "", "", "Basic YTpi", 0},
		{"PROPFIND", "*", "", "", "", "bearer  ", 0},
		{"GET", "/check", "api.anthropic.com", "evil.example", "", "", 1},
		{"GET", "/check", "api.anthropic.com\r\nX-Forwarded-Host: evil.example", "", "", "", 1},
	} {
		f.Add(s.method, s.path, s.host, s.fwd, s.orig, s.auth, s.valid)
	}
	f.Fuzz(func(t *testing.T, method, path, host, fwd, orig, auth string, valid uint8) {
		switch valid % 3 {
		case 1:
			auth = "Bearer " + tok
		case 2:
			auth = "bearer   " + tok + auth
		}
		var raw strings.Builder
		raw.WriteString(method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\n")
		if fwd != "" {
			raw.WriteString("X-Forwarded-Host: " + fwd + "\r\n")
		}
		if orig != "" {
			raw.WriteString("X-Original-Host: " + orig + "\r\n")
		}
		if auth != "" {
			raw.WriteString("Authorization: " + auth + "\r\n")
		}
		raw.WriteString("\r\n")
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw.String())))
		if err != nil {
			return // net/http's server answers 400 itself
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		res := w.Result()
		if res.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("answer without Cache-Control: no-store: %v", res.Header)
		}
		body := w.Body.String()
		if len(body) > 64 {
			t.Fatalf("a %d-byte answer", len(body))
		}
		for k, vs := range res.Header {
			for _, v := range vs {
				if strings.Contains(v, tok) || strings.Contains(k, tok) {
					t.Fatalf("the token is in the answer's %s header", k)
				}
			}
		}
		if strings.Contains(body, tok) {
			t.Fatal("the token is in the answer's body")
		}
		reason := authz.Reason(res.Header.Get(checker.HeaderReason))
		if res.StatusCode != http.StatusOK {
			if reason == authz.ReasonNone || !reason.Known() || reason.Status() != res.StatusCode {
				t.Fatalf("status %d with reason %q", res.StatusCode, reason)
			}
			if (res.StatusCode == http.StatusUnauthorized) != (res.Header.Get("Www-Authenticate") == "Bearer") {
				t.Fatalf("status %d with WWW-Authenticate %q", res.StatusCode, res.Header.Get("Www-Authenticate"))
			}
			if body != strconv.Itoa(res.StatusCode)+" "+string(reason)+"\n" || res.Header.Get("X-Api-Key") != "" {
				t.Fatalf("deny %d with body %q and headers %v", res.StatusCode, body, res.Header)
			}
			return
		}
		// An allow: the valid token (which the fuzzer cannot know: the
		// rig's key is fresh), a host of the route, its credential.
		if valid%3 == 0 {
			t.Fatalf("allowed the fuzzer's own Authorization %q", req.Header.Get("Authorization"))
		}
		// NewHTTP trusts no caller: forwarded headers never choose the
		// route, the request's own Host does.
		effective := req.Host
		if !hostFits(effective, routes[0].Hosts) {
			t.Fatalf("allowed host %q (Host %q, X-Forwarded-Host %q), which fits none of %q", effective, req.Host, fwd, routes[0].Hosts)
		}
		if reason != "" || res.Header.Get("X-Api-Key") != "ak-a" || res.Header.Get("X-Envoy-Auth-Headers-To-Remove") != "authorization" ||
			res.Header.Get("X-Credinject-Namespace") != "team-a" || res.Header.Get("X-Credinject-Serviceaccount") != "app" {
			t.Fatalf("allow with headers %v", res.Header)
		}
	})
}

// hostFits reports whether host (an :authority, in any case, with an
// optional numeric port and one trailing dot) is one of the exact names or
// has one or more DNS labels before a "*." suffix.
func hostFits(host string, patterns []string) bool {
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		if strings.Trim(host[i+1:], "0123456789") != "" {
			return false
		}
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	for _, c := range []byte(host) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	if host == "" || strings.Contains(host, "..") || host[0] == '.' {
		return false
	}
	host = strings.ToLower(host)
	for _, p := range patterns {
		if suf, ok := strings.CutPrefix(p, "*"); ok {
			if strings.HasSuffix(host, suf) && len(host) > len(suf) {
				return true
			}
		} else if host == p {
			return true
		}
	}
	return false
}
