package watcher

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
)

// held is a copy of the service-account tokens s keeps, newest first.
func (s *session) held() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var jwts []string
	for _, t := range s.sa {
		jwts = append(jwts, t.jwt)
	}
	return jwts
}

// TestSessionKeepsTheNewestTokens: a request-only session keeps the newest
// maxSATokens tokens offered, newest first (by expiry; a token without one
// counts as newest; of two with one expiry, the later offered), each once.
func TestSessionKeepsTheNewestTokens(t *testing.T) {
	for name, tc := range map[string]struct {
		offers []saToken
		want   []string
	}{
		"newest first": {
			offers: []saToken{{"a", t0.Add(time.Hour)}, {"c", t0.Add(3 * time.Hour)}, {"b", t0.Add(2 * time.Hour)}},
			want:   []string{"c", "b", "a"},
		},
		"bounded: the oldest dropped": {
			offers: []saToken{{"a", t0.Add(time.Hour)}, {"b", t0.Add(2 * time.Hour)}, {"c", t0.Add(3 * time.Hour)}, {"d", t0.Add(4 * time.Hour)}},
			want:   []string{"d", "c", "b"},
		},
		"an older one than all of a full set is not kept": {
			offers: []saToken{{"b", t0.Add(2 * time.Hour)}, {"c", t0.Add(3 * time.Hour)}, {"d", t0.Add(4 * time.Hour)}, {"a", t0.Add(time.Hour)}},
			want:   []string{"d", "c", "b"},
		},
		"held once": {
			offers: []saToken{{"a", t0.Add(time.Hour)}, {"a", t0.Add(time.Hour)}, {"b", t0.Add(2 * time.Hour)}, {"a", t0.Add(time.Hour)}},
			want:   []string{"b", "a"},
		},
		"same expiry: the later offered first": {
			offers: []saToken{{"a", t0.Add(time.Hour)}, {"b", t0.Add(time.Hour)}},
			want:   []string{"b", "a"},
		},
		"no expiry counts as newest": {
			offers: []saToken{{"a", t0.Add(time.Hour)}, {"legacy", time.Time{}}, {"b", t0.Add(2 * time.Hour)}},
			want:   []string{"legacy", "b", "a"},
		},
		"an empty token is not kept": {
			offers: []saToken{{"", t0.Add(time.Hour)}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := newSession(authz.NewIdentity("ns", "sa"), nil, nil, nil, nil, 0, nil, 0)
			for _, o := range tc.offers {
				s.offerNewer(o.jwt, o.exp)
			}
			if got := s.held(); !slices.Equal(got, tc.want) {
				t.Fatalf("held %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRefusedTokenFallsBackToAnOlderOne: a request-only identity's newest
// offered token belongs to a pod that is gone, so Vault refuses the relogin
// with it. The session logs in with the older live token its requests
// presented instead of refusing the identity, keeps serving its credential,
// and drops the refused token, so the next relogin does not try it again.
func TestRefusedTokenFallsBackToAnOlderOne(t *testing.T) {
	r := newRigWith(t, func(c *Config) { c.ReloginInterval = 10 * time.Minute })
	id, _ := r.identity("ns", "sa", "k1")
	older, newest := "jwt:ns/sa:pod-b", "jwt:ns/sa:pod-a"
	ctx := context.Background()
	if e, err := r.w.Credential(ctx, "", id, older, t0.Add(3*time.Hour)); err != nil || e.Value != "Bearer k1" {
		t.Fatalf("miss: %+v, %v", e, err)
	}
	r.w.OfferToken(id, newest, t0.Add(4*time.Hour))
	r.vault.goneToken(newest) // pod-a deleted
	logins, granted := r.vault.count("login"), len(r.vault.granted())

	r.advance(10*time.Minute, time.Minute) // the relogin
	if got := r.vault.count("login") - logins; got != 2 {
		t.Fatalf("%d logins at the relogin; want 2: the newest token refused, then the older one", got)
	}
	g := r.vault.granted()
	if len(g) != granted+1 || g[len(g)-1].jwt != older {
		t.Fatalf("granted logins %+v; want one more, with the older token", g[granted:])
	}
	if e := r.entry("", id); e == nil || e.Denied != authz.ReasonNone || e.Value != "Bearer k1" {
		t.Fatalf("after the relogin: %+v; want the credential still served", e)
	}
	for _, rec := range r.audit.since(0) {
		if strings.HasPrefix(rec, string(Forgotten)) || strings.HasPrefix(rec, string(Refused)) {
			t.Fatalf("the identity was refused or let go: %q", rec)
		}
	}
	x := r.w.ids[id.Key()]
	if x == nil {
		t.Fatal("the identity is no longer watched")
	}
	if held := x.session.held(); !slices.Equal(held, []string{older}) {
		t.Fatalf("held %q after the fallback; want the refused token dropped", held)
	}

	logins = r.vault.count("login")
	r.advance(10*time.Minute, time.Minute) // the next relogin
	if got := r.vault.count("login") - logins; got != 1 {
		t.Fatalf("%d logins at the next relogin; want 1 (the refused token is not tried again)", got)
	}
}

// TestEveryTokenRefusedDeniesTheIdentity: when Vault refuses every token
// held (the role no longer binds the identity), each is tried once and the
// identity is refused, as with one token.
func TestEveryTokenRefusedDeniesTheIdentity(t *testing.T) {
	r := newRigWith(t, func(c *Config) { c.ReloginInterval = 10 * time.Minute })
	id, tok := r.identity("ns", "sa", "k1")
	if _, err := r.miss("", id, tok); err != nil {
		t.Fatal(err)
	}
	r.w.OfferToken(id, "jwt:ns/sa:b", t0.Add(2*time.Hour))
	r.w.OfferToken(id, "jwt:ns/sa:c", t0.Add(3*time.Hour))
	r.w.OfferToken(id, "jwt:ns/sa:d", t0.Add(4*time.Hour)) // "presented" (t0+1h) is dropped
	r.vault.bind(id.Key(), false)
	logins := r.vault.count("login")
	r.advance(9*time.Minute, time.Minute)
	r.step(time.Minute)
	r.eventually("the identity refused", func() bool {
		e := r.entry("", id)
		return e != nil && e.Denied == authz.ReasonVaultDenied
	})
	if got := r.vault.count("login") - logins; got != maxSATokens {
		t.Fatalf("%d logins; want %d, one per held token", got, maxSATokens)
	}
}

// TestVaultDownTriesNoOtherToken: a login that fails because Vault cannot
// be asked says nothing of the token, so no other is tried and none dropped.
func TestVaultDownTriesNoOtherToken(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "k1")
	s := newSession(id, r.vault, nil, r.clock, nil, 0, nil, 0)
	s.offer(tok, t0.Add(time.Hour))
	s.offer("jwt:ns/sa:newer", t0.Add(2*time.Hour))
	r.vault.setDown(true)
	if _, err := s.Token(context.Background(), force); classify(err) != outcomeRetry {
		t.Fatalf("Token = %v; want vault_unavailable", err)
	}
	if got := r.vault.count("login"); got != 1 {
		t.Fatalf("%d logins; want 1", got)
	}
	if held := s.held(); len(held) != 2 {
		t.Fatalf("held %q; want both kept", held)
	}
}

// TestPrefetchedFallsBackToAMintedToken: a prefetched identity whose
// presented token (kept from a miss) is refused logs in with a freshly
// minted one.
func TestPrefetchedFallsBackToAMintedToken(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "k1")
	s := newSession(id, r.vault, r.minter, r.clock, nil, 0, nil, 0)
	s.setPrefetch()
	s.offer(tok, t0.Add(time.Hour))
	r.vault.goneToken(tok)
	if _, err := s.Token(context.Background(), force); err != nil {
		t.Fatalf("Token: %v", err)
	}
	if r.vault.count("login") != 2 || r.minter.count() != 1 {
		t.Fatalf("%d logins, %d mints; want 2, 1", r.vault.count("login"), r.minter.count())
	}
	if held := s.held(); len(held) != 0 {
		t.Fatalf("held %q; want the refused token dropped and the minted one not kept", held)
	}
}
