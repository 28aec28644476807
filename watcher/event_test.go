package watcher

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/credinject/credinject/authz"
)

// TestWildcardEventKeepsLeasesAndTokens: an event for a namespace or for
// everything re-reads KV routes only: the leased secret keeps its lease (no
// revocation, no new read), the access token and the identity token are not
// minted again. An event naming the identity reads and mints everything
// anew, as before.
func TestWildcardEventKeepsLeasesAndTokens(t *testing.T) {
	ep := &tokenEndpoint{client: "ns-sa"}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	r := newRig(t,
		Route{Name: "", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}"},
		Route{Name: "db", Source: SourceVaultRead, Path: "creds/{namespace}/{serviceaccount}", Header: "x-db", Value: "{username}"},
		Route{Name: "partner", Source: SourceOAuth2, Path: "egress/{namespace}/{serviceaccount}", Header: "x-partner", Value: "Bearer {access_token}", TokenURL: srv.URL},
		Route{Name: "fed", Source: SourceIdentityToken, Path: "identity/oidc/token/egress-{namespace}", Header: "x-fed", Value: "Bearer {token}"})
	id, tok := r.identity("ns", "sa", "")
	put := func(key string) {
		r.vault.mu.Lock()
		r.vault.data["egress/"+id.Key()] = map[string]any{"api_key": key, "client_id": "ns-sa", "client_secret": "s3cret"}
		r.vault.mu.Unlock()
	}
	put("sk-1")
	routes := []string{"", "db", "partner", "fed"}
	values := func() map[string]string {
		m := map[string]string{}
		for _, route := range routes {
			if e := r.entry(route, id); e != nil {
				m[route] = e.Value
			}
		}
		return m
	}
	for _, route := range routes {
		if _, err := r.miss(route, id, tok); err != nil {
			t.Fatalf("%q: %v", route, err)
		}
	}
	before := values()

	for i, scope := range []authz.Scope{{Namespace: "ns"}, {}} {
		key := []string{"sk-2", "sk-3"}[i]
		put(key)
		reads, mints := r.vault.count("read"), ep.count()
		if err := r.w.Refresh(context.Background(), scope); err != nil {
			t.Fatal(err)
		}
		got := values()
		if got[""] != "Bearer "+key {
			t.Errorf("%v: KV route %q, want the new key %s", scope, got[""], key)
		}
		for _, route := range routes[1:] {
			if got[route] != before[route] {
				t.Errorf("%v: route %s changed %q -> %q; want the valid credential kept", scope, route, before[route], got[route])
			}
		}
		if n := r.vault.count("read") - reads; n != 1 {
			t.Errorf("%v: %d Vault reads, want 1 (the KV route's)", scope, n)
		}
		if n := ep.count() - mints; n != 0 {
			t.Errorf("%v: %d access tokens minted, want 0", scope, n)
		}
		if n := r.vault.count("revoke_lease"); n != 0 {
			t.Errorf("%v: %d leases revoked, want 0", scope, n)
		}
	}

	if err := r.w.Refresh(context.Background(), authz.Scope{Namespace: "ns", ServiceAccount: "sa"}); err != nil {
		t.Fatal(err)
	}
	got := values()
	for _, route := range routes[1:] {
		if got[route] == before[route] {
			t.Errorf("named event: route %s kept %q; want a new credential", route, got[route])
		}
	}
	if n := r.vault.count("revoke_lease"); n != 1 {
		t.Errorf("named event: %d leases revoked, want the replaced one", n)
	}
}

// TestWildcardEventRetriesWhatIsNotHeld: a wildcard event does re-read a
// minted route that holds no valid credential (here the token endpoint had
// refused the client): there is nothing to keep.
func TestWildcardEventRetriesWhatIsNotHeld(t *testing.T) {
	ep := &tokenEndpoint{client: "someone-else"}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	r := newRig(t, Route{Name: "partner", Source: SourceOAuth2, Path: "egress/{namespace}/{serviceaccount}", Header: "x-partner", Value: "Bearer {access_token}", TokenURL: srv.URL})
	id, tok := r.identity("ns", "sa", "")
	r.vault.mu.Lock()
	r.vault.data["egress/"+id.Key()] = map[string]any{"client_id": "ns-sa", "client_secret": "s3cret"}
	r.vault.mu.Unlock()
	if e, err := r.miss("partner", id, tok); err != nil || e.Denied != authz.ReasonTokenEndpointRefused {
		t.Fatalf("refused client: %+v, %v", e, err)
	}
	ep.set(false, "ns-sa")
	if err := r.w.Refresh(context.Background(), authz.Scope{}); err != nil {
		t.Fatal(err)
	}
	if e := r.entry("partner", id); e == nil || e.Value != "Bearer at-1" {
		t.Fatalf("after a wildcard event: %+v; want the first token", e)
	}
}

func (f *tokenEndpoint) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}
