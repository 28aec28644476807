package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// setupIdentityTokens makes Vault's identity secrets engine mint tokens for
// the role egress_<ns> (ttl given) with a key any role may use, and lets the
// egress-workload role read its tokens.
func setupIdentityTokens(ctx context.Context, t *testing.T, env *testenv.Env, ns string, ttl time.Duration) {
	t.Helper()
	c := env.Vault.Client.Logical()
	if _, err := c.WriteWithContext(ctx, "identity/oidc/key/egress", map[string]any{
		"allowed_client_ids": "*", "algorithm": "RS256", "rotation_period": "24h", "verification_ttl": "24h",
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteWithContext(ctx, "identity/oidc/role/egress_"+ns, map[string]any{
		"key": "egress", "ttl": fmt.Sprintf("%ds", int(ttl.Seconds())),
	}); err != nil {
		t.Fatal(err)
	}
	if err := env.Vault.AddPolicy(ctx, "egress-identity-token", `path "identity/oidc/token/egress_*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
}

// entityOf logs in to Vault as ns/sa, as credinject does, and returns the
// entity Vault ties that identity to.
func entityOf(ctx context.Context, t *testing.T, env *testenv.Env, saToken string) string {
	t.Helper()
	vc, err := env.Vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	vc.ClearToken()
	s, err := vc.Logical().WriteWithContext(ctx, "auth/"+testenv.VaultKubeMount+"/login", map[string]any{"role": testenv.VaultRole, "jwt": saToken})
	if err != nil || s == nil || s.Auth == nil || s.Auth.EntityID == "" {
		t.Fatalf("login: %v %+v", err, s)
	}
	vc.SetToken(s.Auth.ClientToken)
	_ = vc.Auth().Token().RevokeSelfWithContext(ctx, "")
	return s.Auth.EntityID
}

// verifyVaultJWT checks raw's signature against Vault's published keys and
// returns its claims.
func verifyVaultJWT(t *testing.T, vaultAddr, raw string) map[string]any {
	t.Helper()
	resp, err := http.Get(vaultAddr + "/v1/identity/oidc/.well-known/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var keys jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&keys); err != nil {
		t.Fatal(err)
	}
	sig, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("parse the injected JWT: %v", err)
	}
	kid := sig.Signatures[0].Header.KeyID
	ks := keys.Key(kid)
	if len(ks) == 0 {
		t.Fatalf("key %q is not among Vault's published keys", kid)
	}
	payload, err := sig.Verify(ks[0])
	if err != nil {
		t.Fatalf("the injected JWT does not verify against Vault's keys: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

// TestIdentityTokenSource: a vault-identity-token route injects a JWT that
// Vault minted for the workload's own entity, verifiable against Vault's
// published keys, and mints a new one before it expires.
func TestIdentityTokenSource(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns := testenv.UniqueName("idt")
	tokA := identity(ctx, t, env, ns, "app-a", "unused-kv-key")
	tokB := identity(ctx, t, env, ns, "app-b", "unused-kv-key-b")
	setupIdentityTokens(ctx, t, env, ns, 12*time.Second)

	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Routes = []config.Route{{
		Name: "federated", Hosts: []string{"*.cloud.example"}, Source: config.SourceIdentityToken,
		Path: "identity/oidc/token/egress_{namespace}",
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := apptest.Start(t, env, cfg)

	jwtOf := func(tok string) string {
		got := srv.Check(t, tok, "storage.cloud.example")
		raw, ok := strings.CutPrefix(got, "allow authorization=Bearer ")
		if !ok {
			t.Fatalf("check: %q", got)
		}
		return raw
	}
	first := jwtOf(tokA)
	claims := verifyVaultJWT(t, env.Vault.Addr, first)
	if want := entityOf(ctx, t, env, tokA); claims["sub"] != want {
		t.Fatalf("sub = %v; want the workload's entity %s", claims["sub"], want)
	}
	if other := verifyVaultJWT(t, env.Vault.Addr, jwtOf(tokB)); other["sub"] == claims["sub"] {
		t.Fatalf("two identities share the entity %v", other["sub"])
	}
	// A hit is the cached token; before its 12 s run out, a new one.
	if again := jwtOf(tokA); again != first {
		t.Fatal("a cache hit minted a new token")
	}
	exp, _ := claims["exp"].(float64)
	waitUntil(t, 20*time.Second, "a new identity token before expiry", func() error {
		now := jwtOf(tokA)
		if now == first {
			return errNotYet
		}
		if time.Now().Unix() > int64(exp) {
			t.Fatalf("the new token came after the old one expired")
		}
		return nil
	})
}
