package watcher

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// TestLeaseKept: a leased secret is renewed at about 2/3 of its TTL (same
// value, no new read), read anew before its max TTL with the old lease
// revoked, never held twice for long, and revoked with the identity's token
// when the identity is forgotten.
func TestLeaseKept(t *testing.T) {
	r := newRig(t, Route{Name: "db", Source: SourceVaultRead, Path: "creds/{namespace}/{serviceaccount}", Header: "x-db", Value: "{username}"})
	r.vault.leaseMax = 100 * time.Second // before the identity's full refresh (200 s)
	id, tok := r.identity("ns", "sa", "")
	e, err := r.miss("db", id, tok)
	if err != nil || e.Value != "u2" {
		t.Fatalf("first read: %+v, %v", e, err)
	}
	// Never served past the lease (1 min) less the margin.
	if !e.ExpiresAt.Before(t0.Add(time.Minute)) || e.ExpiresAt.Before(t0.Add(45*time.Second)) {
		t.Fatalf("served until %v; want just before the lease's end", e.ExpiresAt.Sub(t0))
	}
	r.step(41 * time.Second) // 2/3 of 60 s
	r.eventually("a renewal", func() bool { return r.vault.count("renew_lease") == 1 })
	r.eventually("the renewed entry", func() bool {
		got := r.entry("db", id)
		return got != nil && got.Value == "u2" && got.ExpiresAt.After(e.ExpiresAt)
	})
	if got := r.vault.count("read"); got != 1 {
		t.Fatalf("reads = %d after a renewal; want 1", got)
	}
	// The max TTL caps a renewal; the next refresh reads anew. Over many
	// refreshes the identity always has a valid credential and one lease.
	values := map[string]bool{}
	for range 120 {
		r.step(5 * time.Second)
		r.eventually("the refresh", func() bool { return r.clock.HasWaiters() })
		if n := r.vault.liveLeases(); n > 1 {
			t.Fatalf("%d live leases for one identity and route", n)
		}
		got := r.entry("db", id)
		if got == nil || got.State(r.clock.Now()) == cache.Expired {
			t.Fatalf("no valid credential at %v: %+v", r.clock.Now().Sub(t0), got)
		}
		values[got.Value] = true
	}
	if len(values) < 2 || r.vault.count("revoke_lease") == 0 {
		t.Fatalf("values %v, revoked leases %d: want a new secret before the max TTL and the old lease revoked", values, r.vault.count("revoke_lease"))
	}
	r.w.Forget(id)
	r.eventually("the lease revoked with the token", func() bool { return r.vault.liveLeases() == 0 && r.vault.liveTokens() == 0 })
}

// TestIdentityTokenRefreshed: an identity token is minted again before it
// expires and never served past it.
func TestIdentityTokenRefreshed(t *testing.T) {
	r := newRig(t, Route{Name: "fed", Source: SourceIdentityToken, Path: "identity/oidc/token/egress_{namespace}", Header: "authorization", Value: "Bearer {token}"})
	id, tok := r.identity("ns", "sa", "")
	e, err := r.miss("fed", id, tok)
	if err != nil || e.Denied != authz.ReasonNone {
		t.Fatalf("first mint: %+v, %v", e, err)
	}
	if !e.FreshUntil.Before(t0.Add(time.Minute)) {
		t.Fatalf("fresh until %v; want before the token's 60 s", e.FreshUntil.Sub(t0))
	}
	r.step(41 * time.Second)
	r.eventually("a new token", func() bool {
		got := r.entry("fed", id)
		return got != nil && got.Value != e.Value
	})
	if got := r.vault.count("login"); got != 1 {
		t.Fatalf("logins = %d; a token refresh needs no new login", got)
	}
}

// tokenEndpoint is a fake OAuth2 token endpoint: it issues tokens for one
// client, refuses others, and can be taken down.
type tokenEndpoint struct {
	mu     sync.Mutex
	n      int
	down   bool
	client string
}

func (f *tokenEndpoint) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, secret, _ := req.BasicAuth()
	switch {
	case f.down:
		http.Error(w, "down", http.StatusBadGateway)
	case id != f.client || secret != "s3cret" || req.FormValue("grant_type") != "client_credentials":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":"invalid_client"}`)
	default:
		f.n++
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"at-%d","token_type":"bearer","expires_in":60}`, f.n)
	}
}

func (f *tokenEndpoint) set(down bool, client string) {
	f.mu.Lock()
	f.down, f.client = down, client
	f.mu.Unlock()
}

// TestOAuth2ClientCredentials: the token is cached until its expiry less a
// margin, refreshed ahead of it, served while the endpoint is down and still
// valid, 503 after; a refused client is 403 token_endpoint_refused.
func TestOAuth2ClientCredentials(t *testing.T) {
	ep := &tokenEndpoint{client: "ns-sa"}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	r := newRig(t, Route{Name: "partner", Source: SourceOAuth2, Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {access_token}", TokenURL: srv.URL, ClientAuth: ClientAuthBasic})
	id, tok := r.identity("ns", "sa", "")
	r.vault.mu.Lock()
	r.vault.data["egress/"+id.Key()] = map[string]any{"client_id": "ns-sa", "client_secret": "s3cret"}
	r.vault.mu.Unlock()

	e, err := r.miss("partner", id, tok)
	if err != nil || e.Value != "Bearer at-1" {
		t.Fatalf("first token: %+v, %v", e, err)
	}
	r.step(41 * time.Second)
	r.eventually("a token refreshed ahead of expiry", func() bool {
		got := r.entry("partner", id)
		return got != nil && got.Value == "Bearer at-2"
	})
	ep.set(true, "ns-sa")
	r.step(41 * time.Second)
	r.eventually("a failed refresh", func() bool { return r.clock.HasWaiters() })
	if got := r.entry("partner", id); got == nil || got.Value != "Bearer at-2" || got.State(r.clock.Now()) == cache.Expired {
		t.Fatalf("endpoint down: %+v; want the still-valid token", got)
	}
	r.clock.Step(30 * time.Second) // past the token's expiry
	if got := r.entry("partner", id); got != nil && got.State(r.clock.Now()) != cache.Expired {
		t.Fatalf("served past the token's expiry: %+v", got)
	}
	r.w.Forget(id)
	if _, err := r.miss("partner", id, tok); !errors.Is(err, authz.ErrTokenEndpointUnavailable) {
		t.Fatalf("endpoint down, nothing cached: %v; want token_endpoint_unavailable", err)
	}
	ep.set(false, "someone-else")
	if e, err := r.miss("partner", id, tok); err != nil || e == nil || e.Denied != authz.ReasonTokenEndpointRefused {
		t.Fatalf("refused client: %+v, %v; want a token_endpoint_refused entry", e, err)
	}
}

// TestRefusedMintedRouteNotRetriedHot: after the token endpoint refuses a
// client, the route waits for the identity's schedule instead of retrying at
// once, and a rotation event reads a leased secret anew instead of renewing.
func TestRefusedMintedRouteNotRetriedHot(t *testing.T) {
	ep := &tokenEndpoint{client: "ns-sa"}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	r := newRig(t,
		Route{Name: "partner", Source: SourceOAuth2, Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {access_token}", TokenURL: srv.URL},
		Route{Name: "db", Source: SourceVaultRead, Path: "creds/{namespace}/{serviceaccount}", Header: "x-db", Value: "{username}"})
	id, tok := r.identity("ns", "sa", "")
	r.vault.mu.Lock()
	r.vault.data["egress/"+id.Key()] = map[string]any{"client_id": "ns-sa", "client_secret": "s3cret"}
	r.vault.mu.Unlock()
	for _, route := range []string{"partner", "db"} {
		if _, err := r.miss(route, id, tok); err != nil {
			t.Fatal(err)
		}
	}
	ep.set(false, "someone-else")
	r.step(41 * time.Second) // both due: the token refused, the lease renewed
	r.eventually("the refusal stored", func() bool {
		e := r.entry("partner", id)
		return e != nil && e.Denied == authz.ReasonTokenEndpointRefused
	})
	r.eventually("the refresher waiting", r.clock.HasWaiters)
	if due, ok := r.w.watched(id).earliestDue(); ok && !due.After(r.clock.Now()) {
		t.Fatalf("next due %v (ok %v); want a time ahead of now", due, ok)
	}
	before := r.entry("db", id).Value
	if err := r.w.Refresh(context.Background(), authz.Scope{Namespace: "ns", ServiceAccount: "sa", Route: "db"}); err != nil {
		t.Fatal(err)
	}
	if after := r.entry("db", id).Value; after == before || r.vault.count("revoke_lease") != 1 {
		t.Fatalf("event: %s -> %s, %d revoked; want a new secret and the old lease revoked", before, after, r.vault.count("revoke_lease"))
	}
}

// earliestDue is the soonest refresh of an expiring credential of x. Read
// when x's run is done (its answer, or its wait on the clock, comes after).
func (x *identity) earliestDue() (time.Time, bool) {
	var first time.Time
	for _, r := range x.rs {
		if !r.due.IsZero() && (first.IsZero() || r.due.Before(first)) {
			first = r.due
		}
	}
	return first, !first.IsZero()
}

// watched is the identity the watcher keeps for id.
func (w *Watcher) watched(id authz.Identity) *identity {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ids[id.Key()]
}

// TestUninjectableMintedValueNotRetriedHot: a minted value the route cannot
// inject is denied and waits for the identity's schedule.
func TestUninjectableMintedValueNotRetriedHot(t *testing.T) {
	r := newRig(t, Route{Name: "fed", Source: SourceIdentityToken, Path: "identity/oidc/token/egress_{namespace}", Header: "authorization", Value: "Bearer {token}"})
	id, tok := r.identity("ns", "sa", "")
	if _, err := r.miss("fed", id, tok); err != nil {
		t.Fatal(err)
	}
	x := r.w.watched(id)
	r.vault.mu.Lock()
	r.vault.badTokens = true
	r.vault.mu.Unlock()
	r.step(41 * time.Second)
	r.eventually("the invalid entry", func() bool {
		e := r.entry("fed", id)
		return e != nil && e.Denied == authz.ReasonInvalidCredential
	})
	r.eventually("the refresher waiting", r.clock.HasWaiters)
	if due, ok := x.earliestDue(); ok && !due.After(r.clock.Now()) {
		t.Fatalf("next due %v is not ahead of now %v", due, r.clock.Now())
	}
}

// TestVaultReadWithoutLease: a vault-read of a path that has no lease is
// refreshed like KV, on the identity's schedule, and served with the stale
// grace.
func TestVaultReadWithoutLease(t *testing.T) {
	r := newRig(t, Route{Name: "s", Source: SourceVaultRead, Path: "static/{namespace}/{serviceaccount}", Header: "x-pw", Value: "{password}"})
	id, tok := r.identity("ns", "sa", "")
	e, err := r.miss("s", id, tok)
	if err != nil || e.Value != "static" {
		t.Fatalf("read: %+v, %v", e, err)
	}
	if _, ok := r.w.watched(id).earliestDue(); ok {
		t.Fatal("a value without a lease has its own refresh")
	}
	if want := t0.Add(15 * time.Minute); !e.ExpiresAt.Equal(want) {
		t.Fatalf("served until %v, want the stale grace %v", e.ExpiresAt, want)
	}
}
