package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// TestOAuth2ClientCredentials: an oauth2-client-credentials route behind the
// real nginx, against the real Ory Hydra: each identity's own client gets a
// token, the upstream receives `Bearer <access token>` that Hydra's
// introspection accepts as that client's, hits reuse the cached token, a new
// one comes before the old expires, the client secret never leaves
// credinject, and a revoked client gets 403.
func TestOAuth2ClientCredentials(t *testing.T) {
	env := testenv.Get(t)
	hy := env.Hydra(t)
	ctx := context.Background()
	ns := testenv.UniqueName("oa")
	type who struct{ sa, token, client, secret string }
	ids := []*who{{sa: "app-a"}, {sa: "app-b"}}
	for _, w := range ids {
		w.token = identity(ctx, t, env, ns, w.sa, "unused")
		w.client, w.secret = ns+"-"+w.sa, "secret-"+testenv.UniqueName("s")
		if err := hy.CreateClient(ctx, w.client, w.secret, "read", "client_secret_basic"); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Vault.PutCredential(ctx, "egress-oauth/"+ns+"/"+w.sa, map[string]any{"client_id": w.client, "client_secret": w.secret}); err != nil {
			t.Fatal(err)
		}
	}

	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Routes = []config.Route{{
		Name: "partner", Hosts: []string{"api.partner.example"}, Source: config.SourceOAuth2,
		Path: "egress-oauth/{namespace}/{serviceaccount}", OAuth2: &config.OAuth2{TokenURL: hy.TokenURL, Scopes: []string{"read"}},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := apptest.Start(t, env, cfg)
	up := newEchoUpstream(t)
	gw := startNginx(t, srv.App.HTTPAddr(), up.srv.Listener.Addr().String())
	client := &http.Client{Timeout: 10 * time.Second}
	call := func(tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, gw+"/v1/things", nil)
		req.Host = "api.partner.example"
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, resp.Header.Get("X-Credinject-Reason")
		}
		at, ok := strings.CutPrefix(up.last().Header.Get("Authorization"), "Bearer ")
		if !ok {
			t.Fatalf("upstream Authorization %q", up.last().Header.Get("Authorization"))
		}
		return resp.StatusCode, at
	}
	mustLive := func(at, wantClient string) testenv.Introspection {
		in, err := hy.Introspect(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		if !in.Active || in.ClientID != wantClient || in.Scope != "read" {
			t.Fatalf("introspection of the upstream's token: %+v; want active, client %s, scope read", in, wantClient)
		}
		return in
	}
	tokenRequests := func() float64 {
		return srv.Counter(t, "credinject_token_endpoint_requests_total", map[string]string{"result": "ok"})
	}

	_, atA := call(ids[0].token)
	first := mustLive(atA, ids[0].client)
	_, atB := call(ids[1].token)
	mustLive(atB, ids[1].client)
	if atA == atB {
		t.Fatal("two identities share one access token")
	}

	before := tokenRequests()
	for range 10 {
		if _, at := call(ids[0].token); at != atA {
			t.Fatal("a cache hit asked for a new token")
		}
	}
	if tokenRequests() != before {
		t.Fatal("cache hits made token requests")
	}

	waitUntil(t, testenv.HydraAccessTokenTTL+5*time.Second, "a new access token before the old one expires", func() error {
		_, at := call(ids[0].token)
		if at == atA {
			return errNotYet
		}
		if time.Now().Unix() >= first.Exp {
			t.Fatalf("the new token came after the old one expired")
		}
		mustLive(at, ids[0].client)
		return nil
	})
	for _, v := range up.everything() {
		for _, w := range ids {
			if strings.Contains(v, w.secret) || strings.Contains(v, w.token) {
				t.Fatalf("a client secret or a workload token reached the upstream: %q", v)
			}
		}
	}

	// Revoked: at its next refresh the client is refused, and stays so.
	if err := hy.DeleteClient(ctx, ids[1].client); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, testenv.HydraAccessTokenTTL+5*time.Second, "the revoked client refused", func() error {
		status, reason := call(ids[1].token)
		if status != http.StatusForbidden {
			return fmt.Errorf("status %d: %w", status, errNotYet)
		}
		if reason != "token_endpoint_refused" {
			t.Fatalf("reason %q, want token_endpoint_refused", reason)
		}
		return nil
	})
	if status, _ := call(ids[0].token); status != http.StatusOK {
		t.Fatalf("the other identity: status %d", status)
	}
}

// TestOAuth2EndpointDown: with its own Hydra stopped, credinject keeps
// serving the still-valid access token, then answers 503
// token_endpoint_unavailable once it expired; it recovers when Hydra is back.
func TestOAuth2EndpointDown(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	hy, err := testenv.StartHydra(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hy.Stop()
	ns := testenv.UniqueName("od")
	tok := identity(ctx, t, env, ns, "app", "unused")
	if err := hy.CreateClient(ctx, ns, "secret-od", "", "client_secret_post"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "egress-oauth/"+ns+"/app", map[string]any{"client_id": ns, "client_secret": "secret-od"}); err != nil {
		t.Fatal(err)
	}
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Routes = []config.Route{{
		Name: "partner", Hosts: []string{"api.partner.example"}, Source: config.SourceOAuth2,
		Path: "egress-oauth/{namespace}/{serviceaccount}", OAuth2: &config.OAuth2{TokenURL: hy.TokenURL, ClientAuth: "post"},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := apptest.Start(t, env, cfg)
	first := srv.Check(t, tok, "api.partner.example")
	if !strings.HasPrefix(first, "allow authorization=Bearer ory_at_") {
		t.Fatalf("check: %q", first)
	}
	issued := time.Now()
	hy.Stop()
	if got := srv.Check(t, tok, "api.partner.example"); got != first {
		t.Fatalf("endpoint down, token still valid: %q; want the cached %q", got, first)
	}
	waitUntil(t, testenv.HydraAccessTokenTTL+10*time.Second, "503 once the token expired", func() error {
		got := srv.Check(t, tok, "api.partner.example")
		if got == first {
			if time.Since(issued) > testenv.HydraAccessTokenTTL {
				t.Fatalf("served after the token's expiry: %q", got)
			}
			return errNotYet
		}
		if got != "deny 503 token_endpoint_unavailable" {
			t.Fatalf("after expiry: %q; want deny 503 token_endpoint_unavailable", got)
		}
		return nil
	})
}
