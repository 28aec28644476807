package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// setupDatabaseEngine mounts Vault's database secrets engine on the bed's
// PostgreSQL with one role per identity (<ns>-<sa>), leases of ttl renewable
// up to maxTTL, and lets each identity read its own role's credentials (the
// policy is templated on the login's metadata) and revoke its own leases
// only (sys/leases/revoke/<lease id>, scoped to its role's path).
func setupDatabaseEngine(ctx context.Context, t *testing.T, env *testenv.Env, pg *testenv.Postgres, roles []string, ttl, maxTTL time.Duration) {
	t.Helper()
	c := env.Vault.Client
	mounts, err := c.Sys().ListMountsWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mounts["database/"]; !ok {
		if err := c.Sys().MountWithContext(ctx, "database", &vaultapi.MountInput{Type: "database"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Logical().WriteWithContext(ctx, "database/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": fmt.Sprintf("postgresql://{{username}}:{{password}}@127.0.0.1:%d/postgres?sslmode=disable", pg.Port),
		"username":       "postgres", "password": testenv.SuperPassword, "allowed_roles": "*",
	}); err != nil {
		t.Fatal(err)
	}
	for _, r := range roles {
		if _, err := c.Logical().WriteWithContext(ctx, "database/roles/"+r, map[string]any{
			"db_name":             "pg",
			"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
			"default_ttl":         int(ttl.Seconds()), "max_ttl": int(maxTTL.Seconds()),
		}); err != nil {
			t.Fatal(err)
		}
	}
	meta := "{{identity.entity.aliases." + env.Vault.KubeAccessor + ".metadata."
	policy := fmt.Sprintf(`path "database/creds/%[1]sservice_account_namespace}}_%[1]sservice_account_name}}" { capabilities = ["read"] }
path "sys/leases/revoke/database/creds/%[1]sservice_account_namespace}}_%[1]sservice_account_name}}/*" { capabilities = ["update"] }
`, meta)
	if err := env.Vault.AddPolicy(ctx, "egress-database", policy); err != nil {
		t.Fatal(err)
	}
}

// leases counts the live leases Vault holds for a database role.
func leases(ctx context.Context, t *testing.T, env *testenv.Env, role string) int {
	t.Helper()
	s, err := env.Vault.Client.Logical().ListWithContext(ctx, "sys/leases/lookup/database/creds/"+role+"/")
	if err != nil {
		t.Fatal(err)
	}
	if s == nil {
		return 0
	}
	keys, _ := s.Data["keys"].([]any)
	return len(keys)
}

var dbCreds = regexp.MustCompile(`x-db-credentials=(\S+):(\S+)`)

// TestVaultReadDatabase: a vault-read route over Vault's database engine
// and a real PostgreSQL: each identity gets its own database user, whose
// lease credinject renews (the user outlives its first TTL), replaces before
// its max TTL (the old user revoked), never piles up, and revokes when the
// identity goes.
func TestVaultReadDatabase(t *testing.T) {
	env := testenv.Get(t)
	pg := env.Postgres(t)
	ctx := context.Background()
	ns := testenv.UniqueName("vr")
	tokA := identity(ctx, t, env, ns, "app-a", "unused")
	tokB := identity(ctx, t, env, ns, "app-b", "unused")
	roleA, roleB := ns+"_app-a", ns+"_app-b"
	const ttl, maxTTL = 6 * time.Second, 20 * time.Second
	setupDatabaseEngine(ctx, t, env, pg, []string{roleA, roleB}, ttl, maxTTL)

	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Routes = []config.Route{{
		Name: "db-api", Hosts: []string{"db-api.example.com"}, Source: config.SourceVaultRead,
		Path:   "database/creds/{namespace}_{serviceaccount}",
		Inject: config.Inject{Header: "x-db-credentials", Value: "{username}:{password}"},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := apptest.Start(t, env, cfg)
	creds := func(tok string) (user, pass string) {
		got := srv.Check(t, tok, "db-api.example.com")
		m := dbCreds.FindStringSubmatch(got)
		if m == nil {
			t.Fatalf("check: %q", got)
		}
		return m[1], m[2]
	}
	start := time.Now()
	userA, passA := creds(tokA)
	userB, passB := creds(tokB)
	if userA == userB {
		t.Fatalf("two identities got one database user %s", userA)
	}
	for _, c := range [][2]string{{userA, passA}, {userB, passB}} {
		if err := pg.Exec(ctx, c[0], c[1], "select 1"); err != nil {
			t.Fatal(err)
		}
	}

	// Past the first TTL the user still works: the lease (and the role's
	// VALID UNTIL) was renewed. Then, before the max TTL, a new user.
	renewed, replaced := false, false
	var userA2, passA2 string
	waitUntil(t, maxTTL+10*time.Second, "the lease renewed, then replaced before its max TTL", func() error {
		if n := leases(ctx, t, env, roleA); n > 2 {
			t.Fatalf("%d leases for one identity", n)
		}
		u, p := creds(tokA)
		if u == userA && time.Since(start) > ttl+time.Second {
			if err := pg.Exec(ctx, u, p, "select 1"); err == nil {
				renewed = true
			} else if u, p = creds(tokA); u == userA {
				// Not replaced in between: the renewal did not hold.
				t.Fatalf("the renewed user no longer works: %v", err)
			}
		}
		if u == userA {
			return errNotYet
		}
		userA2, passA2, replaced = u, p, true
		return nil
	})
	// Replaced in time is asserted in the loop, not by the clock here: the
	// user served was tried at every poll, and one that stopped working
	// before a new one came (the max TTL passed first) fails the test. The
	// time of the poll that saw the new user says nothing: it may come
	// after the max TTL on a loaded machine although the swap was earlier.
	if !renewed || !replaced {
		t.Fatalf("renewed %v, replaced %v after %v (max TTL %v)", renewed, replaced, time.Since(start), maxTTL)
	}
	if err := pg.Exec(ctx, userA2, passA2, "select 1"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the replaced user revoked", func() error {
		if pg.Exec(ctx, userA, passA, "select 1") == nil {
			return errNotYet
		}
		return nil
	})

	// Many refreshes later, Vault still holds one lease (two at a
	// replacement) per identity.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if n := leases(ctx, t, env, roleA); n > 2 {
			t.Fatalf("%d leases for one identity after many refreshes", n)
		}
		u, p := creds(tokA)
		if err := pg.Exec(ctx, u, p, "select 1"); err != nil {
			// The cached one may have been replaced (and revoked) between
			// the check and the login; the one served now must work.
			if u2, p2 := creds(tokA); u2 == u || pg.Exec(ctx, u2, p2, "select 1") != nil {
				t.Fatalf("the served credential does not work: %v", err)
			}
		}
	}

	// The identity goes: its token is revoked, and its lease with it.
	if err := env.Kube.DeleteServiceAccount(ctx, ns, "app-b"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the forgotten identity's lease revoked", func() error {
		if n := leases(ctx, t, env, roleB); n != 0 {
			return fmt.Errorf("%d leases: %w", n, errNotYet)
		}
		return nil
	})
	if err := pg.Exec(ctx, userB, passB, "select 1"); err == nil {
		t.Fatal("the forgotten identity's database user still works")
	}
}

// TestLeaseRevokeScoped: the policy above (the README's) lets an identity
// revoke the leases of its own role's path and no other, on the real
// Vault: through sys/leases/revoke/<lease id>, the form credinject uses,
// while the body form (sys/leases/revoke with lease_id) is refused
// altogether, since it cannot be scoped.
func TestLeaseRevokeScoped(t *testing.T) {
	env := testenv.Get(t)
	pg := env.Postgres(t)
	ctx := context.Background()
	ns := testenv.UniqueName("vs")
	tokA := identity(ctx, t, env, ns, "app-a", "unused")
	roleA, roleB := ns+"_app-a", ns+"_app-b"
	setupDatabaseEngine(ctx, t, env, pg, []string{roleA, roleB}, time.Hour, time.Hour)

	// Identity A's own Vault token, as credinject gets it.
	login, err := env.Vault.Client.Logical().WriteWithContext(ctx, "auth/"+testenv.VaultKubeMount+"/login",
		map[string]any{"role": testenv.VaultRole, "jwt": tokA})
	if err != nil {
		t.Fatal(err)
	}
	a, err := env.Vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	a.SetToken(login.Auth.ClientToken)
	readLease := func(c *vaultapi.Client, role string) string {
		t.Helper()
		s, err := c.Logical().ReadWithContext(ctx, "database/creds/"+role)
		if err != nil || s == nil || s.LeaseID == "" {
			t.Fatalf("read database/creds/%s: %v %v", role, s, err)
		}
		return s.LeaseID
	}
	own, own2 := readLease(a, roleA), readLease(a, roleA)
	other := readLease(env.Vault.Client, roleB) // another identity's lease

	forbidden := func(err error) bool {
		var re *vaultapi.ResponseError
		return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
	}
	if _, err := a.Logical().WriteWithContext(ctx, "sys/leases/revoke/"+other, nil); !forbidden(err) {
		t.Fatalf("revoking another identity's lease: %v, want 403", err)
	}
	if _, err := a.Logical().WriteWithContext(ctx, "sys/leases/revoke", map[string]any{"lease_id": own2}); !forbidden(err) {
		t.Fatalf("revoking by body: %v, want 403", err)
	}
	if n := leases(ctx, t, env, roleB); n != 1 {
		t.Fatalf("%d leases of %s, want the one still live", n, roleB)
	}
	if _, err := a.Logical().WriteWithContext(ctx, "sys/leases/revoke/"+own, nil); err != nil {
		t.Fatalf("revoking its own lease: %v", err)
	}
	if n := leases(ctx, t, env, roleA); n != 1 {
		t.Fatalf("%d leases of %s after revoking one of two", n, roleA)
	}
}
