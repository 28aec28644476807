package watcher

import (
	"context"
	"strings"
	"sync"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/credinject/credinject/authz"
)

// loginVault is the fake Vault as a route's own login sees it: it records
// each login and read with the login's role, and serves the KV mount kv2
// from the fake's secret mount.
type loginVault struct {
	*fakeVault
	l   login
	mu  *sync.Mutex
	log *[]string
	// refuse: the login's role is not bound to this identity.
	refuse string
}

func (v loginVault) note(s string) {
	v.mu.Lock()
	*v.log = append(*v.log, s)
	v.mu.Unlock()
}

func (v loginVault) Login(ctx context.Context, jwt string) (vaultLogin, error) {
	v.note("login " + v.l.role + "@" + v.l.authMount)
	if v.refuse != "" && strings.Contains(jwt, v.refuse) {
		return vaultLogin{}, authz.Deny(authz.ReasonVaultDenied, errForbidden)
	}
	return v.fakeVault.Login(ctx, jwt)
}

func (v loginVault) Read(ctx context.Context, tok, path string) (*vaultapi.Secret, error) {
	v.note("read " + v.l.role + " " + path)
	return v.fakeVault.Read(ctx, tok, strings.Replace(path, "kv2/data/", "secret/data/", 1))
}

// TestRouteOwnLogin: a route with its own Vault role and auth mount logs
// each identity in with them, in a session of its own beside the
// identity's default one, and reads from its own KV mount; the default
// route keeps the watcher's login.
func TestRouteOwnLogin(t *testing.T) {
	own := Route{Name: "own", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}",
		Vault: VaultOverride{Role: "second", AuthMount: "k8s2", KVMount: "kv2"}}
	r := newRig(t, kvRoute, own)
	var (
		mu  sync.Mutex
		log []string
	)
	r.w.newVault = func(l login) vault { return loginVault{fakeVault: r.vault, l: l, mu: &mu, log: &log} }
	id, tok := r.identity("ns", "sa", "k")
	for _, route := range []string{"", "own", "own", ""} {
		if e, err := r.miss(route, id, tok); err != nil || e.Value != "Bearer k" {
			t.Fatalf("route %q: %+v %v", route, e, err)
		}
	}
	mu.Lock()
	got := strings.Join(log, "; ")
	mu.Unlock()
	if got != "login second@k8s2; read second kv2/data/egress/ns/sa" {
		t.Errorf("the route's own login: %q; want one login with role second at k8s2 and one read from kv2", got)
	}
	if n := r.vault.liveTokens(); n != 2 {
		t.Errorf("%d live Vault tokens; want 2 (the default session's and the route's)", n)
	}
	// Forgetting the identity revokes both sessions' tokens.
	r.w.Forget(id)
	if n := r.vault.liveTokens(); n != 0 {
		t.Errorf("%d live Vault tokens after Forget; want 0", n)
	}
}

// TestRouteOwnLoginRefused: Vault refusing a route's own login denies that
// route (vault_denied), never the identity's other routes.
func TestRouteOwnLoginRefused(t *testing.T) {
	own := Route{Name: "own", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}",
		Vault: VaultOverride{Role: "second"}}
	r := newRig(t, kvRoute, own)
	var (
		mu  sync.Mutex
		log []string
	)
	r.w.newVault = func(l login) vault { return loginVault{fakeVault: r.vault, l: l, mu: &mu, log: &log, refuse: "ns/sa"} }
	id, tok := r.identity("ns", "sa", "k")
	if e, err := r.miss("", id, tok); err != nil || e.Value != "Bearer k" {
		t.Fatalf("default route: %+v %v", e, err)
	}
	if e, err := r.miss("own", id, tok); err != nil || e.Denied != authz.ReasonVaultDenied {
		t.Fatalf("own route: %+v %v; want vault_denied", e, err)
	}
	if e := r.entry("", id); e == nil || e.Denied != authz.ReasonNone || e.Value != "Bearer k" {
		t.Errorf("the default route after the own login's refusal: %+v", e)
	}
	if e, err := r.miss("", id, tok); err != nil || e.Value != "Bearer k" {
		t.Errorf("default route after: %+v %v", e, err)
	}
}
