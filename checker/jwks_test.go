package checker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/internal/satoken"
)

// keyServer is a real HTTP server for a key set: it serves the keys it is
// given, or 503 while failing, and counts the requests it saw.
type keyServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    *jose.JSONWebKeySet
	failing bool
	hits    atomic.Int64
}

func newKeyServer(t *testing.T, keys *jose.JSONWebKeySet) *keyServer {
	s := &keyServer{keys: keys}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		failing, keys := s.failing, s.keys
		s.mu.Unlock()
		if failing {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(keys)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *keyServer) set(keys *jose.JSONWebKeySet, failing bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys, s.failing = keys, failing
}

// TestJWKSRefetchBounded: tokens signed with a key the set does not hold
// (a rotated key, or garbage) cause at most one fetch of the key set per
// MinRefetch, whether the last fetch succeeded or the endpoint fails; while
// the last fetch failed such a token is tokenreview_unavailable (not
// judged), a token of a known key is valid throughout, and the rotated key
// is found by the first fetch after the endpoint recovers.
func TestJWKSRefetchBounded(t *testing.T) {
	r := newOfflineRig(t)
	key2, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss2, err := satoken.FromKey(testIssuer, "k2", key2, jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	mint := func(iss *satoken.Issuer) string {
		tok, err := iss.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", UID: "u", Audiences: []string{testAud}, IssuedAt: r.clk.Now(), TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	srv := newKeyServer(t, r.iss.JWKS())
	ctx := context.Background()
	v, err := NewJWKSValidator(ctx, JWKSConfig{Issuer: testIssuer, Audiences: []string{testAud}, URL: srv.URL, Client: srv.Client(), Clock: r.clk, MinRefetch: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	// validateAll validates n tokens signed with iss from 10 goroutines and
	// returns the reasons seen and the fetches they caused.
	validateAll := func(iss *satoken.Issuer) (map[authz.Reason]int, int64) {
		before := srv.hits.Load()
		var mu sync.Mutex
		seen := map[authz.Reason]int{}
		var wg sync.WaitGroup
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range n / 10 {
					_, err := v.Validate(ctx, mint(iss))
					mu.Lock()
					seen[authz.ReasonOf(err)]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return seen, srv.hits.Load() - before
	}
	expect := func(step string, iss *satoken.Issuer, reason authz.Reason, fetches int64) {
		t.Helper()
		seen, got := validateAll(iss)
		if len(seen) != 1 || seen[reason] != n || got != fetches {
			t.Fatalf("%s: reasons %v, %d fetches; want %d × %q, %d fetches", step, seen, got, n, reason, fetches)
		}
	}
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("%d fetches at start, want 1", n)
	}
	expect("unknown kid right after a fetch", iss2, authz.ReasonInvalidToken, 0)
	r.clk.Step(10 * time.Second)
	expect("unknown kid after MinRefetch", iss2, authz.ReasonInvalidToken, 1)

	srv.set(r.iss.JWKS(), true)
	r.clk.Step(10 * time.Second)
	expect("unknown kid, endpoint failing", iss2, authz.ReasonTokenReviewUnavailable, 1)
	expect("known kid, endpoint failing", r.iss, authz.ReasonNone, 0)
	r.clk.Step(9 * time.Second)
	expect("unknown kid, endpoint failing, within MinRefetch", iss2, authz.ReasonTokenReviewUnavailable, 0)
	r.clk.Step(time.Second)
	expect("unknown kid, endpoint failing, after MinRefetch", iss2, authz.ReasonTokenReviewUnavailable, 1)

	both := &jose.JSONWebKeySet{Keys: append(r.iss.JWKS().Keys, iss2.JWKS().Keys...)}
	srv.set(both, false)
	expect("rotated key served, within MinRefetch of the failure", iss2, authz.ReasonTokenReviewUnavailable, 0)
	r.clk.Step(10 * time.Second)
	expect("rotated key served", iss2, authz.ReasonNone, 1)
	r.clk.Step(10 * time.Second)
	expect("rotated key known", iss2, authz.ReasonNone, 0)
}
