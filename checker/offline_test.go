package checker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/internal/satoken"
)

// fakeAPIServer stands in for TokenReview: it accepts what the issuer
// signed (checked with its own validator) and counts the calls.
type fakeAPIServer struct {
	v     *JWKSValidator
	calls atomic.Int64
}

func (f *fakeAPIServer) Validate(ctx context.Context, token string) (TokenInfo, error) {
	f.calls.Add(1)
	c, err := f.v.verify(ctx, token)
	if err != nil {
		return TokenInfo{}, authz.Deny(authz.ReasonInvalidToken, err)
	}
	ns, name, _ := ParseServiceAccountUser(c.Subject)
	return NewTokenInfo(ns, name, "", time.Time{}), nil
}

type offlineRig struct {
	clk    *clocktesting.FakeClock
	key    *ecdsa.PrivateKey
	iss    *satoken.Issuer
	jwks   *JWKSValidator
	online *fakeAPIServer
}

func newOfflineRig(t *testing.T) *offlineRig {
	t.Helper()
	r := &offlineRig{clk: clocktesting.NewFakeClock(t0)}
	var err error
	if r.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if r.iss, err = satoken.FromKey(testIssuer, "k1", r.key, jose.ES256); err != nil {
		t.Fatal(err)
	}
	if r.jwks, err = NewJWKSValidator(context.Background(), JWKSConfig{Issuer: testIssuer, Audiences: []string{testAud}, Keys: r.iss.JWKS(), Clock: r.clk}); err != nil {
		t.Fatal(err)
	}
	r.online = &fakeAPIServer{v: r.jwks}
	return r
}

func (r *offlineRig) mint(t *testing.T, ns string, iat time.Time) string {
	t.Helper()
	tok, err := r.iss.Mint(satoken.Token{Namespace: ns, ServiceAccount: "sa", UID: "u-" + ns, Audiences: []string{testAud}, IssuedAt: iat, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// forge keeps a real token's header and claims and replaces its signature
// with random bytes of the same length.
func forge(t *testing.T, real string) string {
	t.Helper()
	i := strings.LastIndexByte(real, '.')
	sig, err := base64.RawURLEncoding.DecodeString(real[i+1:])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rand.Read(sig); err != nil {
		t.Fatal(err)
	}
	return real[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

func TestOfflineFirst(t *testing.T) {
	r := newOfflineRig(t)
	v := OfflineFirst(r.jwks, r.online)
	ctx := context.Background()
	// A legacy Secret-based token signed with the issuer's key: its
	// signature is checked here, the rest by the API server.
	legacyIss, err := satoken.FromKey(LegacyIssuer, r.iss.KeyID, r.key, jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	legacy, _ := legacyIss.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", IssuedAt: t0.Add(-48 * time.Hour), TTL: time.Hour})
	other, err := satoken.New(testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", UID: "u", Audiences: []string{testAud}, IssuedAt: t0, TTL: time.Hour})
	wrongAud, _ := r.iss.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", UID: "u", Audiences: []string{"vault"}, IssuedAt: t0, TTL: time.Hour})

	cases := map[string]struct {
		token  string
		reason authz.Reason
		asked  bool
	}{
		"valid":         {token: r.mint(t, "ns", t0), asked: true},
		"legacy":        {token: legacy, asked: true},
		"forged legacy": {token: forge(t, legacy), reason: authz.ReasonInvalidToken},
		"forged":        {token: forge(t, r.mint(t, "ns", t0)), reason: authz.ReasonInvalidToken},
		"foreign key":   {token: foreign, reason: authz.ReasonInvalidToken},
		"expired":       {token: r.mint(t, "ns", t0.Add(-2*time.Hour)), reason: authz.ReasonInvalidToken},
		// Within ClockSkew of its exp: the checker would refuse it whatever
		// the API server said, so the API server is not asked.
		"expired within the skew": {token: r.mint(t, "ns", t0.Add(-time.Hour-30*time.Second)), reason: authz.ReasonInvalidToken},
		"not yet valid":           {token: r.mint(t, "ns", t0.Add(5*time.Minute)), reason: authz.ReasonInvalidToken},
		"wrong audience":          {token: wrongAud, reason: authz.ReasonInvalidToken},
		"not a signature":         {token: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", reason: authz.ReasonInvalidToken},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			before := r.online.calls.Load()
			ti, err := v.Validate(ctx, c.token)
			if got := authz.ReasonOf(err); got != c.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, c.reason)
			}
			if asked := r.online.calls.Load() > before; asked != c.asked {
				t.Fatalf("API server asked: %v, want %v", asked, c.asked)
			}
			if err == nil && ti.Identity.Key() != "ns/sa" {
				t.Fatalf("identity %q", ti.Identity.Key())
			}
		})
	}
	t.Run("the offline claims add the bound objects", func(t *testing.T) {
		tok, err := r.iss.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", UID: "u", Audiences: []string{testAud}, IssuedAt: t0, TTL: time.Hour,
			Pod: satoken.ObjectRef{Name: "p", UID: "pod-uid"}})
		if err != nil {
			t.Fatal(err)
		}
		ti, err := v.Validate(ctx, tok)
		if err != nil || len(ti.Bound) != 1 || ti.Bound[0] != (BoundRef{BoundPod, "ns/p", "pod-uid"}) {
			t.Fatalf("%+v, %v", ti.Bound, err)
		}
	})
}

// TestBudgetKeepsCapacityForSeenIdentities is the fallback without issuer
// keys: a flood of 2,000 forged tokens naming identities never confirmed
// reaches the API server at most Burst times (the clock stands still), while
// a fresh token of an identity already confirmed, sent after every 100
// forgeries, is always asked about and allowed.
func TestBudgetKeepsCapacityForSeenIdentities(t *testing.T) {
	r := newOfflineRig(t)
	reg := prometheus.NewRegistry()
	v, err := Budgeted(r.online, BudgetConfig{Rate: 10, Burst: 20, Clock: r.clk, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	exhausted := func() int { return int(testutil.ToFloat64(v.(*budgeted).exhausted.WithLabelValues("unknown"))) }
	ctx := context.Background()
	if _, err := v.Validate(ctx, r.mint(t, "real", t0)); err != nil {
		t.Fatalf("first token of a real identity: %v", err)
	}
	before := r.online.calls.Load()
	refused, fresh := 0, 0
	for i := range 2000 {
		_, err := v.Validate(ctx, forge(t, r.mint(t, fmt.Sprintf("flood-%d", i), t0)))
		switch authz.ReasonOf(err) {
		case authz.ReasonTokenReviewUnavailable:
			refused++
		case authz.ReasonInvalidToken:
		default:
			t.Fatalf("forged token %d: %v", i, err)
		}
		if i%100 == 99 {
			// A fresh token per 100 forgeries: 20 in all, within the seen
			// identity's burst even with the clock stopped.
			fresh++
			if _, err := v.Validate(ctx, r.mint(t, "real", t0.Add(time.Duration(i)*time.Millisecond))); err != nil {
				t.Fatalf("fresh real token during the flood: %v", err)
			}
		}
	}
	reviews := r.online.calls.Load() - before - int64(fresh)
	t.Logf("2000 forged tokens: %d reached the API server, %d refused by the budget; %d fresh real tokens all allowed", reviews, refused, fresh)
	if reviews > 20 || refused != 2000-int(reviews) || exhausted() != refused {
		t.Fatalf("%d forged tokens reached the API server (budget 20), %d refused, %d counted", reviews, refused, exhausted())
	}
	// Forgeries naming the confirmed identity itself spend its own budget
	// (a new token of it waits), but a token confirmed before is asked about
	// again outside any budget: running workloads keep working.
	r.clk.Step(2 * time.Second)
	running := r.mint(t, "real", t0.Add(time.Second))
	if _, err := v.Validate(ctx, running); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		_, _ = v.Validate(ctx, forge(t, r.mint(t, "real", t0)))
	}
	if _, err := v.Validate(ctx, r.mint(t, "real", t0.Add(2*time.Second))); authz.ReasonOf(err) != authz.ReasonTokenReviewUnavailable {
		t.Fatalf("a new token of an identity under attack: %v", err)
	}
	if _, err := v.Validate(ctx, running); err != nil {
		t.Fatalf("a confirmed token under attack: %v", err)
	}
	// The unknown budget refills with time.
	r.clk.Step(time.Second)
	if _, err := v.Validate(ctx, r.mint(t, "another", t0)); err != nil {
		t.Fatalf("after a second: %v", err)
	}
}

func TestBudgetRefusesOffline(t *testing.T) {
	r := newOfflineRig(t)
	v, err := Budgeted(r.online, BudgetConfig{Rate: 10, Burst: 20, Clock: r.clk,
		ServiceAccounts: saExists(func(key, _ string) bool { return key == "ns/sa" })})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := map[string]struct {
		token  string
		reason authz.Reason
	}{
		"expired":                 {r.mint(t, "ns", t0.Add(-2*time.Hour)), authz.ReasonInvalidToken},
		"expired within the skew": {r.mint(t, "ns", t0.Add(-time.Hour-30*time.Second)), authz.ReasonInvalidToken},
		"not a service account":   {"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", authz.ReasonInvalidToken},
		"not json":                {"a.b.c", authz.ReasonMalformedToken},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := v.Validate(ctx, c.token); authz.ReasonOf(err) != c.reason {
				t.Fatalf("got %v, want %q", err, c.reason)
			}
		})
	}
	if n := r.online.calls.Load(); n != 0 {
		t.Fatalf("%d calls reached the API server", n)
	}
}

// TestBudgetUnknownServiceAccount: a token naming a ServiceAccount the
// informer does not know is not refused offline (the informer may lag behind
// a new ServiceAccount) but charged to the never-confirmed budget, even when
// its identity was confirmed before: once that budget is spent, it waits.
func TestBudgetUnknownServiceAccount(t *testing.T) {
	r := newOfflineRig(t)
	var known atomic.Bool
	known.Store(true)
	v, err := Budgeted(r.online, BudgetConfig{Rate: 1, Burst: 2, Clock: r.clk,
		ServiceAccounts: saExists(func(key, _ string) bool { return key != "new/sa" || known.Load() })})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.Validate(ctx, r.mint(t, "new", t0)); err != nil {
		t.Fatalf("a token of a ServiceAccount the informer knows: %v", err)
	}
	known.Store(false)
	// The unknown budget has one token left (burst 2, the clock stands
	// still): the first new token of new/sa spends it and is asked about.
	if _, err := v.Validate(ctx, r.mint(t, "new", t0.Add(time.Millisecond))); err != nil {
		t.Fatalf("a token of a ServiceAccount the informer does not know yet: %v", err)
	}
	if _, err := v.Validate(ctx, r.mint(t, "new", t0.Add(2*time.Millisecond))); authz.ReasonOf(err) != authz.ReasonTokenReviewUnavailable {
		t.Fatalf("with the unknown budget spent, its own budget must not be used: %v", err)
	}
	known.Store(true)
	if _, err := v.Validate(ctx, r.mint(t, "new", t0.Add(3*time.Millisecond))); err != nil {
		t.Fatalf("once the informer knows it, its own budget: %v", err)
	}
	if n := r.online.calls.Load(); n != 3 {
		t.Fatalf("%d TokenReviews, want 3", n)
	}
}

type saExists func(key, uid string) bool

func (f saExists) Exists(key, uid string) bool { return f(key, uid) }
