package checker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/satoken"
)

// lagInformer is a ServiceAccounts informer that may lag: it knows the
// ServiceAccounts in known (key → uid) and counts removals as the informer
// does (the map first, then the count).
type lagInformer struct {
	mu       sync.Mutex
	known    map[string]string
	removals atomic.Uint64
}

func (l *lagInformer) Exists(key, uid string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	cur, ok := l.known[key]
	return ok && (uid == "" || cur == uid)
}

func (l *lagInformer) Removals() uint64 { return l.removals.Load() }

func (l *lagInformer) add(key, uid string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.known[key] = uid
}

func (l *lagInformer) remove(key string) {
	l.mu.Lock()
	delete(l.known, key)
	l.mu.Unlock()
	l.removals.Add(1)
}

// apiServer is the API server's view of the ServiceAccounts (key → uid),
// read by a live GET that it counts.
type apiServer struct {
	mu   sync.Mutex
	sas  map[string]string
	gets atomic.Int64
}

func (a *apiServer) LookupServiceAccount(_ context.Context, ns, name string) (string, bool, error) {
	a.gets.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	uid, ok := a.sas[ns+"/"+name]
	return uid, ok, nil
}

func (a *apiServer) set(key, uid string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid == "" {
		delete(a.sas, key)
		return
	}
	a.sas[key] = uid
}

// boundsRig is a checker whose Validator (the rig's issuer, verified
// offline) counts its calls as the upstream TokenReviews they would be,
// with a lagging informer, a counted API server and a token sink.
type boundsRig struct {
	*rig
	c           *checker.Checker
	informer    *lagInformer
	api         *apiServer
	validations atomic.Int64
	sink        *offerSink
	alive       map[string]string // bound objects that exist: "Kind:key" → uid
}

func newBoundsRig(t *testing.T, lookupBurst int) *boundsRig {
	t.Helper()
	r := &boundsRig{rig: newRig(t, nil, true), informer: &lagInformer{known: map[string]string{}},
		api: &apiServer{sas: map[string]string{}}, alive: map[string]string{}}
	r.sink = &offerSink{sourceFunc: func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
		return nil, authz.Deny(authz.ReasonVaultUnavailable, errors.New("no source in this test"))
	}}
	c, err := checker.New(checker.Config{
		TokenCacheSize: 1 << 20,
		Validator: checker.ValidatorFunc(func(ctx context.Context, token string) (checker.TokenInfo, error) {
			r.validations.Add(1)
			return r.validator.Validate(ctx, token)
		}),
		ServiceAccounts: r.informer, ServiceAccountLookup: r.api, LookupBudget: checker.LookupBudget{Rate: 1, Burst: lookupBurst},
		BoundObjects: checker.BoundObjectsFunc(func(kind checker.BoundKind, key, uid string) bool {
			return r.alive[string(kind)+":"+key] == uid
		}),
		Credentials: r.creds, Router: r.router, Audiences: []string{aud}, Clock: r.clock, Source: r.sink,
		TokenCache: checker.TokenCacheConfig{TTL: 30 * time.Second, NegativeTTL: 5 * time.Second},
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	r.c = c
	return r
}

// decide checks token n times from 10 goroutines and returns the distinct
// answers.
func (r *boundsRig) decide(t *testing.T, token string, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for g := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n; i += 10 {
				d := r.c.Decide(context.Background(), "Bearer "+token, "h")
				mu.Lock()
				got[string(d.Reason)]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return got
}

// TestFailingTokensBounded: a token that passes the validator but fails
// what the checker adds (expired by the checker's clock within the skew
// the validator allows, bound to a deleted Pod, of a deleted
// ServiceAccount), or that the validator refuses, costs one validation
// (and at most one ServiceAccount read) per cache.tokenNegativeTTL however
// often it is presented, and is never offered to the credential source.
func TestFailingTokensBounded(t *testing.T) {
	r := newBoundsRig(t, 100)
	now := r.clock.Now()
	mint := func(tok satoken.Token) string {
		tok.Audiences = []string{aud}
		if tok.IssuedAt.IsZero() {
			tok.IssuedAt, tok.TTL = now, time.Hour
		}
		if tok.UID == "" {
			tok.UID = "uid-" + tok.ServiceAccount
		}
		s, err := r.iss.Mint(tok)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, key := range []string{"ns/skew", "ns/bound"} {
		r.informer.add(key, "uid-"+key[3:])
	}
	other, err := satoken.New("https://issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", UID: "uid-sa", Audiences: []string{aud}, IssuedAt: now, TTL: time.Hour})
	cases := []struct {
		name   string
		token  string
		reason authz.Reason
		gets   int64
	}{
		{"expired within the skew", mint(satoken.Token{Namespace: "ns", ServiceAccount: "skew", IssuedAt: now.Add(-time.Hour - 30*time.Second), TTL: time.Hour}), authz.ReasonInvalidToken, 0},
		{"bound to a deleted pod", mint(satoken.Token{Namespace: "ns", ServiceAccount: "bound", Pod: satoken.ObjectRef{Name: "gone", UID: "pod-uid"}}), authz.ReasonInvalidToken, 0},
		{"of a deleted service account", mint(satoken.Token{Namespace: "ns", ServiceAccount: "deleted"}), authz.ReasonUnknownServiceAccount, 1},
		{"refused by the validator", forged, authz.ReasonInvalidToken, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v0, g0 := r.validations.Load(), r.api.gets.Load()
			for round := range 3 {
				got := r.decide(t, c.token, 200)
				if len(got) != 1 || got[string(c.reason)] != 200 {
					t.Fatalf("round %d: answers %v, want 200 × %q", round, got, c.reason)
				}
				v, g := r.validations.Load()-v0, r.api.gets.Load()-g0
				want := int64(round + 1)
				t.Logf("round %d: %d validations, %d ServiceAccount reads for %d requests", round, v, g, 200*(round+1))
				if v != want || g != c.gets*want {
					t.Fatalf("after %d rounds of 200 requests, %d validations and %d reads; want %d and %d (one per negative TTL)", round+1, v, g, want, c.gets*want)
				}
				r.clock.Step(5 * time.Second) // cache.tokenNegativeTTL
			}
		})
	}
	if offers := r.sink.got(); len(offers) != 0 {
		t.Fatalf("refused tokens were offered to the credential source: %q", offers)
	}
}

// TestLaggingInformerIsNotARefusal: a valid token of a ServiceAccount the
// informer has not seen yet (or knows with an older uid) is confirmed with
// one read of the API server and allowed, however many requests present it
// at once, and keeps being allowed after unrelated removals while the
// informer still lags. A ServiceAccount deleted is refused as before: at
// once when the informer sees it, and after one read when the API server
// says so (the refusal is then cached).
func TestLaggingInformerIsNotARefusal(t *testing.T) {
	r := newBoundsRig(t, 100)
	r.api.set("new/sa", "uid-sa")
	r.put(t, "", "new", "sa", "authorization", "Bearer k")
	allow := string(authz.ReasonNone)
	tok := r.token(t, "new", "sa")
	if got := r.decide(t, tok, 200); got[allow] != 200 {
		t.Fatalf("a new ServiceAccount's token, informer lagging: %v", got)
	}
	r.c.WaitTokens()
	if n := r.api.gets.Load(); n != 1 {
		t.Fatalf("200 concurrent requests made %d reads, want 1", n)
	}
	// Other tokens of the same ServiceAccount: confirmed, not read again.
	for i := range 5 {
		r.advance(time.Second) // another iat: another token
		if got := r.decide(t, r.token(t, "new", "sa"), 10); got[allow] != 10 {
			t.Fatalf("token %d of the same ServiceAccount: %v", i, got)
		}
	}
	if n := r.api.gets.Load(); n != 1 {
		t.Fatalf("5 more tokens of the same ServiceAccount: %d reads, want 1", n)
	}
	// An unrelated removal: the informer still lags, so the token is
	// confirmed again, once, and allowed.
	r.informer.remove("other/sa")
	if got := r.decide(t, tok, 50); got[allow] != 50 {
		t.Fatalf("after an unrelated removal: %v", got)
	}
	if n := r.api.gets.Load(); n != 2 {
		t.Fatalf("after an unrelated removal: %d reads, want 2", n)
	}
	// The informer catches up: no more reads.
	r.informer.add("new/sa", "uid-sa")
	r.informer.remove("other/sa2")
	if got := r.decide(t, tok, 50); got[allow] != 50 || r.api.gets.Load() != 2 {
		t.Fatalf("informer caught up: %v, %d reads (want 2)", got, r.api.gets.Load())
	}

	t.Run("older uid", func(t *testing.T) {
		r.informer.add("re/sa", "uid-old")
		r.api.set("re/sa", "uid-sa")
		r.put(t, "", "re", "sa", "authorization", "Bearer k")
		g0 := r.api.gets.Load()
		if got := r.decide(t, r.token(t, "re", "sa"), 20); got[allow] != 20 || r.api.gets.Load()-g0 != 1 {
			t.Fatalf("informer knows an older uid: %v, %d reads", got, r.api.gets.Load()-g0)
		}
	})

	t.Run("deleted, informer sees it", func(t *testing.T) {
		r.informer.add("old/sa", "uid-sa")
		r.api.set("old/sa", "uid-sa")
		r.put(t, "", "old", "sa", "authorization", "Bearer k")
		oldTok := r.token(t, "old", "sa")
		if got := r.decide(t, oldTok, 20); got[allow] != 20 {
			t.Fatalf("before the deletion: %v", got)
		}
		r.c.WaitTokens()
		r.informer.remove("old/sa")
		r.api.set("old/sa", "")
		g0 := r.api.gets.Load()
		// The result was confirmed by the informer, not the API server:
		// the informer's "no" is final, refused at once with no read.
		if got := r.decide(t, oldTok, 50); got[string(authz.ReasonUnknownServiceAccount)] != 50 || r.api.gets.Load() != g0 {
			t.Fatalf("deleted: %v, %d reads", got, r.api.gets.Load()-g0)
		}
	})

	t.Run("deleted while the informer lags", func(t *testing.T) {
		r.api.set("lag/sa", "uid-sa")
		r.put(t, "", "lag", "sa", "authorization", "Bearer k")
		lagTok := r.token(t, "lag", "sa")
		if got := r.decide(t, lagTok, 20); got[allow] != 20 {
			t.Fatalf("before the deletion: %v", got)
		}
		r.c.WaitTokens()
		// Deleted; the informer saw the add and the delete at once.
		r.api.set("lag/sa", "")
		r.informer.remove("lag/sa")
		g0 := r.api.gets.Load()
		for round := range 3 {
			if got := r.decide(t, lagTok, 50); got[string(authz.ReasonUnknownServiceAccount)] != 50 {
				t.Fatalf("round %d after the deletion: %v", round, got)
			}
			r.c.WaitTokens()
		}
		if n := r.api.gets.Load() - g0; n != 1 {
			t.Fatalf("150 requests after the deletion: %d reads, want 1 (the refusal cached)", n)
		}
	})
}

// TestLookupBudgetSpent: with the read budget spent, a token the informer
// does not know is answered tokenreview_unavailable (503, not cached) rather
// than refused, and allowed once the informer knows its ServiceAccount.
func TestLookupBudgetSpent(t *testing.T) {
	r := newBoundsRig(t, 1)
	for _, ns := range []string{"a", "b"} {
		r.api.set(ns+"/sa", "uid-sa")
		r.put(t, "", ns, "sa", "authorization", "Bearer k")
	}
	if d := r.c.Decide(context.Background(), "Bearer "+r.token(t, "a", "sa"), "h"); d.Reason != authz.ReasonNone {
		t.Fatalf("first: %q", d.Reason)
	}
	tokB := "Bearer " + r.token(t, "b", "sa")
	if d := r.c.Decide(context.Background(), tokB, "h"); d.Reason != authz.ReasonTokenReviewUnavailable {
		t.Fatalf("over budget: %q", d.Reason)
	}
	r.informer.add("b/sa", "uid-sa")
	if d := r.c.Decide(context.Background(), tokB, "h"); d.Reason != authz.ReasonNone {
		t.Fatalf("once the informer knows it: %q", d.Reason)
	}
	if n := r.api.gets.Load(); n != 1 {
		t.Fatalf("%d reads, want 1 (budget 1)", n)
	}
}
