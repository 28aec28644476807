package checker_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/credinject/credinject/cache"
)

// FuzzSign drives a signing route's Check with any method, target, host,
// body, content-length and whole-body mark. Every answer is an allow or
// 403 unsignable_request, never a panic; an allow carries the signature
// headers and, for a body the gateway sent whole, its own SHA-256; the
// secret key never appears in the answer.
func FuzzSign(f *testing.F) {
	r := newRig(f, nil, true)
	k := sigKey
	putShapes(f, r, "", "", &cache.Shapes{Sign: &k})
	tok := "Bearer " + r.token(f, "team-a", "app")
	ctx := context.Background()
	for _, s := range []struct {
		method, target, host, length, mark string
		body                               []byte
	}{
		{"PUT", "/b/k", "s3.example.com", "5", "false", []byte("12345")},
		{"GET", "/b/k?list-type=2&prefix=a", "s3.example.com:443", "", "", nil},
		{"POST", "/b/k?a;b", "s3.example.com", "", "true", []byte("x")},
		{"DELETE", "*", "", "0", "", nil},
		{"get", "//b/%2F/../k", "[::1]:9000", "-1", "false", nil},
	} {
		f.Add(s.method, s.target, s.host, s.length, s.mark, s.body)
	}
	f.Fuzz(func(t *testing.T, method, target, host, length, mark string, body []byte) {
		hs := map[string]string{}
		if length != "" {
			hs["content-length"] = length
		}
		q := signedRequest(tok, method, target, hs, nil)
		h := q.Attributes.Request.Http
		h.Host = host
		h.Headers[":authority"] = host
		if mark != "" {
			h.Headers["x-envoy-auth-partial-body"] = mark
			h.RawBody = body
		}
		resp, err := r.g.Check(ctx, q)
		if err != nil {
			t.Fatalf("Check returned an error: %v", err)
		}
		got := outcome(resp)
		if strings.Contains(got, k.SecretKey) {
			t.Fatalf("the secret key is in the answer: %s", got)
		}
		if resp.GetOkResponse() == nil {
			if got != "deny 403 unsignable_request" {
				t.Fatalf("%s, want an allow or 403 unsignable_request", got)
			}
			return
		}
		set, _ := headersOf(resp)
		if !strings.HasPrefix(set["authorization"], "AWS4-HMAC-SHA256 Credential="+k.AccessKey+"/") || set["x-amz-date"] == "" {
			t.Fatalf("an allow without a signature: %s", got)
		}
		if mark == "false" && len(body) > 0 {
			sum := sha256.Sum256(body)
			if set["x-amz-content-sha256"] != hex.EncodeToString(sum[:]) {
				t.Fatalf("signed hash %s is not the body's", set["x-amz-content-sha256"])
			}
			if n, err := strconv.Atoi(length); length != "" && (err != nil || n != len(body)) {
				t.Fatalf("signed a %d-byte body said to be %q long", len(body), length)
			}
		}
		if _, err := url.ParseRequestURI(target); err != nil {
			t.Fatalf("signed an unparsable target %q", target)
		}
	})
}
