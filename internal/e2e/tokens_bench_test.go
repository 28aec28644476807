package e2e_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// BenchmarkFirstCheck is the latency of a Check on a token-cache miss (a
// token never seen, its identity's credential cached) over gRPC on the bed,
// per token-validation mode, with the API server's TokenReviews per miss;
// "hit" repeats one token. Run with a fixed count (-benchtime=300x): each
// token is minted by TokenRequest before the timer starts.
func BenchmarkFirstCheck(b *testing.B) {
	env := testenv.Get(b)
	ctx := context.Background()
	for _, mode := range []string{"tokenreview", "jwks"} {
		cfg := apptest.Config(env)
		cfg.Events.NatsURL = ""
		cfg.Kubernetes.TokenValidation = mode
		srv := apptest.Start(b, env, cfg)
		ns, sa, tok := boundIdentity(ctx, b, env, "bench-"+mode, "sk-bench")
		want := "allow authorization=Bearer sk-bench"
		if got := srv.Check(b, tok, "h"); got != want {
			b.Fatalf("%s: %q", mode, got)
		}
		measure := func(b *testing.B, next func(i int) string) {
			lat := make([]time.Duration, 0, b.N)
			before, err := env.Kube.RequestCount(ctx, "tokenreviews")
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				t0 := time.Now()
				if got := srv.Check(b, next(i), "h"); got != want {
					b.Fatalf("%q", got)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			after, err := env.Kube.RequestCount(ctx, "tokenreviews")
			if err != nil {
				b.Fatal(err)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric((after-before)/float64(b.N), "tokenreviews/op")
		}
		b.Run(mode+"/miss", func(b *testing.B) {
			toks := make([]string, b.N)
			for i := range toks {
				var err error
				if toks[i], err = env.Kube.Token(ctx, ns, sa, nil, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			measure(b, func(i int) string { return toks[i] })
		})
		b.Run(mode+"/hit", func(b *testing.B) {
			measure(b, func(int) string { return tok })
		})
	}
}
