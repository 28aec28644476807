package checker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// BenchmarkCheck measures the hot path in-process: ext_authz Check on a token
// cache hit and a credential cache hit (no I/O), across identities.
func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("identities=%d", n), func(b *testing.B) {
			r := newRig(b, nil, true)
			reqs := make([]*authv3.CheckRequest, n)
			for i := range n {
				ns := fmt.Sprintf("ns-%d", i)
				r.put(b, "", ns, "sa", "authorization", fmt.Sprintf("Bearer key-%d", i))
				reqs[i] = request("Bearer "+r.token(b, ns, "sa"), "api.openai.com")
			}
			ctx := context.Background()
			// Warm the token cache; ristretto applies sets asynchronously,
			// so go over the set a few times.
			for range 3 {
				for _, q := range reqs {
					if _, err := r.g.Check(ctx, q); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					resp, _ := r.g.Check(ctx, reqs[i%n])
					if resp.GetOkResponse() == nil {
						b.Fatalf("not allowed: %v", outcome(resp))
					}
					i += 7919
				}
			})
		})
	}
}

// BenchmarkCheckHeaderCase: a headers map with "Authorization" capitalised
// (gRPC clients other than Envoy) takes the case-insensitive fallback; it
// must stay at 0 allocations like the lower-case path.
func BenchmarkCheckHeaderCase(b *testing.B) {
	for _, name := range []string{"authorization", "Authorization"} {
		b.Run("header="+name, func(b *testing.B) {
			r := newRig(b, nil, true)
			r.put(b, "", "ns", "sa", "authorization", "Bearer key")
			q := request("", "api.openai.com")
			q.Attributes.Request.Http.Headers[name] = "Bearer " + r.token(b, "ns", "sa")
			q.Attributes.Request.Http.Headers["user-agent"] = "bench"
			q.Attributes.Request.Http.Headers["x-request-id"] = "1"
			ctx := context.Background()
			for range 3 {
				if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
					b.Fatalf("not allowed: %v", outcome(resp))
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
					b.Fatalf("not allowed: %v", outcome(resp))
				}
			}
		})
	}
}

// BenchmarkCheckBySource: a cache hit costs the same whatever the
// credential's source, since the cache holds the rendered header whichever
// provider filled it. Values are shaped like each source's: a KV API key, a
// database user and password (vault-read), an OAuth2 access token, a Vault
// identity token (a JWT of about 900 bytes).
func BenchmarkCheckBySource(b *testing.B) {
	const n = 1_000
	jwt := "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9." + strings.Repeat("x", 700) + "." + strings.Repeat("s", 170)
	for _, src := range []struct{ name, header, value string }{
		{"kv", "authorization", "Bearer sk-test-openai-key-for-egress-%d"},
		{"vault-read", "x-db-credentials", "v-jwt-egress-a-Zb3k9QeXn1%d:A1a-9XkWq2LmNo3pQrSt"},
		{"oauth2-client-credentials", "authorization", "Bearer ory_at_BpPaGXD1ZZ8oHq5GVuG1xHpa9CMdpnnVocHK8un7Ecw.ZfBOe-UpWlaKutV22tyVvgv8MWMoAUJnktDL_8byx4Q%d"},
		{"vault-identity-token", "authorization", "Bearer " + jwt + "%d"},
	} {
		b.Run("source="+src.name, func(b *testing.B) {
			r := newRig(b, nil, true)
			reqs := make([]*authv3.CheckRequest, n)
			for i := range n {
				ns := fmt.Sprintf("ns-%d", i)
				r.put(b, "", ns, "sa", src.header, fmt.Sprintf(src.value, i))
				reqs[i] = request("Bearer "+r.token(b, ns, "sa"), "api.openai.com")
			}
			ctx := context.Background()
			for range 3 {
				for _, q := range reqs {
					if _, err := r.g.Check(ctx, q); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					resp, _ := r.g.Check(ctx, reqs[i%n])
					if resp.GetOkResponse() == nil {
						b.Fatalf("not allowed: %v", outcome(resp))
					}
					i += 7919
				}
			})
		})
	}
}
