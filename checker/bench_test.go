package checker_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	jose "github.com/go-jose/go-jose/v4"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	metadatafake "k8s.io/client-go/metadata/fake"

	"github.com/credinject/credinject/audit"
	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/satoken"
	"github.com/credinject/credinject/kube"
)

// BenchmarkCheck measures the hot path in-process: ext_authz Check on a token
// cache hit and a credential cache hit (no I/O), across identities; and on
// a route that signs each request (sign/…).
func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("identities=%d", n), func(b *testing.B) {
			benchCheckHits(b, n, "authorization", "Bearer key-%d", nil)
		})
		b.Run(fmt.Sprintf("identities=%d/source=peer", n), func(b *testing.B) {
			benchPeerHits(b, n)
		})
	}
	benchCheckSigned(b)
}

// benchPeerHits is benchCheckHits for peer identities: each request
// carries only source.principal, from a trusted gateway (no token to
// verify, ever).
func benchPeerHits(b *testing.B, n int) {
	r, _ := newPeerRig(b, authz.SourcePeer, authz.SourceToken)
	reqs := make([]*authv3.CheckRequest, n)
	for i := range n {
		ns := fmt.Sprintf("ns-%d", i)
		r.put(b, "", ns, "sa", "authorization", fmt.Sprintf("Bearer key-%d", i))
		reqs[i] = peerRequest("", "spiffe://cluster.local/ns/"+ns+"/sa/sa", "api.openai.com")
	}
	ctx := from(gatewayAddr)
	for range 3 {
		for _, q := range reqs {
			if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
				b.Fatalf("not allowed: %v", outcome(resp))
			}
		}
	}
	runHitsFrom(b, ctx, r, reqs)
}

// BenchmarkCheckAudit is BenchmarkCheck with the audit trail on: every
// decision counted by a real audit.Log (its keys already held in the
// interval, the steady state), through the same kind of adapter as
// internal/app's.
func BenchmarkCheckAudit(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("identities=%d", n), func(b *testing.B) {
			benchCheckHitsOpts(b, n, "authorization", "Bearer key-%d", func(tb testing.TB) (checker.Recorder, checker.Tracing) {
				l, err := audit.New(audit.Config{Output: io.Discard, Interval: time.Hour, MaxKeys: 2 * n})
				if err != nil {
					tb.Fatal(err)
				}
				return checker.RecorderFunc(func(u checker.Use) {
					l.Use(audit.Use{At: u.At, Reason: u.Reason, Identity: u.Identity.Key(), Route: u.Route, Host: u.Host, Version: u.Version, TokenTag: u.TokenTag})
				}), checker.Tracing{}
			})
		})
	}
}

// BenchmarkCheckBound is BenchmarkCheck with every token bound to a Pod
// that the real metadata informer (kube.BoundObjects over a fake API) holds:
// the revocation check a jwks-mode hit adds.
func BenchmarkCheckBound(b *testing.B) {
	const n = 1_000
	r := newRig(b, nil, true)
	scheme := kruntime.NewScheme()
	metav1.AddMetaToScheme(scheme)
	pods := make([]kruntime.Object, n)
	reqs := make([]*authv3.CheckRequest, n)
	for i := range n {
		ns, uid := fmt.Sprintf("ns-%d", i), fmt.Sprintf("pod-uid-%d", i)
		pods[i] = &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns, UID: k8stypes.UID(uid)}}
		r.put(b, "", ns, "sa", "authorization", fmt.Sprintf("Bearer key-%d", i))
		tok, err := r.iss.Mint(satoken.Token{Namespace: ns, ServiceAccount: "sa", UID: "uid-sa", Audiences: []string{aud}, IssuedAt: r.clock.Now(), TTL: time.Hour,
			Pod: satoken.ObjectRef{Name: "app", UID: uid}})
		if err != nil {
			b.Fatal(err)
		}
		reqs[i] = request("Bearer "+tok, "api.openai.com")
	}
	bo, err := kube.NewBoundObjects(metadatafake.NewSimpleMetadataClient(scheme, pods...), r.clock, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { bo.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	if !bo.WaitForSync(ctx) {
		b.Fatal("informer did not sync")
	}
	r.bound = checker.BoundObjectsFunc(func(k checker.BoundKind, key, uid string) bool { return bo.Exists(string(k), key, uid) })
	for range 3 {
		for _, q := range reqs {
			if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
				b.Fatalf("not allowed: %v", outcome(resp))
			}
		}
	}
	runHits(b, r, reqs)
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

// BenchmarkValidateOffline is the cost of verifying a token offline, what a
// token-cache miss costs before (tokenreview) or instead of (jwks) the API
// server: signature with the issuer's key (RS256 2048-bit, the kube-apiserver
// default, and ES256), then the claim checks.
func BenchmarkValidateOffline(b *testing.B) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for _, c := range []struct {
		name string
		key  crypto.Signer
		alg  jose.SignatureAlgorithm
	}{{"RS256", rsaKey, jose.RS256}, {"ES256", ecKey, jose.ES256}} {
		b.Run(c.name, func(b *testing.B) {
			iss, err := satoken.FromKey("https://issuer.test", "k1", c.key, c.alg)
			if err != nil {
				b.Fatal(err)
			}
			v, err := checker.NewJWKSValidator(context.Background(), checker.JWKSConfig{Issuer: iss.URL, Audiences: []string{aud}, Keys: iss.JWKS()})
			if err != nil {
				b.Fatal(err)
			}
			tok, err := iss.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", UID: "u", Audiences: []string{aud}, IssuedAt: now, TTL: time.Hour,
				Pod: satoken.ObjectRef{Name: "app-7d9f8b6c4-x2x7q", UID: "0b8f0c5e-6a57-4b8e-9d7a-2f3c1e4d5a6b"}, Node: satoken.ObjectRef{Name: "node-1", UID: "n"}})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Validate(ctx, tok); err != nil {
					b.Fatal(err)
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
			benchCheckHits(b, n, src.header, src.value, nil)
		})
	}
}

// benchCheckHits measures Check over gRPC on cache hits only: n identities,
// each with its own credential (header, value with %d for the identity's
// number), warmed first, then asked in parallel in a scattered order; every
// answer must be an allow. rec, if set, is told of every decision.
func benchCheckHits(b *testing.B, n int, header, value string, rec checker.Recorder) {
	benchCheckHitsOpts(b, n, header, value, func(testing.TB) (checker.Recorder, checker.Tracing) { return rec, checker.Tracing{} })
}

// BenchmarkCheckTracing is BenchmarkCheck's 1,000 identities with tracing
// off, and on (the real SDK, batching to an exporter that drops) at
// tracing.samplingRatio 0 and 0.01, for requests without a trace context:
// an unsampled hit must cost what it costs with tracing off.
func BenchmarkCheckTracing(b *testing.B) {
	for _, c := range []struct {
		name  string
		on    bool
		ratio float64
	}{{"off", false, 0}, {"ratio=0", true, 0}, {"ratio=0.01", true, 0.01}} {
		b.Run("tracing="+c.name, func(b *testing.B) {
			benchCheckHitsOpts(b, 1_000, "authorization", "Bearer key-%d", func(tb testing.TB) (checker.Recorder, checker.Tracing) {
				if !c.on {
					return nil, checker.Tracing{}
				}
				tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()),
					sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
				tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
				return nil, checker.Tracing{TracerProvider: tp, SamplingRatio: c.ratio}
			})
		})
	}
}

// benchFixture is a warmed rig and its requests, kept across the rounds
// the testing package runs one benchmark with (b.N = 1, 100, ...): building
// 100,000 identities mints and verifies 100,000 tokens, which took minutes
// per round.
type benchFixture struct {
	r    *rig
	reqs []*authv3.CheckRequest
}

var benchFixtures struct {
	name string
	f    *benchFixture
	stop func()
}

// benchCheckHitsOpts is benchCheckHits with the Recorder and tracing that
// opts makes (once per fixture; cleanups registered on tb run when the
// fixture is freed).
func benchCheckHitsOpts(b *testing.B, n int, header, value string, opts func(tb testing.TB) (checker.Recorder, checker.Tracing)) {
	f := benchFixtureFor(b, func(tb testing.TB) *rig {
		rec, tracing := opts(tb)
		return newRigOpts(tb, nil, true, rec, tracing)
	}, n, header, value)
	runHits(b, f.r, f.reqs)
}

// runHits is the measured loop of the hit benchmarks: reqs asked in
// parallel in a scattered order, every answer an allow.
func runHits(b *testing.B, r *rig, reqs []*authv3.CheckRequest) {
	runHitsFrom(b, context.Background(), r, reqs)
}

// runHitsFrom is runHits with the callers' context ctx (a peer address).
func runHitsFrom(b *testing.B, ctx context.Context, r *rig, reqs []*authv3.CheckRequest) {
	n := len(reqs)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if resp, _ := r.g.Check(ctx, reqs[i%n]); resp.GetOkResponse() == nil {
				b.Fatalf("not allowed: %v", outcome(resp))
			}
			i += 7919
		}
	})
}

// benchFixtureFor returns the fixture of the running benchmark (b.Name()),
// building it on its first round: newRig's rig with n identities, each with
// its own credential (header, value with %d for its number), and a warmed
// token cache. Only one fixture is kept: a benchmark of another name frees
// the last one.
func benchFixtureFor(b *testing.B, newRig func(testing.TB) *rig, n int, header, value string) *benchFixture {
	b.Helper()
	if benchFixtures.name == b.Name() {
		return benchFixtures.f
	}
	if benchFixtures.stop != nil {
		benchFixtures.stop()
		benchFixtures.name, benchFixtures.f, benchFixtures.stop = "", nil, nil
	}
	// The rig outlives this round, so its cleanups run when the next
	// fixture replaces it, or with the process.
	ft := &fixtureTB{TB: b}
	r := newRig(ft)
	reqs := make([]*authv3.CheckRequest, n)
	for i := range n {
		ns := fmt.Sprintf("ns-%d", i)
		r.put(b, "", ns, "sa", header, fmt.Sprintf(value, i))
		reqs[i] = request("Bearer "+r.token(b, ns, "sa"), "api.openai.com")
	}
	ctx := context.Background()
	// Warm the token cache; ristretto applies sets asynchronously, so go
	// over the set a few times.
	for range 3 {
		for _, q := range reqs {
			if _, err := r.g.Check(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
	}
	f := &benchFixture{r: r, reqs: reqs}
	benchFixtures.name, benchFixtures.f, benchFixtures.stop = b.Name(), f, ft.cleanup
	return f
}

// fixtureTB is a testing.TB whose Cleanup functions run when cleanup is
// called, not at the end of the round that registered them.
type fixtureTB struct {
	testing.TB
	cleanups []func()
}

func (t *fixtureTB) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }

func (t *fixtureTB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// BenchmarkCheckWhileMissesWait is BenchmarkCheck's 1,000 identities while
// other requests wait on misses: 0 or 100 requests of identities without a
// credential, each held in a credential source that answers only when the
// benchmark ends (a slow Vault). A waiting miss holds no lock a hit needs,
// so the hits cost the same.
func BenchmarkCheckWhileMissesWait(b *testing.B) {
	for _, waiting := range []int{0, 100} {
		b.Run(fmt.Sprintf("waiting=%d", waiting), func(b *testing.B) {
			f := benchFixtureFor(b, func(tb testing.TB) *rig {
				r := newRigOpts(tb, nil, true, nil, checker.Tracing{})
				release := make(chan struct{})
				r.source = func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
					select {
					case <-release:
					case <-ctx.Done():
					}
					return nil, authz.Deny(authz.ReasonVaultUnavailable, errors.New("benchmark over"))
				}
				var answered sync.WaitGroup
				for i := range waiting {
					tok := "Bearer " + r.token(tb, fmt.Sprintf("waiting-%d", i), "sa")
					answered.Add(1)
					go func() {
						defer answered.Done()
						// Asked again whenever the checker's source timeout
						// (10 s) ends a wait, until the benchmark is over.
						for {
							_, _ = r.g.Check(context.Background(), request(tok, "api.openai.com"))
							select {
							case <-release:
								return
							default:
							}
						}
					}()
				}
				tb.Cleanup(func() { close(release); answered.Wait() })
				// Every waiting request has reached the source.
				if err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, time.Minute, true,
					func(context.Context) (bool, error) { return r.calls.Load() >= int64(waiting), nil }); err != nil {
					tb.Fatalf("%d of %d requests reached the source: %v", r.calls.Load(), waiting, err)
				}
				return r
			}, 1_000, "authorization", "Bearer key-%d")
			runHits(b, f.r, f.reqs)
		})
	}
}
