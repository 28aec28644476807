package e2e_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// The hosts of TestCredentialShapes' routes.
const (
	s3Host         = "s3.shapes.test"
	s3UnsignedHost = "s3-unsigned.shapes.test"
	shapesHost     = "api.shapes.test"
	basicHost      = "basic.shapes.test"
)

// shapesRoutes: two S3 routes signing with the identity's AWS keys (the
// body's hash, UNSIGNED-PAYLOAD), one with headers, a query parameter and
// metadata, one with Basic auth.
func shapesRoutes() []config.Route {
	return []config.Route{
		{Hosts: []string{s3Host}, Path: "aws/{namespace}/{serviceaccount}",
			Inject: config.Inject{Sign: &config.Sign{Type: config.SignAWSSigV4, Service: "s3", Region: testenv.S3Region}}},
		{Hosts: []string{s3UnsignedHost}, Path: "aws/{namespace}/{serviceaccount}",
			Inject: config.Inject{Sign: &config.Sign{Type: config.SignAWSSigV4, Service: "s3", Region: testenv.S3Region, Payload: config.PayloadUnsigned}}},
		{Hosts: []string{shapesHost}, Path: "shapes/{namespace}/{serviceaccount}", Inject: config.Inject{
			Headers:  []config.NameValue{{Name: "X-Api-Key", Value: "{api_key}"}, {Name: "x-org", Value: "org-{org}"}},
			Query:    []config.NameValue{{Name: "key", Value: "{api_key}"}, {Name: "q", Value: "{qval}"}},
			Metadata: map[string]string{"upstream_key": "{api_key}"},
		}},
		{Hosts: []string{basicHost}, Path: "shapes/{namespace}/{serviceaccount}",
			Inject: config.Inject{Basic: &config.Basic{Username: "{user}", Password: "{password}"}}},
	}
}

// shapesIdentity is one workload of TestCredentialShapes: its token, its
// AWS account on the S3 gateway and its other secret.
type shapesIdentity struct {
	ns, sa, token string
	aws           testenv.S3Account
	apiKey        string
}

func newShapesIdentity(ctx context.Context, t *testing.T, env *testenv.Env, name string) shapesIdentity {
	t.Helper()
	ns, sa, token := boundIdentity(ctx, t, env, "e2e-shapes-"+name, "unused")
	id := shapesIdentity{ns: ns, sa: sa, token: token, apiKey: "ak-" + name + "-1",
		aws: testenv.S3Account{AccessKey: "AKIA" + strings.ToUpper(name) + "SHAPES", SecretKey: "secret/" + name + "+key"}}
	for path, data := range map[string]map[string]any{
		"aws/" + ns + "/" + sa: {"access_key": id.aws.AccessKey, "secret_key": id.aws.SecretKey},
		"shapes/" + ns + "/" + sa: {"api_key": id.apiKey, "org": name, "user": "svc-" + name, "password": "p:w " + name,
			"qval": "a&b=c d+e%41/é#f"}, // reserved characters stay one value
	} {
		if _, err := env.Vault.PutCredential(ctx, path, data); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// TestCredentialShapes: each injection shape end to end through the real
// Envoy (gRPC ext_authz with the body, deploy/envoy/envoy-grpc-body.yaml):
// S3 requests signed per workload and verified by a real S3 server
// (versitygw), headers, a query parameter, metadata read by the Lua filter,
// Basic auth; and /check for the shapes HTTP forward-auth carries.
func TestCredentialShapes(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, b := newShapesIdentity(ctx, t, env, "a"), newShapesIdentity(ctx, t, env, "b")
	s3 := env.S3(t, a.aws, b.aws)
	for _, id := range []shapesIdentity{a, b} {
		if err := s3.CreateBucket(ctx, id.aws, "bucket-"+id.ns); err != nil {
			t.Fatal(err)
		}
	}
	ci, _ := startCredinjectWith(t, func(c *config.Config) {
		// The gRPC-only shapes (sign, query, metadata) need /check off.
		c.Listen = config.Listen{GRPC: "127.0.0.1:0", Health: "127.0.0.1:0"}
		c.Routes = shapesRoutes()
	})
	if ci.HTTPAddr() != "" {
		t.Fatalf("listen.http \"\" still serves /check on %s", ci.HTTPAddr())
	}
	s3gw, _ := startEnvoyConfig(t, "deploy/envoy/envoy-grpc-body.yaml", ci.GRPCAddr(), s3.Addr(), nil)
	up := newEchoUpstream(t)
	gw, _ := startEnvoyConfig(t, "deploy/envoy/envoy-grpc-body.yaml", ci.GRPCAddr(), up.srv.Listener.Addr().String(), nil)
	client := &http.Client{Timeout: 20 * time.Second}

	// do sends one request through the S3 gateway as the workload id,
	// which holds no AWS credentials: only its ServiceAccount token.
	do := func(t *testing.T, id shapesIdentity, host, method, path string, body []byte) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, s3gw+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		req.Header.Set("Authorization", "Bearer "+id.token)
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("X-Amz-Meta-Owner", id.ns)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(got), resp.Header
	}
	// requestsOf is the S3 access log's requests on key.
	requestsOf := func(t *testing.T, key string) []testenv.S3Request {
		t.Helper()
		all, err := s3.Requests()
		if err != nil {
			t.Fatal(err)
		}
		var out []testenv.S3Request
		for _, r := range all {
			if r.Key == key {
				out = append(out, r)
			}
		}
		return out
	}

	t.Run("a workload without AWS keys PUTs and GETs through the gateway, signed with its own key", func(t *testing.T) {
		body := []byte("object of " + a.ns)
		if st, msg, _ := do(t, a, s3Host, "PUT", "/bucket-"+a.ns+"/a.txt", body); st != 200 {
			t.Fatalf("PUT: %d %s", st, msg)
		}
		st, got, _ := do(t, a, s3Host, "GET", "/bucket-"+a.ns+"/a.txt", nil)
		if st != 200 || got != string(body) {
			t.Fatalf("GET: %d %q, want 200 %q", st, got, body)
		}
		rs := requestsOf(t, "a.txt")
		if len(rs) != 2 || rs[0].AccessKey != a.aws.AccessKey || rs[0].Operation != "s3_PutObject" || rs[1].AccessKey != a.aws.AccessKey || rs[1].Status != 200 {
			t.Fatalf("S3 access log for a.txt: %+v, want a PUT and a GET signed by %s", rs, a.aws.AccessKey)
		}
	})

	t.Run("another identity's requests are signed with its own key", func(t *testing.T) {
		if st, msg, _ := do(t, b, s3Host, "PUT", "/bucket-"+b.ns+"/b.txt", []byte("object of b")); st != 200 {
			t.Fatalf("PUT to its own bucket: %d %s", st, msg)
		}
		// a's bucket refuses b's key: the request was not signed as a.
		st, msg, _ := do(t, b, s3Host, "PUT", "/bucket-"+a.ns+"/b-in-a.txt", []byte("intruder"))
		if st != http.StatusForbidden || testenv.S3ErrorCode(strings.NewReader(msg)) != "AccessDenied" {
			t.Fatalf("b's PUT into a's bucket: %d %s, want 403 AccessDenied", st, msg)
		}
		for key, want := range map[string]string{"b.txt": b.aws.AccessKey, "b-in-a.txt": b.aws.AccessKey} {
			if rs := requestsOf(t, key); len(rs) != 1 || rs[0].AccessKey != want {
				t.Fatalf("S3 access log for %s: %+v, want one request signed by %s", key, rs, want)
			}
		}
	})

	t.Run("a body larger than the gateway sends is refused, not signed wrongly", func(t *testing.T) {
		big := bytes.Repeat([]byte("x"), 100<<10) // over max_request_bytes (64 KiB)
		st, _, h := do(t, a, s3Host, "PUT", "/bucket-"+a.ns+"/big.bin", big)
		if st != http.StatusForbidden || h.Get("X-Credinject-Reason") != "unsignable_request" {
			t.Fatalf("%d %q, want 403 unsignable_request", st, h.Get("X-Credinject-Reason"))
		}
		if rs := requestsOf(t, "big.bin"); len(rs) != 0 {
			t.Fatalf("a refused request reached S3: %+v", rs)
		}
		// A route signing UNSIGNED-PAYLOAD takes it.
		if st, msg, _ := do(t, a, s3UnsignedHost, "PUT", "/bucket-"+a.ns+"/big.bin", big); st != 200 {
			t.Fatalf("unsigned payload: %d %s", st, msg)
		}
	})

	t.Run("a body changed after signing is rejected by S3", func(t *testing.T) {
		conn, err := grpc.NewClient(ci.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		body := []byte("signed body")
		path := "/bucket-" + a.ns + "/t.txt"
		// The CheckRequest Envoy sends with with_request_body.
		hs := map[string]string{":authority": s3Host, ":method": "PUT", ":path": path, "authorization": "Bearer " + a.token,
			"content-length": fmt.Sprint(len(body)), "x-envoy-auth-partial-body": "false"}
		resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Host: s3Host, Method: "PUT", Path: path, Headers: hs, RawBody: body, Protocol: "HTTP/1.1"}}}})
		if err != nil || resp.GetOkResponse() == nil {
			t.Fatalf("check: %v %v", err, resp)
		}
		send := func(payload []byte) (int, string) {
			req, err := http.NewRequestWithContext(ctx, "PUT", "http://"+s3.Addr()+path, bytes.NewReader(payload))
			if err != nil {
				t.Fatal(err)
			}
			req.Host = s3Host
			for _, h := range resp.GetOkResponse().GetHeaders() {
				req.Header.Set(h.GetHeader().GetKey(), h.GetHeader().GetValue())
			}
			r, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Body.Close()
			msg, _ := io.ReadAll(r.Body)
			return r.StatusCode, testenv.S3ErrorCode(bytes.NewReader(msg))
		}
		if st, code := send([]byte("signed bodx")); st < 400 || code != "XAmzContentSHA256Mismatch" {
			t.Fatalf("a tampered body: %d %s, want S3's XAmzContentSHA256Mismatch", st, code)
		}
		if st, code := send(body); st != 200 {
			t.Fatalf("the body signed: %d %s", st, code)
		}
	})

	t.Run("headers, a query parameter and metadata read by a later filter", func(t *testing.T) {
		r := call(t, client, "GET", gw+"/v1/models?limit=2", shapesHost, a.token, "", http.Header{"X-Upstream-Key": {"forged"}, "X-Org": {"clients-own"}})
		var got received
		if r.status != 200 || json.Unmarshal([]byte(r.body), &got) != nil {
			t.Fatalf("%d %s", r.status, r.body)
		}
		u, err := url.ParseRequestURI(got.Path)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"X-Api-Key": a.apiKey, "X-Org": "org-a", "X-Upstream-Key": a.apiKey}
		for k, v := range want {
			if vs := got.Header.Values(k); len(vs) != 1 || vs[0] != v {
				t.Errorf("upstream %s = %q, want exactly %q", k, vs, v)
			}
		}
		if q := u.Query(); q.Get("key") != a.apiKey || q.Get("limit") != "2" || q.Get("q") != "a&b=c d+e%41/é#f" || len(q) != 3 || u.Path != "/v1/models" {
			t.Errorf("upstream target %q, want /v1/models with limit=2, key=%s and q", got.Path, a.apiKey)
		}
		if v := got.Header.Values("Authorization"); len(v) != 0 {
			t.Errorf("the upstream got authorization %q", v)
		}
		noToken(t, "upstream", a.token, up.everything())
		// b's request carries b's values.
		r = call(t, client, "GET", gw+"/v1/models", shapesHost, b.token, "", nil)
		if json.Unmarshal([]byte(r.body), &got) != nil || got.Header.Get("X-Api-Key") != b.apiKey || got.Header.Get("X-Upstream-Key") != b.apiKey {
			t.Errorf("b's request: %d %v", r.status, got.Header)
		}
	})

	t.Run("Basic auth", func(t *testing.T) {
		r := call(t, client, "GET", gw+"/v1/models", basicHost, a.token, "", nil)
		var got received
		if r.status != 200 || json.Unmarshal([]byte(r.body), &got) != nil {
			t.Fatalf("%d %s", r.status, r.body)
		}
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte("svc-a:p:w a"))
		if v := got.Header.Values("Authorization"); len(v) != 1 || v[0] != want {
			t.Fatalf("upstream authorization %q, want [%s]", v, want)
		}
	})

	t.Run("/check answers the headers and Basic shapes", func(t *testing.T) {
		h, _ := startCredinjectWith(t, func(c *config.Config) {
			c.Routes = []config.Route{
				{Hosts: []string{shapesHost}, Path: "shapes/{namespace}/{serviceaccount}", Inject: config.Inject{
					Headers: []config.NameValue{{Name: "x-api-key", Value: "{api_key}"}, {Name: "x-org", Value: "org-{org}"}}}},
				{Hosts: []string{basicHost}, Path: "shapes/{namespace}/{serviceaccount}",
					Inject: config.Inject{Basic: &config.Basic{Username: "{user}", Password: "{password}"}}},
			}
		})
		ask := func(host string) *http.Response {
			req, err := http.NewRequestWithContext(ctx, "GET", "http://"+h.HTTPAddr()+"/check/v1/models", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = host
			req.Header.Set("Authorization", "Bearer "+a.token)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		r := ask(shapesHost)
		if r.StatusCode != 200 || r.Header.Get("X-Api-Key") != a.apiKey || r.Header.Get("X-Org") != "org-a" ||
			r.Header.Get("X-Envoy-Auth-Headers-To-Remove") != "authorization" {
			t.Errorf("headers over /check: %d %v", r.StatusCode, r.Header)
		}
		r = ask(basicHost)
		if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("svc-a:p:w a")); r.StatusCode != 200 || r.Header.Get("Authorization") != want ||
			r.Header.Get("X-Envoy-Auth-Headers-To-Remove") != "" {
			t.Errorf("basic over /check: %d %v", r.StatusCode, r.Header)
		}
	})
}
