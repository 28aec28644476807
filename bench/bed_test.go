package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.All) }

// TestTargetsOnBed runs the real targets on the bed with a bound identity
// set and one identity whose namespace the Vault role does not bind: both
// credinject and the reference must inject each identity's own key and deny
// the unbound one, each with its own reason.
func TestTargetsOnBed(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids, err := CreateIdentities(ctx, env, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	ns, sa, tok, err := env.Kube.Identity(ctx, "bench-unbound")
	if err != nil {
		t.Fatal(err)
	}
	unbound := Identity{Namespace: ns, ServiceAccount: sa, Token: tok, APIKey: "sk-unbound"}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+unbound.Key(), map[string]any{"api_key": unbound.APIKey}); err != nil {
		t.Fatal(err)
	}

	ci, err := StartCredinject(ctx, env, CredinjectConfig(env), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := ci.Stop(); err != nil {
			t.Error(err)
		}
	}()
	ref, err := NewReference(ReferenceConfig{
		RestConfig: env.Kube.RestConfig(), Audiences: []string{testenv.Audience},
		VaultAddr: env.Vault.Addr, Role: testenv.VaultRole,
	})
	if err != nil {
		t.Fatal(err)
	}
	refSrv, err := Serve(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer refSrv.Stop()

	for name, tc := range map[string]struct {
		addr, deny string
	}{
		TargetCredinject: {ci.Addr(), "403/vault_denied"},
		TargetReference:  {refSrv.Addr, "403/" + refUnauthorized},
	} {
		t.Run(name, func(t *testing.T) {
			conns, err := Dial(ctx, tc.addr, 1)
			if err != nil {
				t.Fatal(err)
			}
			defer conns.Close()
			target := &Target{Name: name, Client: conns}
			if err := Warm(ctx, target, ids, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			all := append(append([]Identity{}, ids...), unbound)
			// 10 requests, round robin over 5 identities: 2 for the unbound one.
			r, err := RunOpen(ctx, target, NewRequests(all), Open{Rate: 50, Duration: 200 * time.Millisecond, Timeout: 10 * time.Second, MaxInFlight: 4}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.OK != 8 || r.Errors[tc.deny] != 2 || len(r.Errors) != 1 {
				t.Fatalf("ok %d, errors %v; want 8 correct allows and 2 × %s", r.OK, r.Errors, tc.deny)
			}
		})
	}
}

var (
	benchIDsOnce sync.Once
	benchIDs     []Identity
	benchIDsErr  error
)

// benchIdentities creates the benchmark's 100 identities once per binary.
func benchIdentities(b *testing.B, env *testenv.Env) []Identity {
	benchIDsOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		benchIDs, benchIDsErr = CreateIdentities(ctx, env, 100, 10)
	})
	if benchIDsErr != nil {
		b.Fatal(benchIDsErr)
	}
	return benchIDs
}

// BenchmarkCheckGRPC measures one ext_authz Check through a real gRPC
// client over loopback: credinject (internal/app on the bed, tokenreview
// mode, warmed: the cache-first path) and, as the floor, the noop server.
// identities × goroutines (GOMAXPROCS × parallelism); every answer is
// checked against the identity's own key.
func BenchmarkCheckGRPC(b *testing.B) {
	env := testenv.Get(b)
	ids := benchIdentities(b, env)
	ctx := context.Background()
	ci, err := StartCredinject(ctx, env, CredinjectConfig(env), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ci.Stop()
	noop, err := Serve(NewNoop())
	if err != nil {
		b.Fatal(err)
	}
	defer noop.Stop()

	for _, tgt := range []struct {
		name, addr string
		want       func(*Identity) string
	}{
		{TargetNoop, noop.Addr, func(*Identity) string { return NoopValue }},
		{TargetCredinject, ci.Addr(), nil},
	} {
		conns, err := Dial(ctx, tgt.addr, 1)
		if err != nil {
			b.Fatal(err)
		}
		defer conns.Close()
		target := &Target{Name: tgt.name, Client: conns, Want: tgt.want}
		for _, n := range []int{1, 100} {
			for _, par := range []int{1, 8} {
				b.Run(fmt.Sprintf("target=%s/identities=%d/parallelism=%d", tgt.name, n, par), func(b *testing.B) {
					set := ids[:n]
					if err := Warm(ctx, target, set, time.Minute); err != nil {
						b.Fatal(err)
					}
					var seq atomic.Uint64
					var wrong atomic.Int64
					b.SetParallelism(par)
					b.ReportAllocs()
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							i := seq.Add(1)
							id := &set[i%uint64(n)]
							resp, err := target.Client.Check(ctx, NewCheckRequest(id, i))
							if Classify(resp, err, target.want(id)) != "" {
								wrong.Add(1)
							}
						}
					})
					b.StopTimer()
					if w := wrong.Load(); w > 0 {
						b.Fatalf("%d of %d answers were not a correct allow", w, b.N)
					}
				})
			}
		}
	}
}
