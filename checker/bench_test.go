package checker_test

import (
	"context"
	"fmt"
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
