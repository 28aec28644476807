package watcher

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// TestSessionTokenModes: how a session obtains its Vault token.
func TestSessionTokenModes(t *testing.T) {
	tests := map[string]struct {
		// setup prepares the session; then Token(mode) is called once.
		setup   func(r *rig, s *session)
		mode    tokenMode
		wantErr error
		// expected calls to the fake Vault and the minter, after setup
		logins, renews, mints int
		// whether the token returned is the one held before the call
		sameToken bool
	}{
		"presented token logs in": {
			setup: func(r *rig, s *session) { s.offer("jwt:ns/sa:presented", t0.Add(time.Hour)) },
			mode:  reuse, logins: 1,
		},
		"valid token is reused": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(time.Hour))
				mustToken(r, s, reuse)
			},
			mode: reuse, sameToken: true,
		},
		"prefetched identity mints a token": {
			setup: func(r *rig, s *session) { s.setPrefetch() },
			mode:  reuse, logins: 1, mints: 1,
		},
		"renewed at two thirds of its life": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(2*time.Hour))
				mustToken(r, s, reuse)
				r.clock.Step(41 * time.Minute)
			},
			mode: reuse, renews: 1, sameToken: true,
		},
		"not renewed before two thirds of its life": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(2*time.Hour))
				mustToken(r, s, reuse)
				r.clock.Step(39 * time.Minute)
			},
			mode: reuse, sameToken: true,
		},
		"renewal refused logs in again": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(2*time.Hour))
				mustToken(r, s, reuse)
				r.vault.forgetTokens()
				r.clock.Step(41 * time.Minute)
			},
			mode: reuse, renews: 1, logins: 1,
		},
		"renewal capped by the max TTL logs in again": {
			setup: func(r *rig, s *session) {
				r.vault.maxTTL = 90 * time.Minute
				s.every = 24 * time.Hour
				s.setPrefetch()
				mustToken(r, s, reuse)
				r.clock.Step(41 * time.Minute)
				mustToken(r, s, reuse) // renewed to the max TTL (90 min)
				r.clock.Step(34 * time.Minute)
			},
			mode: reuse, renews: 1, logins: 1, mints: 1,
		},
		"not renewable is replaced at two thirds of its life": {
			setup: func(r *rig, s *session) {
				r.vault.notRenewable = true
				s.setPrefetch()
				mustToken(r, s, reuse)
				r.clock.Step(41 * time.Minute)
			},
			mode: reuse, logins: 1, mints: 1,
		},
		"relogin interval passed": {
			setup: func(r *rig, s *session) {
				s.every = 20 * time.Minute
				s.setPrefetch()
				mustToken(r, s, reuse)
				r.clock.Step(21 * time.Minute)
			},
			mode: reuse, logins: 1, mints: 1,
		},
		"relogin by default at the TTL granted at login": {
			setup: func(r *rig, s *session) {
				s.setPrefetch()
				mustToken(r, s, reuse)
				r.clock.Step(41 * time.Minute)
				mustToken(r, s, reuse) // renewed: valid until 101 min
				r.clock.Step(20 * time.Minute)
			},
			mode: reuse, logins: 1, mints: 1,
		},
		// Past the relogin interval the token is not used, even without a
		// token to log in with: Vault has not checked the role's bindings
		// for longer than the interval (the identity is let go until a
		// request brings a token).
		"relogin due without a token to log in with: no token": {
			setup: func(r *rig, s *session) {
				r.vault.ttl = 2 * time.Hour
				s.every = 30 * time.Minute
				s.offer("jwt:ns/sa:presented", t0.Add(time.Hour))
				mustToken(r, s, reuse)
				r.clock.Step(59*time.Minute + 55*time.Second) // the SA token is about to expire
			},
			mode: reuse, wantErr: errNoToken,
		},
		"vault away at renewal keeps the token": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(2*time.Hour))
				mustToken(r, s, reuse)
				r.clock.Step(41 * time.Minute)
				r.vault.setDown(true)
			},
			mode: reuse, renews: 1, sameToken: true,
		},
		"forced login after a refused read": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(time.Hour))
				mustToken(r, s, reuse)
			},
			mode: force, logins: 1,
		},
		"no token to log in with": {
			setup:   func(r *rig, s *session) {},
			mode:    reuse,
			wantErr: errNoToken,
		},
		"expired presented token": {
			setup:   func(r *rig, s *session) { s.offer("jwt:ns/sa:presented", t0.Add(5*time.Second)) },
			mode:    reuse,
			wantErr: errNoToken,
		},
		"unbound identity is refused": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(time.Hour))
				r.vault.bind("ns/sa", false)
			},
			mode: reuse, logins: 1, wantErr: authz.ErrVaultDenied,
		},
		"vault down": {
			setup: func(r *rig, s *session) {
				s.offer("jwt:ns/sa:presented", t0.Add(time.Hour))
				r.vault.setDown(true)
			},
			mode: reuse, logins: 1, wantErr: authz.ErrVaultUnavailable,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			id, _ := r.identity("ns", "sa", "k")
			var revoked []string
			s := newSession(id, r.vault, r.minter, r.clock, func(tok string) { revoked = append(revoked, tok) }, 0, nil, 0)
			tc.setup(r, s)
			before := s.token
			logins, renews, mints := r.vault.count("login"), r.vault.count("renew"), r.minter.count()
			tok, err := s.Token(context.Background(), tc.mode)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Token = %q, %v; want %v", tok, err, tc.wantErr)
				}
			} else if err != nil || tok == "" {
				t.Fatalf("Token = %q, %v", tok, err)
			}
			if got := r.vault.count("login") - logins; got != tc.logins {
				t.Errorf("logins = %d, want %d", got, tc.logins)
			}
			if got := r.vault.count("renew") - renews; got != tc.renews {
				t.Errorf("renewals = %d, want %d", got, tc.renews)
			}
			if got := r.minter.count() - mints; got != tc.mints {
				t.Errorf("mints = %d, want %d", got, tc.mints)
			}
			if held := s.held(); len(held) > 1 || len(held) == 1 && held[0] != "jwt:ns/sa:presented" {
				t.Errorf("a minted service-account token is kept after its login")
			}
			if err == nil && (tok == before) != tc.sameToken {
				t.Errorf("token %q, before %q: same = %v, want %v", tok, before, tok == before, tc.sameToken)
			}
			// One live Vault token per identity: a replaced token is revoked
			// once the refresh that replaced it is done.
			if len(revoked) != 0 {
				t.Errorf("revoked %v before the refresh was done", revoked)
			}
			s.retire()
			if err == nil && before != "" && tok != before && (len(revoked) != 1 || revoked[0] != before) {
				t.Errorf("replaced %q but revoked %v", before, revoked)
			}
		})
	}
}

func mustToken(r *rig, s *session, mode tokenMode) {
	r.t.Helper()
	if _, err := s.Token(context.Background(), mode); err != nil {
		r.t.Fatal(err)
	}
}

// TestMissPath: the checker's miss path reads the identity's own credential
// with its presented token, or answers with a typed deny.
func TestMissPath(t *testing.T) {
	tests := map[string]struct {
		setup  func(r *rig, id authz.Identity)
		value  string
		reason authz.Reason // of the entry or the error
	}{
		"own credential": {setup: func(*rig, authz.Identity) {}, value: "Bearer key-a"},
		"nothing stored": {setup: func(r *rig, id authz.Identity) {
			r.vault.mu.Lock()
			delete(r.vault.data, "egress/"+id.Key())
			r.vault.mu.Unlock()
		}, reason: authz.ReasonNoCredential},
		"unbound namespace": {setup: func(r *rig, id authz.Identity) { r.vault.bind(id.Key(), false) }, reason: authz.ReasonVaultDenied},
		"vault down":        {setup: func(r *rig, id authz.Identity) { r.vault.setDown(true) }, reason: authz.ReasonVaultUnavailable},
		"not injectable":    {setup: func(r *rig, id authz.Identity) { r.vault.put(id.Key(), "bad\r\nvalue") }, reason: authz.ReasonInvalidCredential},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			id, tok := r.identity("team-a", "billing", "key-a")
			tc.setup(r, id)
			e, err := r.miss("", id, tok)
			var got authz.Reason
			switch {
			case err != nil:
				got = authz.ReasonOf(err)
			case e == nil:
				t.Fatal("no entry and no error")
			default:
				got = e.Denied
				if e.Identity != id {
					t.Fatalf("entry of %v, want %v", e.Identity, id)
				}
			}
			if got != tc.reason {
				t.Fatalf("reason %q (err %v), want %q", got, err, tc.reason)
			}
			if tc.reason == authz.ReasonNone && e.Value != tc.value {
				t.Fatalf("value %q, want %q", e.Value, tc.value)
			}
		})
	}
}

// TestRefusedIdentityDeniedOnEveryRoute: Vault refusing one route's read
// refuses the identity, so no route serves an older credential.
func TestRefusedIdentityDeniedOnEveryRoute(t *testing.T) {
	r := newRig(t,
		Route{Name: "a", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}"},
		Route{Name: "b", Path: "other/{namespace}/{serviceaccount}", Header: "x-api-key", Value: "{api_key}"})
	id, tok := r.identity("ns", "sa", "k")
	if e, err := r.miss("a", id, tok); err != nil || e.Denied != authz.ReasonNone {
		t.Fatalf("route a: %+v, %v", e, err)
	}
	// Route b's path is not the identity's: Vault refuses it, twice.
	e, err := r.miss("b", id, tok)
	if err != nil || e.Denied != authz.ReasonVaultDenied {
		t.Fatalf("route b: %+v, %v; want a vault_denied entry", e, err)
	}
	for _, route := range []string{"a", "b"} {
		if e := r.entry(route, id); e == nil || e.Denied != authz.ReasonVaultDenied {
			t.Errorf("route %q: %+v, want vault_denied", route, e)
		}
	}
	if r.w.Len() != 0 {
		t.Errorf("a refused identity is still watched (%d)", r.w.Len())
	}
}

// TestStoreOrdering: one identity's reads never overlap, so a read that
// started earlier never overwrites a newer one (a request made while a read
// is in flight runs after it, and its read is the one left in the cache),
// and a read that finishes after the identity was forgotten does not bring
// its credential back.
func TestStoreOrdering(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "v1")
	if _, err := r.miss("", id, tok); err != nil {
		t.Fatal(err)
	}
	x := r.w.watched(id)
	named := authz.Scope{Namespace: "ns", ServiceAccount: "sa"}

	// An old read is held at Vault while a newer request is made.
	gate := make(chan struct{})
	r.vault.mu.Lock()
	r.vault.readGate = gate
	r.vault.mu.Unlock()
	reads := r.vault.count("read")
	old := make(chan error, 2)
	go func() { old <- r.w.Refresh(context.Background(), named) }()
	r.eventually("the old read to reach Vault", func() bool { return r.vault.count("read") == reads+1 })
	go func() { old <- r.w.Refresh(context.Background(), named) }()
	r.eventually("the newer request recorded", func() bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.pending != nil
	})
	if got := r.vault.count("read"); got != reads+1 {
		t.Fatalf("%d reads in flight for one identity; want 1", got-reads)
	}
	r.vault.put(id.Key(), "v2") // what the newer read finds
	close(gate)
	for range 2 {
		if err := <-old; err != nil {
			t.Fatal(err)
		}
	}
	if got := r.vault.count("read"); got != reads+2 {
		t.Fatalf("%d reads; want 2, one after the other", got-reads)
	}
	if e := r.entry("", id); e == nil || e.Value != "Bearer v2" {
		t.Fatalf("entry %+v; want the newer read's", e)
	}

	// Forgotten while a read is in flight: the read must not resurrect it.
	gate = make(chan struct{})
	r.vault.mu.Lock()
	r.vault.readGate = gate
	r.vault.mu.Unlock()
	reads = r.vault.count("read")
	go func() { old <- r.w.Refresh(context.Background(), named) }()
	r.eventually("the read to reach Vault", func() bool { return r.vault.count("read") == reads+1 })
	r.w.Forget(id)
	close(gate)
	<-old // cancelled with the identity: its error says so, or nothing
	if e := r.entry("", id); e != nil {
		t.Fatalf("a forgotten identity's credential came back: %+v", e)
	}
}

// TestStalePolicy: a credential is fresh, then served stale while Vault is
// down, then expired past the grace; the refresher backs off meanwhile and
// recovers when Vault is back.
func TestStalePolicy(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "k1")
	e, err := r.miss("", id, tok)
	if err != nil || e.State(r.clock.Now()) != cache.Fresh {
		t.Fatalf("first read: %+v, %v", e, err)
	}
	r.vault.setDown(true)
	reads := r.vault.count("read")
	// The scheduled refresh (2/3 of 5 min) fails; the entry stays.
	r.step(201 * time.Second)
	r.eventually("the scheduled refresh", func() bool { return r.vault.count("read") > reads || r.vault.count("login") > 1 })
	r.step(100 * time.Second) // past FreshUntil (5 min)
	if got := r.entry("", id); got != e || got.State(r.clock.Now()) != cache.Stale {
		t.Fatalf("after refresh: %+v (state %v), want the same entry, stale", got, got.State(r.clock.Now()))
	}
	r.clock.Step(10 * time.Minute) // past the 15 min grace
	if got := r.entry("", id); got.State(r.clock.Now()) != cache.Expired {
		t.Fatalf("state %v, want expired", got.State(r.clock.Now()))
	}
	// Vault back: the next retry stores a fresh credential.
	r.vault.put(id.Key(), "k2")
	r.vault.setDown(false)
	r.eventually("a fresh credential after the outage", func() bool {
		if r.clock.HasWaiters() {
			r.clock.Step(30 * time.Second)
		}
		got := r.entry("", id)
		return got != nil && got.Value == "Bearer k2" && got.State(r.clock.Now()) == cache.Fresh
	})
}

// TestForgetEvicts: a deleted ServiceAccount's entries go and its refresher
// stops.
func TestForgetEvicts(t *testing.T) {
	r := newRig(t,
		Route{Name: "a", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}"},
		Route{Name: "b", Path: "egress/{namespace}/{serviceaccount}", Header: "x-api-key", Value: "{api_key}"})
	id, tok := r.identity("ns", "sa", "k")
	other, otherTok := r.identity("ns", "other", "k-other")
	for _, route := range []string{"a", "b"} {
		if _, err := r.miss(route, id, tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.miss("a", other, otherTok); err != nil {
		t.Fatal(err)
	}
	if r.w.Len() != 2 {
		t.Fatalf("Len = %d, want 2", r.w.Len())
	}
	r.w.Forget(id)
	if r.w.Len() != 1 || r.entry("a", id) != nil || r.entry("b", id) != nil {
		t.Fatalf("after Forget: Len %d, a %+v, b %+v", r.w.Len(), r.entry("a", id), r.entry("b", id))
	}
	if e := r.entry("a", other); e == nil || e.Value != "Bearer k-other" {
		t.Fatalf("another identity lost its entry: %+v", e)
	}
}

// TestRefreshScope: an event re-reads only the identities and route it
// names.
func TestRefreshScope(t *testing.T) {
	r := newRig(t)
	a, ta := r.identity("ns-a", "sa", "a1")
	b, tb := r.identity("ns-b", "sa", "b1")
	for _, c := range []struct {
		id  authz.Identity
		tok string
	}{{a, ta}, {b, tb}} {
		if _, err := r.miss("", c.id, c.tok); err != nil {
			t.Fatal(err)
		}
	}
	r.vault.put(a.Key(), "a2")
	r.vault.put(b.Key(), "b2")
	if err := r.w.Refresh(context.Background(), authz.Scope{Namespace: "ns-a"}); err != nil {
		t.Fatal(err)
	}
	if got := r.entry("", a).Value; got != "Bearer a2" {
		t.Errorf("a = %q, want the rotated value", got)
	}
	if got := r.entry("", b).Value; got != "Bearer b1" {
		t.Errorf("b = %q, want the old value (not in scope)", got)
	}
	if err := r.w.Refresh(context.Background(), authz.Scope{Route: "elsewhere"}); err != nil {
		t.Fatal(err)
	}
	if got := r.entry("", b).Value; got != "Bearer b1" {
		t.Errorf("b = %q after an event for another route", got)
	}
	r.vault.setDown(true)
	if err := r.w.Refresh(context.Background(), authz.Scope{}); !errors.Is(err, authz.ErrVaultUnavailable) {
		t.Errorf("Refresh with Vault down = %v, want vault_unavailable", err)
	}
}

// TestPrefetchMintsAndResyncs: a prefetched identity is read with a minted
// token before any request, and a resync re-reads it.
func TestPrefetchMintsAndResyncs(t *testing.T) {
	r := newRig(t)
	id, _ := r.identity("ns", "sa", "p1")
	if err := r.w.Prefetch(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if e := r.entry("", id); e == nil || e.Value != "Bearer p1" || r.minter.count() != 1 {
		t.Fatalf("prefetched entry %+v, mints %d", e, r.minter.count())
	}
	r.vault.put(id.Key(), "p2")
	if err := r.w.ResyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.eventually("the resync to re-read", func() bool { return r.entry("", id).Value == "Bearer p2" })
}
