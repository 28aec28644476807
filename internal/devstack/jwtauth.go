package devstack

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"

	vaultapi "github.com/hashicorp/vault/api"
)

// JWTAuth is how Vault's JWT auth method is set up to trust the dev issuer,
// the JWT-auth twin of the reference design's Kubernetes auth role.
type JWTAuth struct {
	// Mount is the auth mount (auth/<Mount>), e.g. "jwt".
	Mount string
	// Role and Policy are the names of the role credinject logs in with and
	// of the templated read policy it grants.
	Role, Policy string
	// ExtraPolicies are granted too (written elsewhere).
	ExtraPolicies []string
	// Issuer is the expected "iss"; PublicKey verifies the signatures.
	Issuer    string
	PublicKey crypto.PublicKey
	// Audiences: a token must carry one of them (bound_audiences).
	Audiences []string
	// Namespaces may log in (bound_claims on kubernetes.io/namespace); a
	// token from any other namespace is refused by Vault.
	Namespaces []string
	// TTL of the Vault tokens the logins get, e.g. "1h".
	TTL string
}

// Metadata keys the role copies from the token's claims onto the entity
// alias; the policy template reads them back. The names are those Vault's
// Kubernetes auth method uses, so the same policy text works for both.
const (
	metaNamespace      = "service_account_namespace"
	metaServiceAccount = "service_account_name"
)

// EgressPolicy is the read policy for the auth mount with accessor: each
// identity reads only secret/data/egress/<namespace>/<serviceaccount> (and
// the same under other route prefixes, secret/data/<route>/<ns>/<sa>). The
// placeholders resolve from the entity alias's metadata, which the login
// fills from the signed token, so no identity can name another's path. (The
// same text as the test bed's policy for Kubernetes auth.)
func EgressPolicy(accessor string) string {
	ns := "{{identity.entity.aliases." + accessor + ".metadata." + metaNamespace + "}}"
	sa := "{{identity.entity.aliases." + accessor + ".metadata." + metaServiceAccount + "}}"
	return fmt.Sprintf(`path "secret/data/egress/%[1]s/%[2]s" {
  capabilities = ["read"]
}
path "secret/data/+/%[1]s/%[2]s" {
  capabilities = ["read"]
}
`, ns, sa)
}

// ConfigureJWTAuth enables (if needed) and (re)configures the JWT auth method:
// the issuer's key, the templated policy and the role. It is idempotent, so a
// restart with a new issuer key only replaces the key.
func ConfigureJWTAuth(ctx context.Context, c *vaultapi.Client, a JWTAuth) error {
	der, err := x509.MarshalPKIXPublicKey(a.PublicKey)
	if err != nil {
		return fmt.Errorf("devstack: issuer key: %w", err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))

	sys := c.Sys()
	auths, err := sys.ListAuthWithContext(ctx)
	if err != nil {
		return fmt.Errorf("devstack: list auth methods: %w", err)
	}
	m, ok := auths[a.Mount+"/"]
	if ok && m.Type != "jwt" {
		return fmt.Errorf("devstack: auth/%s is a %s method, not jwt", a.Mount, m.Type)
	}
	if !ok {
		if err := sys.EnableAuthWithOptionsWithContext(ctx, a.Mount, &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
			return fmt.Errorf("devstack: enable auth/%s: %w", a.Mount, err)
		}
		if auths, err = sys.ListAuthWithContext(ctx); err != nil {
			return fmt.Errorf("devstack: list auth methods: %w", err)
		}
		m = auths[a.Mount+"/"]
	}
	if m == nil || m.Accessor == "" {
		return fmt.Errorf("devstack: auth/%s has no accessor", a.Mount)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "auth/"+a.Mount+"/config", map[string]any{
		"jwt_validation_pubkeys": []string{keyPEM},
		"bound_issuer":           a.Issuer,
	}); err != nil {
		return fmt.Errorf("devstack: auth/%s/config: %w", a.Mount, err)
	}
	if err := sys.PutPolicyWithContext(ctx, a.Policy, EgressPolicy(m.Accessor)); err != nil {
		return fmt.Errorf("devstack: policy %s: %w", a.Policy, err)
	}
	// JSON pointers reach into the nested kubernetes.io claim (the plugin's
	// getClaim: a leading "/" means pointerstructure).
	if _, err := c.Logical().WriteWithContext(ctx, "auth/"+a.Mount+"/role/"+a.Role, map[string]any{
		"role_type":       "jwt",
		"user_claim":      "sub",
		"bound_audiences": slices.Clone(a.Audiences),
		"bound_claims":    map[string]any{"/kubernetes.io/namespace": slices.Clone(a.Namespaces)},
		"claim_mappings": map[string]string{
			"/kubernetes.io/namespace":           metaNamespace,
			"/kubernetes.io/serviceaccount/name": metaServiceAccount,
		},
		"token_policies": append([]string{a.Policy}, a.ExtraPolicies...),
		"token_ttl":      a.TTL,
	}); err != nil {
		return fmt.Errorf("devstack: auth/%s/role/%s: %w", a.Mount, a.Role, err)
	}
	return nil
}

// Seed writes data at <kvMount>/<path> (kv v2) unless it is already there,
// so a restart does not pile up versions.
func Seed(ctx context.Context, c *vaultapi.Client, kvMount, path string, data map[string]any) error {
	kv := c.KVv2(kvMount)
	if cur, err := kv.Get(ctx, path); err == nil && cur != nil && sameData(cur.Data, data) {
		return nil
	}
	if _, err := kv.Put(ctx, path, data); err != nil {
		return fmt.Errorf("devstack: seed %s/%s: %w", kvMount, path, err)
	}
	return nil
}

func sameData(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if fmt.Sprint(a[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// ConfigureIdentityTokens sets up Vault's identity secrets engine for the
// demo's minted route: a signing key, the role egress_federated (the route's
// path is identity/oidc/token/egress_{namespace}) and policy, which lets a
// login mint tokens of the egress_* roles, each for its own entity.
// Idempotent.
func ConfigureIdentityTokens(ctx context.Context, c *vaultapi.Client, policy string) error {
	l := c.Logical()
	if _, err := l.WriteWithContext(ctx, "identity/oidc/key/egress", map[string]any{
		"allowed_client_ids": "*", "algorithm": "RS256", "rotation_period": "24h", "verification_ttl": "24h",
	}); err != nil {
		return fmt.Errorf("devstack: identity/oidc/key/egress: %w", err)
	}
	if _, err := l.WriteWithContext(ctx, "identity/oidc/role/egress_federated", map[string]any{
		"key": "egress", "ttl": "15m",
	}); err != nil {
		return fmt.Errorf("devstack: identity/oidc/role/egress_federated: %w", err)
	}
	if err := c.Sys().PutPolicyWithContext(ctx, policy, `path "identity/oidc/token/egress_*" { capabilities = ["read"] }`); err != nil {
		return fmt.Errorf("devstack: policy %s: %w", policy, err)
	}
	return nil
}
