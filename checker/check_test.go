package checker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/satoken"
)

const aud = "https://kubernetes.default.svc.cluster.local"

// rig is an in-process checker with a local issuer (JWKS mode, fixed keys),
// a real credential cache and a scripted credential source.
type rig struct {
	iss    *satoken.Issuer
	creds  *cache.Credentials
	c      *checker.Checker
	g      *checker.GRPC
	clock  *clocktesting.FakeClock
	source func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error)
	calls  atomic.Int64
	sas    *saFake
	// validator and router are the checker's, for a test that builds
	// another checker on the same issuer and cache.
	validator checker.Validator
	router    *checker.Router
	// objects are the bound objects that exist: "Kind:key" → uid.
	objects sync.Map
	// bound, if set, answers instead of objects (a benchmark's informer).
	bound checker.BoundObjects
	// reg holds the checker's metrics.
	reg *prometheus.Registry
}

type sourceFunc func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error)

func (f sourceFunc) Credential(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
	return f(ctx, route, id, token, exp)
}

// saFake is the ServiceAccounts informer's stand-in: every ServiceAccount
// exists but the removed ones, and it counts removals as the informer does.
type saFake struct {
	gone     sync.Map // identity keys whose ServiceAccount is deleted
	removals atomic.Uint64
	asked    atomic.Int64 // Exists calls
}

func (s *saFake) Exists(key, uid string) bool {
	s.asked.Add(1)
	_, gone := s.gone.Load(key)
	return !gone
}

func (s *saFake) Removals() uint64 { return s.removals.Load() }

// remove deletes key's ServiceAccount: Exists answers it, then the count
// moves, in the informer's order.
func (s *saFake) remove(key string) {
	s.gone.Store(key, true)
	s.removals.Add(1)
}

// recreate creates key's ServiceAccount again (an add moves no count).
func (s *saFake) recreate(key string) { s.gone.Delete(key) }

func newRig(tb testing.TB, routes []checker.Route, hasDefault bool) *rig {
	tb.Helper()
	return newRigWith(tb, routes, hasDefault, nil)
}

// newRigWith is newRig with a Recorder told of every decision (nil: none).
func newRigWith(tb testing.TB, routes []checker.Route, hasDefault bool, rec checker.Recorder) *rig {
	tb.Helper()
	return newRigOpts(tb, routes, hasDefault, rec, checker.Tracing{})
}

// newTracedRig is newRig with tracing configured.
func newTracedRig(tb testing.TB, routes []checker.Route, hasDefault bool, tracing checker.Tracing) *rig {
	tb.Helper()
	return newRigOpts(tb, routes, hasDefault, nil, tracing)
}

// newRigOpts builds a rig with a Recorder (nil: none) and tracing.
func newRigOpts(tb testing.TB, routes []checker.Route, hasDefault bool, rec checker.Recorder, tracing checker.Tracing) *rig {
	tb.Helper()
	return newRigMod(tb, routes, hasDefault, rec, tracing, nil, nil)
}

// newRigMod is newRigOpts with mod applied to the checker's Config (nil:
// none) and the gRPC server's options.
func newRigMod(tb testing.TB, routes []checker.Route, hasDefault bool, rec checker.Recorder, tracing checker.Tracing, mod func(*checker.Config), gopts *checker.GRPCOptions) *rig {
	tb.Helper()
	r := &rig{sas: &saFake{}, reg: prometheus.NewRegistry()}
	r.clock = clocktesting.NewFakeClock(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	var err error
	if r.iss, err = satoken.New("https://issuer.test"); err != nil {
		tb.Fatal(err)
	}
	v, err := checker.NewJWKSValidator(context.Background(), checker.JWKSConfig{Issuer: r.iss.URL, Audiences: []string{aud}, Keys: r.iss.JWKS(), Clock: r.clock})
	if err != nil {
		tb.Fatal(err)
	}
	if r.creds, err = cache.NewCredentials(cache.CredentialsConfig{Capacity: 1 << 18, DeniedCapacity: 1 << 10}); err != nil {
		tb.Fatal(err)
	}
	router, err := checker.NewRouter(routes, hasDefault)
	if err != nil {
		tb.Fatal(err)
	}
	r.source = func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
		return nil, authz.Deny(authz.ReasonVaultUnavailable, errors.New("no source in this test"))
	}
	r.validator, r.router = v, router
	cfg := checker.Config{
		// Holds every benchmark identity's token: BenchmarkCheck's
		// 100,000 identities must all hit.
		TokenCacheSize: 1 << 20,
		Validator:      v, Credentials: r.creds, Router: router, Audiences: []string{aud}, Clock: r.clock,
		ServiceAccounts: r.sas,
		BoundObjects: checker.BoundObjectsFunc(func(kind checker.BoundKind, key, uid string) bool {
			if r.bound != nil {
				return r.bound.Exists(kind, key, uid)
			}
			cur, ok := r.objects.Load(string(kind) + ":" + key)
			return ok && cur == uid
		}),
		Source: sourceFunc(func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
			r.calls.Add(1)
			return r.source(ctx, route, id, token, exp)
		}),
		Registerer: r.reg, TokenCache: checker.TokenCacheConfig{TTL: 30 * time.Second, NegativeTTL: 5 * time.Second},
		Recorder: rec,
		Tracing:  tracing,
	}
	if mod != nil {
		mod(&cfg)
	}
	if r.c, err = checker.New(cfg); err != nil {
		tb.Fatal(err)
	}
	r.g = checker.NewGRPC(r.c)
	if gopts != nil {
		r.g = checker.NewGRPCWith(r.c, *gopts)
	}
	tb.Cleanup(func() { r.c.Close(); r.creds.Close() })
	return r
}

func (r *rig) advance(d time.Duration) { r.clock.Step(d) }

func (r *rig) token(tb testing.TB, ns, sa string, auds ...string) string {
	tb.Helper()
	if len(auds) == 0 {
		auds = []string{aud}
	}
	tok, err := r.iss.Mint(satoken.Token{Namespace: ns, ServiceAccount: sa, UID: "uid-" + sa, Audiences: auds, IssuedAt: r.clock.Now(), TTL: time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func (r *rig) put(tb testing.TB, route, ns, sa, header, value string) {
	tb.Helper()
	r.putEntry(tb, route, ns, sa, header, value, nil)
}

// putEntry stores ns/sa's fresh entry for route: its header and shapes.
func (r *rig) putEntry(tb testing.TB, route, ns, sa, header, value string, sh *cache.Shapes) {
	tb.Helper()
	now := r.clock.Now()
	if err := r.creds.Set(&cache.Entry{Route: route, Identity: authz.NewIdentity(ns, sa), Header: header, Value: value, Shapes: sh,
		ReadAt: now, FreshUntil: now.Add(5 * time.Minute), ExpiresAt: now.Add(15 * time.Minute)}); err != nil {
		tb.Fatal(err)
	}
}

func request(authz, host string) *authv3.CheckRequest {
	h := map[string]string{":authority": host}
	if authz != "" {
		h["authorization"] = authz
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Host: host, Method: "POST", Path: "/v1/chat/completions", Headers: h},
	}}}
}

func check(tb testing.TB, r *rig, authz, host string) *authv3.CheckResponse {
	tb.Helper()
	resp, err := r.g.Check(context.Background(), request(authz, host))
	if err != nil {
		tb.Fatalf("Check returned an error (must always answer): %v", err)
	}
	return resp
}

// outcome summarises a response: "allow <header>=<value>" or "deny <status> <reason>".
func outcome(resp *authv3.CheckResponse) string {
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == 0 {
		s := "allow"
		for _, h := range ok.GetHeaders() {
			if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
				return "allow without overwrite"
			}
			s += " " + h.GetHeader().GetKey() + "=" + h.GetHeader().GetValue()
		}
		return s
	}
	d := resp.GetDeniedResponse()
	reason, www := "", ""
	for _, h := range d.GetHeaders() {
		switch h.GetHeader().GetKey() {
		case checker.HeaderReason:
			reason = h.GetHeader().GetValue()
		case checker.HeaderWWWAuthenticate:
			www = " www=" + h.GetHeader().GetValue()
		}
	}
	return fmt.Sprintf("deny %d %s%s", d.GetStatus().GetCode(), reason, www)
}

func TestDecisions(t *testing.T) {
	r := newRig(t, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, true)
	r.put(t, "", "team-a", "app", "authorization", "Bearer sk-a")
	r.put(t, "", "team-b", "app", "authorization", "Bearer sk-b")
	r.put(t, "anthropic", "team-a", "app", "x-api-key", "ak-a")
	other, err := satoken.New("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.Mint(satoken.Token{Namespace: "team-a", ServiceAccount: "app", Audiences: []string{aud}, IssuedAt: r.clock.Now(), TTL: time.Hour})

	cases := map[string]struct {
		authz, host, want string
	}{
		"no header":         {"", "api.openai.com", "deny 401 missing_token www=Bearer"},
		"basic scheme":      {"Basic dXNlcjpwYXNz", "api.openai.com", "deny 401 malformed_token www=Bearer"},
		"garbage":           {"Bearer not-a-jwt", "api.openai.com", "deny 401 malformed_token www=Bearer"},
		"bad signature":     {"Bearer " + forged, "api.openai.com", "deny 401 invalid_token www=Bearer"},
		"wrong audience":    {"Bearer " + r.token(t, "team-a", "app", "https://other.example"), "api.openai.com", "deny 401 invalid_token www=Bearer"},
		"team a":            {"Bearer " + r.token(t, "team-a", "app"), "api.openai.com", "allow authorization=Bearer sk-a"},
		"team b":            {"Bearer " + r.token(t, "team-b", "app"), "api.openai.com:443", "allow authorization=Bearer sk-b"},
		"team a anthropic":  {"Bearer " + r.token(t, "team-a", "app"), "api.anthropic.com", "allow x-api-key=ak-a"},
		"no credential yet": {"Bearer " + r.token(t, "team-c", "app"), "api.openai.com", "deny 503 vault_unavailable"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := outcome(check(t, r, c.authz, c.host)); got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}

	t.Run("another route's header removes the workload token", func(t *testing.T) {
		resp := check(t, r, "Bearer "+r.token(t, "team-a", "app"), "api.anthropic.com")
		if rm := resp.GetOkResponse().GetHeadersToRemove(); len(rm) != 1 || rm[0] != "authorization" {
			t.Fatalf("headers_to_remove = %v", rm)
		}
	})
	t.Run("dynamic metadata names the identity", func(t *testing.T) {
		md := check(t, r, "Bearer "+r.token(t, "team-b", "app"), "x").GetDynamicMetadata().GetFields()
		if md["namespace"].GetStringValue() != "team-b" || md["serviceaccount"].GetStringValue() != "app" {
			t.Fatalf("metadata = %v", md)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		tok := r.token(t, "team-a", "app")
		r.advance(2 * time.Hour)
		defer r.advance(-2 * time.Hour)
		if got := outcome(check(t, r, "Bearer "+tok, "x")); got != "deny 401 invalid_token www=Bearer" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("bound objects", func(t *testing.T) {
		for _, kind := range []string{"Pod", "Secret", "Node"} {
			t.Run(kind, func(t *testing.T) {
				key := "team-a/obj"
				ref := satoken.ObjectRef{Name: "obj", UID: "uid-1"}
				tt := satoken.Token{Namespace: "team-a", ServiceAccount: "app", UID: "uid-app", Audiences: []string{aud}, IssuedAt: r.clock.Now(), TTL: time.Hour}
				switch kind {
				case "Pod":
					tt.Pod = ref
				case "Secret":
					tt.Secret = ref
				case "Node":
					tt.Node, key = ref, "obj"
				}
				tok, err := r.iss.Mint(tt)
				if err != nil {
					t.Fatal(err)
				}
				r.objects.Store(kind+":"+key, "uid-1")
				if got := outcome(check(t, r, "Bearer "+tok, "x")); got != "allow authorization=Bearer sk-a" {
					t.Fatalf("while the %s exists: %q", kind, got)
				}
				// The cached positive result dies with the object...
				r.objects.Delete(kind + ":" + key)
				if got := outcome(check(t, r, "Bearer "+tok, "x")); got != "deny 401 invalid_token www=Bearer" {
					t.Fatalf("after the %s is deleted: %q", kind, got)
				}
				// ...and an object re-created under the same name does not
				// revive it.
				r.objects.Store(kind+":"+key, "uid-2")
				if got := outcome(check(t, r, "Bearer "+tok, "x")); got != "deny 401 invalid_token www=Bearer" {
					t.Fatalf("after the %s is re-created: %q", kind, got)
				}
			})
		}
	})
	t.Run("deleted service account", func(t *testing.T) {
		tok := r.token(t, "team-b", "app")
		check(t, r, "Bearer "+tok, "x") // cached as valid
		r.sas.remove("team-b/app")
		defer r.sas.recreate("team-b/app")
		if got := outcome(check(t, r, "Bearer "+tok, "x")); got != "deny 401 unknown_serviceaccount www=Bearer" {
			t.Fatalf("got %q", got)
		}
	})
}

func TestNoRoute(t *testing.T) {
	r := newRig(t, []checker.Route{{Name: "openai", Hosts: []string{"api.openai.com"}}}, false)
	r.put(t, "openai", "ns", "sa", "authorization", "Bearer sk")
	tok := "Bearer " + r.token(t, "ns", "sa")
	if got := outcome(check(t, r, tok, "api.openai.com")); got != "allow authorization=Bearer sk" {
		t.Fatalf("routed host: %q", got)
	}
	if got := outcome(check(t, r, tok, "example.com")); got != "deny 403 no_route" {
		t.Fatalf("unrouted host: %q", got)
	}
}

func TestMissPathAndStalePolicy(t *testing.T) {
	r := newRig(t, nil, true)
	tok := "Bearer " + r.token(t, "ns", "sa")
	var mu sync.Mutex
	answer := func() (*cache.Entry, error) { return nil, authz.Deny(authz.ReasonVaultDenied, nil) }
	r.source = func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
		mu.Lock()
		defer mu.Unlock()
		return answer()
	}
	set := func(f func() (*cache.Entry, error)) { mu.Lock(); answer = f; mu.Unlock() }

	if got := outcome(check(t, r, tok, "h")); got != "deny 403 vault_denied" {
		t.Fatalf("refused identity: %q", got)
	}
	set(func() (*cache.Entry, error) { return nil, authz.Deny(authz.ReasonNoCredential, nil) })
	if got := outcome(check(t, r, tok, "h")); got != "deny 403 no_credential" {
		t.Fatalf("no credential: %q", got)
	}
	set(func() (*cache.Entry, error) {
		return &cache.Entry{Identity: authz.NewIdentity("other", "sa"), Header: "authorization", Value: "Bearer stolen"}, nil
	})
	if got := outcome(check(t, r, tok, "h")); got != "deny 500 internal" {
		t.Fatalf("foreign entry must be refused: %q", got)
	}
	set(func() (*cache.Entry, error) { panic("boom") })
	if got := outcome(check(t, r, tok, "h")); got != "deny 500 internal" {
		t.Fatalf("panic: %q", got)
	}
	if n, err := testutil.GatherAndCount(r.reg, "credinject_panics_total"); err != nil || n != 1 {
		t.Errorf("panics counted in %d series (%v), want 1", n, err)
	}

	// A negative entry whose reason is outside the closed set is internal.
	now := r.clock.Now()
	if err := r.creds.Set(&cache.Entry{Identity: authz.NewIdentity("ns", "sa"), Denied: "made_up", ReadAt: now, FreshUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if got := outcome(check(t, r, tok, "h")); got != "deny 500 internal" {
		t.Fatalf("unknown reason: %q", got)
	}

	// Filled: fresh, then stale within grace, then expired with Vault away.
	r.put(t, "", "ns", "sa", "authorization", "Bearer sk-1")
	calls := r.calls.Load()
	if got := outcome(check(t, r, tok, "h")); got != "allow authorization=Bearer sk-1" {
		t.Fatalf("fresh: %q", got)
	}
	r.advance(10 * time.Minute)
	if got := outcome(check(t, r, tok, "h")); got != "allow authorization=Bearer sk-1" {
		t.Fatalf("stale within grace: %q", got)
	}
	if r.calls.Load() != calls {
		t.Fatalf("a hit (fresh or stale) called the source")
	}
	r.advance(10 * time.Minute)
	tok = "Bearer " + r.token(t, "ns", "sa")
	set(func() (*cache.Entry, error) { return nil, authz.Deny(authz.ReasonVaultUnavailable, nil) })
	if got := outcome(check(t, r, tok, "h")); got != "deny 503 vault_unavailable" {
		t.Fatalf("expired with Vault away: %q", got)
	}
}

// TestNoCrossIdentityUnderConcurrency: many identities, many goroutines,
// credentials swapped underneath; every answer is the caller's own key.
func TestNoCrossIdentityUnderConcurrency(t *testing.T) {
	r := newRig(t, nil, true)
	const n = 200
	toks := make([]string, n)
	for i := range n {
		r.put(t, "", fmt.Sprintf("ns-%d", i), "sa", "authorization", fmt.Sprintf("Bearer key-%d-v0", i))
		toks[i] = "Bearer " + r.token(t, fmt.Sprintf("ns-%d", i), "sa")
	}
	var bad atomic.Int64
	stop := make(chan struct{})
	rotated := make(chan struct{})
	go func() { // rotation underneath
		defer close(rotated)
		for v := 1; ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			i := v % n
			r.put(t, "", fmt.Sprintf("ns-%d", i), "sa", "authorization", fmt.Sprintf("Bearer key-%d-v%d", i, v))
		}
	}()
	var workers sync.WaitGroup
	for w := range 8 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for k := range 2000 {
				i := (k*7 + w) % n
				got := outcome(check(t, r, toks[i], "h"))
				var v int
				if _, err := fmt.Sscanf(got, fmt.Sprintf("allow authorization=Bearer key-%d-v%%d", i), &v); err != nil {
					bad.Add(1)
				}
			}
		}()
	}
	workers.Wait()
	close(stop)
	<-rotated
	if bad.Load() != 0 {
		t.Fatalf("%d answers were not the caller's own key", bad.Load())
	}
}

// TestRotationReachesAServedToken: a token result remembers the entry it was
// last served, so a hit skips the credential map; a refresh that stores a
// new entry, and a Delete, must still reach the very next request with
// that token, and a token used on two routes gets each route's own entry.
func TestRotationReachesAServedToken(t *testing.T) {
	r := newRig(t, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, true)
	r.put(t, "", "ns", "sa", "authorization", "Bearer v1")
	r.put(t, "anthropic", "ns", "sa", "x-api-key", "a1")
	tok := "Bearer " + r.token(t, "ns", "sa")
	want := func(host, w string) {
		t.Helper()
		if got := outcome(check(t, r, tok, host)); got != w {
			t.Fatalf("%s: got %q, want %q", host, got, w)
		}
	}
	// Validated, then a hit that remembers the entry, then a hit through it.
	want("h", "allow authorization=Bearer v1")
	r.c.WaitTokens() // the token's result is in the cache
	want("h", "allow authorization=Bearer v1")
	want("h", "allow authorization=Bearer v1")

	r.put(t, "", "ns", "sa", "authorization", "Bearer v2")
	want("h", "allow authorization=Bearer v2")
	want("h", "allow authorization=Bearer v2")

	calls := r.calls.Load()
	r.creds.Delete("", authz.NewIdentity("ns", "sa").Key())
	want("h", "deny 503 vault_unavailable")
	if r.calls.Load() != calls+1 {
		t.Fatalf("a deleted entry must be a miss that asks the source: %d calls, want %d", r.calls.Load(), calls+1)
	}

	r.put(t, "", "ns", "sa", "authorization", "Bearer v3")
	for range 2 {
		want("api.anthropic.com", "allow x-api-key=a1")
		want("h", "allow authorization=Bearer v3")
	}
}

// TestServiceAccountAskedOncePerRemoval: a cached token result confirmed
// against the ServiceAccount informer is not asked again until the informer
// counts a removal; then it is, and a removed ServiceAccount's token is
// refused on its very next request.
func TestServiceAccountAskedOncePerRemoval(t *testing.T) {
	r := newRig(t, nil, true)
	r.put(t, "", "ns", "sa", "authorization", "Bearer k")
	tok := "Bearer " + r.token(t, "ns", "sa")
	want := func(w string) {
		t.Helper()
		if got := outcome(check(t, r, tok, "h")); got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
	want("allow authorization=Bearer k") // validated
	r.c.WaitTokens()
	asked := r.sas.asked.Load()
	for range 5 {
		want("allow authorization=Bearer k")
	}
	// The validation asked it, and stamped the result at the count.
	if n := r.sas.asked.Load() - asked; n != 0 {
		t.Fatalf("5 hits asked the informer %d times, want none", n)
	}
	// Another ServiceAccount's removal: asked once more, still allowed.
	r.sas.remove("other/sa")
	for range 3 {
		want("allow authorization=Bearer k")
	}
	if n := r.sas.asked.Load() - asked; n != 1 {
		t.Fatalf("after another removal the informer was asked %d times in all, want once", n)
	}
	r.sas.remove("ns/sa")
	want("deny 401 unknown_serviceaccount www=Bearer")
	want("deny 401 unknown_serviceaccount www=Bearer")
}

// TestMissDoesNotHoldUpOthers: while one identity's miss waits on its
// credential source, hits of other identities and misses of a third are
// answered; the waiting one is answered once its source returns.
func TestMissDoesNotHoldUpOthers(t *testing.T) {
	r := newRig(t, nil, true)
	entered, release := make(chan struct{}), make(chan struct{})
	r.source = func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
		if id.Key() == "slow/sa" {
			close(entered)
			<-release
		}
		now := r.clock.Now()
		return &cache.Entry{Route: route, Identity: id, Header: "authorization", Value: "Bearer from-source-" + id.Namespace,
			ReadAt: now, FreshUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Minute)}, nil
	}
	slow := make(chan string, 1)
	slowTok := "Bearer " + r.token(t, "slow", "sa")
	go func() { slow <- outcome(check(t, r, slowTok, "h")) }()
	<-entered
	for i := range 10 {
		ns := fmt.Sprintf("ns-%d", i)
		r.put(t, "", ns, "sa", "authorization", "Bearer k-"+ns)
		tok := "Bearer " + r.token(t, ns, "sa")
		for range 3 {
			if got := outcome(check(t, r, tok, "h")); got != "allow authorization=Bearer k-"+ns {
				t.Fatalf("%s while slow/sa's miss waits: %q", ns, got)
			}
		}
	}
	if got := outcome(check(t, r, "Bearer "+r.token(t, "other", "sa"), "h")); got != "allow authorization=Bearer from-source-other" {
		t.Fatalf("another miss while slow/sa's waits: %q", got)
	}
	select {
	case got := <-slow:
		t.Fatalf("slow/sa answered before its source returned: %q", got)
	default:
	}
	close(release)
	if got := <-slow; got != "allow authorization=Bearer from-source-slow" {
		t.Fatalf("slow/sa once its source returned: %q", got)
	}
}

// offerSink is a credential source that also records the tokens the
// checker offers it.
type offerSink struct {
	sourceFunc
	mu     sync.Mutex
	offers []string // "identity expires token-suffix"
}

func (s *offerSink) OfferToken(id authz.Identity, token string, expires time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offers = append(s.offers, fmt.Sprintf("%s %s %s", id.Key(), expires.Format(time.RFC3339), token[len(token)-8:]))
}

func (s *offerSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.offers)
}

// TestNewTokensAreOffered: a CredentialSource that is a TokenSink is told
// of each token the checker newly validates, once, with its identity and
// expiry; not of hits, and not of rejected tokens.
func TestNewTokensAreOffered(t *testing.T) {
	r := newRig(t, nil, true)
	sink := &offerSink{sourceFunc: func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
		return nil, authz.Deny(authz.ReasonVaultUnavailable, errors.New("no source in this test"))
	}}
	c, err := checker.New(checker.Config{
		TokenCacheSize: 1 << 20,
		Validator:      r.validator, Credentials: r.creds, Router: r.router, Audiences: []string{aud}, Clock: r.clock,
		Source: sink, TokenCache: checker.TokenCacheConfig{TTL: 30 * time.Second, NegativeTTL: 5 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	g := checker.NewGRPC(c)
	r.put(t, "", "ns", "sa", "authorization", "Bearer k")
	tok := r.token(t, "ns", "sa")
	exp := r.clock.Now().Add(time.Hour).Format(time.RFC3339)
	for i := range 4 {
		resp, _ := g.Check(context.Background(), request("Bearer "+tok, "h"))
		if got := outcome(resp); got != "allow authorization=Bearer k" {
			t.Fatalf("check %d: %q", i, got)
		}
		if i == 0 {
			c.WaitTokens()
		}
	}
	want := []string{"ns/sa " + exp + " " + tok[len(tok)-8:]}
	if got := sink.got(); !slices.Equal(got, want) {
		t.Fatalf("offers %q, want %q (once, on the first validation)", got, want)
	}
	other, err := satoken.New("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", Audiences: []string{aud}, IssuedAt: r.clock.Now(), TTL: time.Hour})
	resp, _ := g.Check(context.Background(), request("Bearer "+forged, "h"))
	if got := outcome(resp); got != "deny 401 invalid_token www=Bearer" {
		t.Fatalf("forged: %q", got)
	}
	if got := sink.got(); len(got) != 1 {
		t.Fatalf("a rejected token was offered: %q", got)
	}
}
