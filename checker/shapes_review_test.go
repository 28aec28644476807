package checker_test

import (
	"context"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/credinject/credinject/cache"
)

// putSigner stores ns/sa's signing entry for the default route.
func putSigner(tb testing.TB, r *rig, ns, sa string, k cache.SigV4) {
	tb.Helper()
	r.putEntry(tb, "", ns, sa, "", "", &cache.Shapes{Sign: &k})
}

// TestSignedWithOwnSecret: each request is signed with its identity's own
// secret key, whatever was signed before: another identity's credential
// with the same access key id (access key ids are not secret) or the
// identity's previous secret (a KV secret corrected in place) never signs
// it.
func TestSignedWithOwnSecret(t *testing.T) {
	r := newRig(t, nil, true)
	ctx := context.Background()
	a, b := sigKey, sigKey
	b.SecretKey = "a-secret-of-team-b-own-making"
	putSigner(t, r, "team-a", "app", a)
	putSigner(t, r, "team-b", "app", b)
	signed := func(ns string) string {
		resp, _ := r.g.Check(ctx, signedRequest("Bearer "+r.token(t, ns, "app"), "GET", "/b/k", nil, nil))
		set, _ := headersOf(resp)
		if set["authorization"] == "" {
			t.Fatalf("%s: not signed: %s", ns, outcome(resp))
		}
		return set["authorization"]
	}
	hdrs := func(sum string) map[string]string {
		return map[string]string{"host": "s3.example.com", "x-amz-content-sha256": sum, "x-amz-date": "20261126T120000Z"}
	}
	const empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	wantA := referenceSigV4(a, "GET", "/b/k", "", hdrs(empty), empty, "20261126T120000Z")
	wantB := referenceSigV4(b, "GET", "/b/k", "", hdrs(empty), empty, "20261126T120000Z")
	if got := signed("team-a"); got != wantA {
		t.Fatalf("team-a\n got %s\nwant %s", got, wantA)
	}
	if got := signed("team-b"); got != wantB {
		t.Errorf("team-b's request is not signed with team-b's secret (team-a's, cached by access key id?)\n got %s\nwant %s", got, wantB)
	}
	// team-a's secret corrected in place, same access key id.
	a2 := a
	a2.SecretKey = "the-corrected-secret"
	putSigner(t, r, "team-a", "app", a2)
	if got, want := signed("team-a"), referenceSigV4(a2, "GET", "/b/k", "", hdrs(empty), empty, "20261126T120000Z"); got != want {
		t.Errorf("after the secret changed, still signed with the old one\n got %s\nwant %s", got, want)
	}
}

// TestUnsignableQueryAndBody: a request part the signer would leave out
// of the signature is refused, never signed without it: a query pair Go's
// parser drops (a ';' separator, a bad %-escape: the upstream still
// receives it), and a body the gateway did not send although the request
// says "x-envoy-auth-partial-body: false" itself (the workload's header,
// passed on by a gateway without with_request_body).
func TestUnsignableQueryAndBody(t *testing.T) {
	r := newRig(t, nil, true)
	putSigner(t, r, "team-a", "app", sigKey)
	tok := "Bearer " + r.token(t, "team-a", "app")
	forged := func(method string, hs map[string]string) *authv3.CheckRequest {
		q := signedRequest(tok, method, "/b/k", hs, nil)
		q.Attributes.Request.Http.Headers["x-envoy-auth-partial-body"] = "false"
		return q
	}
	for name, q := range map[string]*authv3.CheckRequest{
		"';' in the query":                          signedRequest(tok, "GET", "/b?list-type=2&prefix=a;b", nil, nil),
		"bad escape in the query":                   signedRequest(tok, "GET", "/b?list-type=2&prefix=%zz", nil, nil),
		"forged whole body, chunked":                forged("PUT", map[string]string{"transfer-encoding": "chunked"}),
		"forged whole body, POST of unknown length": forged("POST", nil),
	} {
		t.Run(name, func(t *testing.T) {
			resp, _ := r.g.Check(context.Background(), q)
			if got := outcome(resp); got != "deny 403 unsignable_request" {
				set, _ := headersOf(resp)
				t.Errorf("%s (authorization %q), want deny 403 unsignable_request", got, set["authorization"])
			}
		})
	}
	// The real empty body Envoy sends is still signed.
	resp, _ := r.g.Check(context.Background(), forged("PUT", map[string]string{"content-length": "0"}))
	if set, _ := headersOf(resp); set["authorization"] == "" {
		t.Errorf("an empty PUT of content-length 0: %s", outcome(resp))
	}
}

// TestSignedHostWithPort: the host is signed as the upstream receives it,
// its port included, also :443 (the SDK's signer drops a default port
// from an https URL's host).
func TestSignedHostWithPort(t *testing.T) {
	r := newRig(t, nil, true)
	putSigner(t, r, "team-a", "app", sigKey)
	const empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for _, host := range []string{"s3.example.com:443", "s3.example.com:9000"} {
		q := signedRequest("Bearer "+r.token(t, "team-a", "app"), "GET", "/b/k", nil, nil)
		q.Attributes.Request.Http.Host = host
		q.Attributes.Request.Http.Headers[":authority"] = host
		resp, _ := r.g.Check(context.Background(), q)
		set, _ := headersOf(resp)
		want := referenceSigV4(sigKey, "GET", "/b/k", "", map[string]string{"host": host, "x-amz-content-sha256": empty, "x-amz-date": "20261126T120000Z"}, empty, "20261126T120000Z")
		if set["authorization"] != want {
			t.Errorf("host %s: %s\nwant authorization %s", host, outcome(resp), want)
		}
	}
}

// TestSignedRepeatedHeader: a header the request carries twice (Envoy's
// encode_raw_headers header_map lists each) is signed with both values,
// joined by ',' as the upstream canonicalises them, not with the last.
func TestSignedRepeatedHeader(t *testing.T) {
	r := newRig(t, nil, true)
	putSigner(t, r, "team-a", "app", sigKey)
	q := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Host: "s3.example.com", Method: "GET", Path: "/b/k", HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":authority", RawValue: []byte("s3.example.com")},
			{Key: "authorization", RawValue: []byte("Bearer " + r.token(t, "team-a", "app"))},
			{Key: "x-amz-meta-a", RawValue: []byte("1")}, {Key: "x-amz-meta-a", RawValue: []byte("2")}}}}}}}
	resp, _ := r.g.Check(context.Background(), q)
	set, _ := headersOf(resp)
	const empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	want := referenceSigV4(sigKey, "GET", "/b/k", "", map[string]string{"host": "s3.example.com", "x-amz-content-sha256": empty,
		"x-amz-date": "20261126T120000Z", "x-amz-meta-a": "1,2"}, empty, "20261126T120000Z")
	if set["authorization"] != want {
		t.Errorf("%s\nwant authorization %s", outcome(resp), want)
	}
}
