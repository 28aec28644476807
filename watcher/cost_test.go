package watcher

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/credinject/credinject/authz"
)

// advance moves the fake clock by total in steps of step, each once the
// identity's refresher waits on the clock again (its refresh is done).
func (r *rig) advance(total, step time.Duration) {
	r.t.Helper()
	for moved := time.Duration(0); moved < total; moved += step {
		r.step(step)
	}
	r.eventually("the refresher to wait again", r.clock.HasWaiters)
}

// prefetched prefetches a bound identity with a credential.
func (r *rig) prefetched(ns, sa string) authz.Identity {
	r.t.Helper()
	id, _ := r.identity(ns, sa, "k1")
	if err := r.w.Prefetch(context.Background(), id); err != nil {
		r.t.Fatal(err)
	}
	return id
}

// TestScheduledRefreshRenews: with events down, a prefetched identity is
// re-read every 2/3 of prefetch.refresh, its Vault token renewed at 2/3 of
// its TTL, and a login made only once the relogin interval (by default the
// TTL granted at login, 1 h) has passed: not one per refresh.
func TestScheduledRefreshRenews(t *testing.T) {
	r := newRig(t)
	id := r.prefetched("ns", "sa")
	if r.vault.count("login") != 1 || r.vault.count("read") != 1 {
		t.Fatalf("prefetch: logins %d, reads %d", r.vault.count("login"), r.vault.count("read"))
	}
	r.advance(59*time.Minute, 10*time.Second)
	// Reads at 200 s, 400 s, ... 3400 s; the token renewed at 40 min.
	if l, n, rd := r.vault.count("login"), r.vault.count("renew"), r.vault.count("read"); l != 1 || n != 1 || rd != 1+17 {
		t.Fatalf("after 59 min: logins %d, renewals %d, reads %d; want 1, 1, 18", l, n, rd)
	}
	r.advance(time.Minute, 10*time.Second)
	if l, mints := r.vault.count("login"), r.minter.count(); l != 2 || mints != 2 {
		t.Fatalf("after 60 min: logins %d, mints %d; want 2, 2 (the relogin interval has passed)", l, mints)
	}
	if e := r.entry("", id); e == nil || e.Value != "Bearer k1" {
		t.Fatalf("entry %+v", e)
	}
	// One live token: the one replaced at the relogin was revoked.
	r.eventually("the replaced token revoked", func() bool { return r.vault.liveTokens() == 1 })
}

// TestRoleChangeRefusedWithinReloginInterval: an identity whose namespace
// the role no longer binds keeps being served with its renewed token only
// until the relogin interval since its last login has passed: the login then
// is refused and the identity is vault_denied.
func TestRoleChangeRefusedWithinReloginInterval(t *testing.T) {
	for name, every := range map[string]time.Duration{
		"default: the token's TTL": 0,
		"10 minutes":               10 * time.Minute,
	} {
		t.Run(name, func(t *testing.T) {
			r := newRigWith(t, func(c *Config) { c.ReloginInterval = every })
			limit := every
			if limit == 0 {
				limit = r.vault.ttl
			}
			id := r.prefetched("ns", "sa")
			r.advance(time.Minute, time.Minute)
			r.vault.bind(id.Key(), false) // the role change, at t0+1m
			r.advance(limit-2*time.Minute, time.Minute)
			if e := r.entry("", id); e == nil || e.Denied != authz.ReasonNone {
				t.Fatalf("before the relogin: %+v; want the credential (reads with the token still succeed)", e)
			}
			// The relogin is due at t0+limit, within limit of the change.
			r.step(time.Minute)
			r.eventually("the identity refused", func() bool {
				e := r.entry("", id)
				return e != nil && e.Denied == authz.ReasonVaultDenied
			})
			// The run stores the refusal, then lets the identity go.
			r.eventually("the refused identity no longer watched", func() bool { return r.w.Len() == 0 })
		})
	}
}

// TestRefusedReadRefusesAtOnce: a read Vault refuses (the token revoked
// with the role change) triggers one forced login; refused, the identity is
// vault_denied right away, not at its relogin interval.
func TestRefusedReadRefusesAtOnce(t *testing.T) {
	r := newRig(t)
	id := r.prefetched("ns", "sa")
	r.vault.bind(id.Key(), false)
	r.vault.forgetTokens()
	logins := r.vault.count("login")
	if err := r.w.Refresh(context.Background(), authz.Scope{Namespace: "ns"}); err != nil {
		t.Fatal(err)
	}
	if e := r.entry("", id); e == nil || e.Denied != authz.ReasonVaultDenied {
		t.Fatalf("entry %+v, want vault_denied", e)
	}
	if got := r.vault.count("login") - logins; got != 1 {
		t.Fatalf("logins after the refused read: %d, want exactly 1", got)
	}
}

// TestRefreshFollowsEvents: while events are connected an identity is
// re-read every 2/3 of RefreshWithEvents; while they are down, every 2/3 of
// Refresh; the switch is made at the next schedule (the app resyncs on a
// drop, as here).
func TestRefreshFollowsEvents(t *testing.T) {
	var up atomic.Bool
	up.Store(true)
	r := newRigWith(t, func(c *Config) {
		c.RefreshWithEvents = time.Hour
		c.EventsConnected = up.Load
	})
	r.vault.ttl = 24 * time.Hour // the token stays out of the way
	r.prefetched("ns", "sa")
	r.advance(39*time.Minute, time.Minute)
	if got := r.vault.count("read"); got != 1 {
		t.Fatalf("connected, 39 min: %d reads, want 1 (the next at 40 min)", got)
	}
	r.advance(time.Minute, time.Minute)
	if got := r.vault.count("read"); got != 2 {
		t.Fatalf("connected, 40 min: %d reads, want 2", got)
	}
	up.Store(false)
	if err := r.w.ResyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.eventually("the resync read", func() bool { return r.vault.count("read") == 3 })
	r.advance(10*time.Minute, 10*time.Second)
	if got := r.vault.count("read"); got != 3+3 {
		t.Fatalf("down, 10 min: %d reads, want 6 (every 200 s)", got)
	}
	up.Store(true)
	if err := r.w.ResyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.eventually("the reconnect's resync read", func() bool { return r.vault.count("read") == 7 })
	r.advance(30*time.Minute, time.Minute)
	if got := r.vault.count("read"); got != 7 {
		t.Fatalf("connected again, 30 min: %d reads, want 7", got)
	}
	if got := r.vault.count("login"); got != 1 {
		t.Fatalf("logins %d, want 1", got)
	}
}

// TestRoleChangeRefusedWithinReloginIntervalRequestOnly: an identity seen
// only on requests (not prefetched) has no service-account token left to log
// in with once the one it presented expires, since cache hits never hand the
// watcher another. Its Vault token must still not be renewed past the relogin
// interval: the identity is let go then (no_token), and its next request
// logs in with that request's token, which Vault refuses after a role change.
func TestRoleChangeRefusedWithinReloginIntervalRequestOnly(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "k1")
	ctx := context.Background()
	// The presented token expires after 30 min, the Vault token's TTL (and
	// so the default relogin interval) is 1 h.
	e, err := r.w.Credential(ctx, "", id, tok, t0.Add(30*time.Minute))
	if err != nil || e.Value != "Bearer k1" {
		t.Fatalf("miss: %+v, %v", e, err)
	}
	r.vault.bind(id.Key(), false) // the role change, at t0
	r.advance(59*time.Minute, time.Minute)
	if e := r.entry("", id); e == nil || e.Denied != authz.ReasonNone {
		t.Fatalf("before the relogin interval: %+v; want the credential (the renewed token still reads)", e)
	}
	// At t0+1h the relogin is due: nothing to log in with, so the identity
	// is let go (nothing more waits on the clock then).
	r.step(time.Minute)
	err = wait.PollUntilContextTimeout(ctx, time.Millisecond, 2*time.Second, true, func(context.Context) (bool, error) {
		e := r.entry("", id)
		return e == nil || e.Denied != authz.ReasonNone, nil
	})
	if err != nil {
		t.Fatalf("at t0+%v, past the relogin interval since the role change, the credential is still served (renewals: %d)",
			r.clock.Now().Sub(t0), r.vault.count("renew"))
	}
	// The next request brings a token of its own: refused at its login.
	e, err = r.w.Credential(ctx, "", id, "jwt:"+id.Key()+":later", r.clock.Now().Add(time.Hour))
	if err != nil || e == nil || e.Denied != authz.ReasonVaultDenied {
		t.Fatalf("next request: %+v, %v; want vault_denied", e, err)
	}
}

// TestRefusedLoginRevokesTheToken: when Vault refuses an identity's login
// (a role change, at its relogin), the token it held until then is revoked,
// and with it the leases read with it: the identity is refused, and the
// audit trail's lease_revoked (token_revoked) must be true in Vault too.
func TestRefusedLoginRevokesTheToken(t *testing.T) {
	r := newRigWith(t, func(c *Config) { c.ReloginInterval = 10 * time.Minute },
		Route{Name: "db", Source: SourceVaultRead, Path: "creds/{namespace}/{serviceaccount}", Header: "x-db", Value: "{username}:{password}"})
	r.vault.leaseMax = 24 * time.Hour
	id, tok := r.identity("ns", "sa", "")
	if _, err := r.miss("db", id, tok); err != nil {
		t.Fatal(err)
	}
	if r.vault.liveTokens() != 1 || r.vault.liveLeases() != 1 {
		t.Fatalf("after the miss: %d tokens, %d leases; want 1, 1", r.vault.liveTokens(), r.vault.liveLeases())
	}
	r.vault.bind(id.Key(), false) // the role change
	r.advance(9*time.Minute, 10*time.Second)
	r.step(time.Minute) // the relogin, refused
	r.eventually("the identity refused", func() bool {
		e := r.entry("db", id)
		return e != nil && e.Denied == authz.ReasonVaultDenied
	})
	r.eventually("its token and lease revoked", func() bool { return r.vault.liveTokens() == 0 && r.vault.liveLeases() == 0 })
}

// TestOfferedTokenKeepsARequestOnlyIdentity: an identity first seen on a
// request (no TokenRequest) holds the token that request presented. When
// the checker offers the token the kubelet rotated in (a new token's first
// validation), the identity logs in again with it when its relogin is due,
// in the background, and its credential stays served; without the offer it
// is let go at that point (TestRoleChangeRefusedWithinReloginIntervalRequestOnly)
// and its next request is a miss.
func TestOfferedTokenKeepsARequestOnlyIdentity(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "k1")
	ctx := context.Background()
	// The presented token expires after 50 min; the relogin is due at 1 h.
	if e, err := r.w.Credential(ctx, "", id, tok, t0.Add(50*time.Minute)); err != nil || e.Value != "Bearer k1" {
		t.Fatalf("miss: %+v, %v", e, err)
	}
	r.advance(40*time.Minute, time.Minute)
	// The kubelet rotated the pod's token; its first request validates it.
	r.w.OfferToken(id, "jwt:"+id.Key()+":rotated", r.clock.Now().Add(time.Hour))
	// A token of another, unwatched identity is ignored.
	r.w.OfferToken(authz.NewIdentity("other", "sa"), "jwt:other/sa:x", r.clock.Now().Add(time.Hour))
	logins := r.vault.count("login")
	r.advance(30*time.Minute, time.Minute) // past the relogin at t0+1h
	if got := r.vault.count("login"); got != logins+1 {
		t.Fatalf("logins %d -> %d across the relogin; want one, with the offered token", logins, got)
	}
	if e := r.entry("", id); e == nil || e.Denied != authz.ReasonNone || e.Value != "Bearer k1" {
		t.Fatalf("after the relogin: %+v; want the credential still served", e)
	}
	for _, rec := range r.audit.since(0) {
		if strings.HasPrefix(rec, string(Forgotten)) {
			t.Fatalf("the identity was let go: %q", rec)
		}
	}
	if r.w.Len() != 1 {
		t.Fatalf("watching %d identities, want 1 (an offer does not start watching)", r.w.Len())
	}
}

// TestPrefetchedSessionIgnoresOfferedTokens: a prefetched identity mints
// its own tokens and keeps none (about 1 KB each at 100,000 identities).
func TestPrefetchedSessionIgnoresOfferedTokens(t *testing.T) {
	s := newSession(authz.NewIdentity("ns", "sa"), nil, nil, nil, nil, 0, nil, 0)
	s.offerNewer("jwt:ns/sa:a", t0.Add(time.Hour))
	if held := s.held(); !slices.Equal(held, []string{"jwt:ns/sa:a"}) {
		t.Fatalf("a request-only session kept %q", held)
	}
	p := newSession(authz.NewIdentity("ns", "sb"), nil, nil, nil, nil, 0, nil, 0)
	p.setPrefetch()
	p.offerNewer("jwt:ns/sb:a", t0.Add(time.Hour))
	if len(p.held()) != 0 {
		t.Fatalf("a prefetched session kept an offered token")
	}
}
