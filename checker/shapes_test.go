package checker_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
)

// putShapes stores team-a/app's entry for the default route with shapes.
func putShapes(tb testing.TB, r *rig, header, value string, sh *cache.Shapes) {
	tb.Helper()
	r.putEntry(tb, "", "team-a", "app", header, value, sh)
}

// headersOf is the response's headers set, "name=value", and its removals.
func headersOf(resp *authv3.CheckResponse) (set map[string]string, removed []string) {
	set = map[string]string{}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		set[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return set, resp.GetOkResponse().GetHeadersToRemove()
}

// TestShapesAnswer: every shape of a cached entry reaches the gRPC answer:
// its headers overwrite, the workload's authorization is removed (none of
// them sets it), the query parameters and the metadata keys beside
// credinject's own.
func TestShapesAnswer(t *testing.T) {
	r := newRig(t, nil, true)
	putShapes(t, r, "x-api-key", "k-1", &cache.Shapes{
		Headers:  []cache.Field{{Name: "x-org", Value: "org-1"}},
		Query:    []cache.Field{{Name: "key", Value: "q-1"}},
		Metadata: []cache.Field{{Name: "upstream_key", Value: "m-1"}},
	})
	resp := check(t, r, "Bearer "+r.token(t, "team-a", "app"), "api.example.com")
	set, removed := headersOf(resp)
	if set["x-api-key"] != "k-1" || set["x-org"] != "org-1" || len(set) != 2 {
		t.Errorf("headers %v", set)
	}
	if !slices.Equal(removed, []string{"authorization"}) {
		t.Errorf("removed %v, want the workload's authorization", removed)
	}
	q := resp.GetOkResponse().GetQueryParametersToSet()
	if len(q) != 1 || q[0].GetKey() != "key" || q[0].GetValue() != "q-1" {
		t.Errorf("query %v", q)
	}
	md := resp.GetDynamicMetadata().AsMap()
	if md["upstream_key"] != "m-1" || md["namespace"] != "team-a" || md["serviceaccount"] != "app" {
		t.Errorf("metadata %v", md)
	}
	// Another identity's answer holds its own values only.
	putShapes(t, r, "", "", &cache.Shapes{Headers: []cache.Field{{Name: "authorization", Value: "Basic dTpw"}}})
	set, removed = headersOf(check(t, r, "Bearer "+r.token(t, "team-a", "app"), "api.example.com"))
	if set["authorization"] != "Basic dTpw" || len(removed) != 0 {
		t.Errorf("an injection that sets authorization: headers %v, removed %v", set, removed)
	}
}

// TestShapesOverHTTP: /check answers the headers of every shape; a route
// that signs, or sets query parameters or metadata, which forward-auth
// cannot carry, is denied, never answered without them.
func TestShapesOverHTTP(t *testing.T) {
	r := newRig(t, nil, true)
	h := checker.NewHTTP(r.c)
	tok := "Bearer " + r.token(t, "team-a", "app")
	ask := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/check", nil)
		req.Host = "api.example.com"
		req.Header.Set("Authorization", tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	putShapes(t, r, "x-api-key", "k-1", &cache.Shapes{Headers: []cache.Field{{Name: "x-org", Value: "org-1"}}})
	w := ask()
	if w.Code != 200 || w.Header().Get("X-Api-Key") != "k-1" || w.Header().Get("X-Org") != "org-1" ||
		w.Header().Get("X-Envoy-Auth-Headers-To-Remove") != "authorization" {
		t.Errorf("headers: %d %v", w.Code, w.Header())
	}
	for name, sh := range map[string]*cache.Shapes{
		"sign":     {Sign: &cache.SigV4{AccessKey: "AKID", SecretKey: "s", Service: "s3", Region: "us-east-1"}},
		"query":    {Query: []cache.Field{{Name: "key", Value: "q"}}},
		"metadata": {Metadata: []cache.Field{{Name: "k", Value: "m"}}},
	} {
		putShapes(t, r, "", "", sh)
		w := ask()
		want := map[string]string{"sign": "unsignable_request"}[name]
		if want == "" {
			want = "internal"
		}
		if w.Code == 200 || w.Header().Get("X-Credinject-Reason") != want {
			t.Errorf("%s over /check: %d %q, want a deny %s", name, w.Code, w.Header().Get("X-Credinject-Reason"), want)
		}
	}
}

// sigKey is the signing credential of the tests (AWS's documented example
// key pair).
var sigKey = cache.SigV4{AccessKey: "AKIDEXAMPLE", SecretKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", Service: "s3", Region: "us-east-1"}

// signedRequest is a CheckRequest for method target on s3.example.com
// with headers and, when body is not nil, the body as Envoy's
// with_request_body sends it (pack_as_bytes).
func signedRequest(tok, method, target string, headers map[string]string, body []byte) *authv3.CheckRequest {
	q := request(tok, "s3.example.com")
	h := q.Attributes.Request.Http
	h.Method, h.Path = method, target
	h.Headers[":method"], h.Headers[":path"] = method, target
	for k, v := range headers {
		h.Headers[k] = v
	}
	if body != nil {
		h.RawBody = body
		h.Headers["x-envoy-auth-partial-body"] = "false"
	}
	return q
}

// TestSignedAnswer: a signing route answers the request's SigV4 headers,
// computed over what the upstream receives; the signature is checked
// against an independent implementation of the algorithm (AWS's
// documentation: canonical request, string to sign, derived key).
func TestSignedAnswer(t *testing.T) {
	r := newRig(t, nil, true)
	k := sigKey
	putShapes(t, r, "", "", &cache.Shapes{Sign: &k})
	tok := "Bearer " + r.token(t, "team-a", "app")
	body := []byte("hello, bucket")
	hdrs := map[string]string{"content-type": "text/plain", "x-amz-meta-owner": "team-a", "user-agent": "curl/8",
		"content-length": fmt.Sprint(len(body)),
		// The workload's own are never the signed ones.
		"x-amz-date": "19990101T000000Z", "x-amz-security-token": "workload-token", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
	resp, _ := r.g.Check(context.Background(), signedRequest(tok, "PUT", "/bucket/dir/a%20b.txt?x-id=PutObject&acl", hdrs, body))
	set, removed := headersOf(resp)
	sum := sha256.Sum256(body)
	if set["x-amz-content-sha256"] != hex.EncodeToString(sum[:]) {
		t.Fatalf("x-amz-content-sha256 %q, want the body's hash (%s)", set["x-amz-content-sha256"], outcome(resp))
	}
	if set["x-amz-date"] != "20261126T120000Z" {
		t.Errorf("x-amz-date %q, want the clock's", set["x-amz-date"])
	}
	if !slices.Equal(removed, []string{"x-amz-security-token"}) {
		t.Errorf("removed %v, want the workload's x-amz-security-token only (the signature is the authorization)", removed)
	}
	signed := map[string]string{"host": "s3.example.com", "content-type": "text/plain", "x-amz-meta-owner": "team-a",
		"x-amz-content-sha256": set["x-amz-content-sha256"], "x-amz-date": "20261126T120000Z"}
	want := referenceSigV4(k, "PUT", "/bucket/dir/a%20b.txt", "acl=&x-id=PutObject", signed, set["x-amz-content-sha256"], "20261126T120000Z")
	if set["authorization"] != want {
		t.Errorf("authorization\n got %s\nwant %s", set["authorization"], want)
	}

	// The same request with another body is signed differently.
	resp2, _ := r.g.Check(context.Background(), signedRequest(tok, "PUT", "/bucket/dir/a%20b.txt?x-id=PutObject&acl", hdrs, []byte("hello, bucker")))
	if set2, _ := headersOf(resp2); set2["authorization"] == set["authorization"] || set2["authorization"] == "" {
		t.Errorf("a changed body kept its signature, or was not signed: %s", outcome(resp2))
	}
}

// TestSignedSessionToken: temporary credentials add x-amz-security-token,
// signed, and remove nothing.
func TestSignedSessionToken(t *testing.T) {
	r := newRig(t, nil, true)
	k := sigKey
	k.SessionToken, k.Service = "FwoGZXIvYXdzEBYaDH", "bedrock"
	putShapes(t, r, "", "", &cache.Shapes{Sign: &k})
	resp, _ := r.g.Check(context.Background(), signedRequest("Bearer "+r.token(t, "team-a", "app"), "GET", "/foundation-models", nil, nil))
	set, removed := headersOf(resp)
	if set["x-amz-security-token"] != k.SessionToken || len(removed) != 0 {
		t.Fatalf("headers %v removed %v", set, removed)
	}
	if !strings.Contains(set["authorization"], "/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,") {
		t.Errorf("authorization %q does not sign the session token in bedrock's scope", set["authorization"])
	}
	signed := map[string]string{"host": "s3.example.com", "x-amz-content-sha256": set["x-amz-content-sha256"], "x-amz-date": "20261126T120000Z",
		"x-amz-security-token": k.SessionToken}
	// bedrock is not s3: its canonical URI is escaped once more (here the
	// same, no reserved characters).
	if want := referenceSigV4(k, "GET", "/foundation-models", "", signed, set["x-amz-content-sha256"], "20261126T120000Z"); set["authorization"] != want {
		t.Errorf("authorization\n got %s\nwant %s", set["authorization"], want)
	}
}

// TestUnsignableRequests: what the signature cannot cover is refused with
// unsignable_request, never signed wrongly; what it can is signed.
func TestUnsignableRequests(t *testing.T) {
	r := newRig(t, nil, true)
	k := sigKey
	putShapes(t, r, "", "", &cache.Shapes{Sign: &k})
	tok := "Bearer " + r.token(t, "team-a", "app")
	empty := sha256.Sum256(nil)
	cases := map[string]struct {
		q    *authv3.CheckRequest
		hash string // "" : refused
	}{
		"body cut at max_request_bytes": {q: func() *authv3.CheckRequest {
			q := signedRequest(tok, "PUT", "/b/k", map[string]string{"content-length": "70000"}, make([]byte, 65536))
			q.Attributes.Request.Http.Headers["x-envoy-auth-partial-body"] = "true"
			return q
		}()},
		"body not sent":                    {q: signedRequest(tok, "PUT", "/b/k", map[string]string{"content-length": "5"}, nil)},
		"chunked body not sent":            {q: signedRequest(tok, "POST", "/b/k", map[string]string{"transfer-encoding": "chunked"}, nil)},
		"PUT of unknown length, no body":   {q: signedRequest(tok, "PUT", "/b/k", nil, nil)},
		"body shorter than content-length": {q: signedRequest(tok, "PUT", "/b/k", map[string]string{"content-length": "9"}, []byte("12345"))},
		"absolute-form target":             {q: signedRequest(tok, "GET", "http://s3.example.com/b/k", nil, nil)},
		"GET without body":                 {q: signedRequest(tok, "GET", "/b/k", nil, nil), hash: hex.EncodeToString(empty[:])},
		"DELETE with content-length 0":     {q: signedRequest(tok, "DELETE", "/b/k", map[string]string{"content-length": "0"}, nil), hash: hex.EncodeToString(empty[:])},
		"whole body of its content-length": {q: signedRequest(tok, "PUT", "/b/k", map[string]string{"content-length": "5"}, []byte("12345")), hash: "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			resp, _ := r.g.Check(context.Background(), tc.q)
			got := outcome(resp)
			if tc.hash == "" {
				if got != "deny 403 unsignable_request" {
					t.Fatalf("%s, want deny 403 unsignable_request", got)
				}
				return
			}
			if set, _ := headersOf(resp); set["x-amz-content-sha256"] != tc.hash {
				t.Fatalf("%s: hash %q, want %q", got, set["x-amz-content-sha256"], tc.hash)
			}
		})
	}
	// UNSIGNED-PAYLOAD needs no body.
	k.UnsignedPayload = true
	putShapes(t, r, "", "", &cache.Shapes{Sign: &k})
	resp, _ := r.g.Check(context.Background(), signedRequest(tok, "PUT", "/b/k", map[string]string{"content-length": "5"}, nil))
	if set, _ := headersOf(resp); set["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD" || set["authorization"] == "" {
		t.Errorf("unsigned payload: %s", outcome(resp))
	}
}

// referenceSigV4 is AWS Signature Version 4 written from its
// documentation, independently of the SDK: the Authorization value for a
// request with the path already escaped (S3: as sent), the canonical query
// and the signed headers (lower-case names).
func referenceSigV4(k cache.SigV4, method, path, query string, headers map[string]string, payloadHash, amzDate string) string {
	names := make([]string, 0, len(headers))
	for n := range headers {
		names = append(names, n)
	}
	sort.Strings(names)
	var canon strings.Builder
	for _, n := range names {
		canon.WriteString(n + ":" + strings.TrimSpace(headers[n]) + "\n")
	}
	signedHeaders := strings.Join(names, ";")
	creq := strings.Join([]string{method, path, query, canon.String(), signedHeaders, payloadHash}, "\n")
	h := sha256.Sum256([]byte(creq))
	scope := amzDate[:8] + "/" + k.Region + "/" + k.Service + "/aws4_request"
	sts := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(h[:])
	mac := func(key []byte, s string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(s))
		return m.Sum(nil)
	}
	key := mac(mac(mac(mac([]byte("AWS4"+k.SecretKey), amzDate[:8]), k.Region), k.Service), "aws4_request")
	return "AWS4-HMAC-SHA256 Credential=" + k.AccessKey + "/" + scope + ", SignedHeaders=" + signedHeaders + ", Signature=" + hex.EncodeToString(mac(key, sts))
}

// benchCheckSigned is BenchmarkCheck's hit on a route that signs
// (inject.sign, s3): the per-request SigV4 over a PUT whose body the gateway
// sends (1 KiB and 64 KiB, hashed), and over UNSIGNED-PAYLOAD.
func benchCheckSigned(b *testing.B) {
	for _, c := range []struct {
		name     string
		size     int
		unsigned bool
	}{{"body=1KiB", 1 << 10, false}, {"body=64KiB", 64 << 10, false}, {"unsigned-payload", 64 << 10, true}} {
		b.Run("sign/"+c.name, func(b *testing.B) {
			r := newRig(b, nil, true)
			k := sigKey
			k.UnsignedPayload = c.unsigned
			putShapes(b, r, "", "", &cache.Shapes{Sign: &k})
			body := make([]byte, c.size)
			q := signedRequest("Bearer "+r.token(b, "team-a", "app"), "PUT", "/bucket/object.bin", map[string]string{
				"content-length": fmt.Sprint(c.size), "content-type": "application/octet-stream"}, body)
			ctx := context.Background()
			if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
				b.Fatalf("not allowed: %s", outcome(resp))
			}
			b.ReportAllocs()
			if !c.unsigned {
				b.SetBytes(int64(c.size)) // hashed
			}
			for b.Loop() {
				if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
					b.Fatalf("not allowed: %s", outcome(resp))
				}
			}
		})
	}
}
