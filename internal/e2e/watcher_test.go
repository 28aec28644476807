package e2e_test

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

func vaultCalls(t *testing.T, srv *apptest.Running) float64 {
	return srv.Counter(t, "credinject_vault_requests_total", nil)
}

// identity creates ns/sa, binds ns in Vault, stores key and returns a token.
func identity(ctx context.Context, t *testing.T, env *testenv.Env, ns, sa, key string) string {
	t.Helper()
	if _, err := env.Kube.CreateServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	if err := env.Vault.BindNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": key}); err != nil {
		t.Fatal(err)
	}
	tok, err := env.Kube.Token(ctx, ns, sa, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestPerIdentityCredentials(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	nsA, nsB := testenv.UniqueName("wa"), testenv.UniqueName("wb")
	tokA := identity(ctx, t, env, nsA, "default", "sk-test-openai-key-for-egress")
	tokB := identity(ctx, t, env, nsB, "default", "sk-different-key-for-workload-b")
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	srv := apptest.Start(t, env, cfg)
	if got := srv.Check(t, tokA, "api.openai.com"); got != "allow authorization=Bearer sk-test-openai-key-for-egress" {
		t.Fatalf("a: %q", got)
	}
	if got := srv.Check(t, tokB, "api.openai.com"); got != "allow authorization=Bearer sk-different-key-for-workload-b" {
		t.Fatalf("b: %q", got)
	}
	// The miss path made the watcher own both; hits cost Vault nothing.
	before := vaultCalls(t, srv)
	for range 20 {
		srv.Check(t, tokA, "api.openai.com")
		srv.Check(t, tokB, "api.openai.com")
	}
	if after := vaultCalls(t, srv); after != before {
		t.Fatalf("cache hits made %v Vault calls", after-before)
	}
}

func TestPrefetch(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns := testenv.UniqueName("pf")
	tok1 := identity(ctx, t, env, ns, "app-1", "sk-1")
	tok2 := identity(ctx, t, env, ns, "app-2", "sk-2")
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Prefetch.Namespaces = []string{ns}
	srv := apptest.Start(t, env, cfg)

	entries := func() float64 { return srv.Counter(t, "credinject_cache_entries", nil) }
	if entries() < 2 {
		t.Fatalf("ready with %v cache entries; want the prefetched 2", entries())
	}
	before := vaultCalls(t, srv)
	if got := srv.Check(t, tok1, "h"); got != "allow authorization=Bearer sk-1" {
		t.Fatalf("app-1: %q", got)
	}
	if got := srv.Check(t, tok2, "h"); got != "allow authorization=Bearer sk-2" {
		t.Fatalf("app-2: %q", got)
	}
	if after := vaultCalls(t, srv); after != before {
		t.Fatalf("the first requests of prefetched identities made %v Vault calls; want 0", after-before)
	}

	t.Run("a new service account is picked up", func(t *testing.T) {
		n := entries()
		tok3 := identity(ctx, t, env, ns, "app-3", "sk-3")
		apptest.Eventually(t, 20*time.Second, "the new SA in the cache", func() bool { return entries() > n })
		before := vaultCalls(t, srv)
		if got := srv.Check(t, tok3, "h"); got != "allow authorization=Bearer sk-3" {
			t.Fatalf("app-3: %q", got)
		}
		if after := vaultCalls(t, srv); after != before {
			t.Fatalf("first request of a picked-up SA made %v Vault calls", after-before)
		}
	})
	t.Run("a deleted service account is evicted", func(t *testing.T) {
		n := entries()
		if err := env.Kube.DeleteServiceAccount(ctx, ns, "app-2"); err != nil {
			t.Fatal(err)
		}
		apptest.Eventually(t, 20*time.Second, "eviction", func() bool { return entries() < n })
		if got := srv.Check(t, tok2, "h"); got != "deny 401 unknown_serviceaccount" {
			t.Fatalf("deleted SA: %q", got)
		}
	})
}

// startFake runs credinject with a fake clock that the test moves, and
// every identity's first relogin at the full vault.reloginInterval (no
// random phase), the latest the bound allows, so the steps are exact.
func startFake(t *testing.T, env *testenv.Env, cfg config.Config) (*apptest.Running, *clocktesting.FakeClock) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Now())
	return apptest.StartWith(t, env, cfg, func(o *app.Options) {
		o.Clock = clk
		o.ReloginPhase = func() float64 { return 0 }
	}), clk
}

// TestRevocationWithinOneRefresh: a namespace the role no longer binds is
// refused at the next login, which vault.reloginInterval bounds: with a short
// one (below prefetch.refresh) at the next scheduled refresh; by default at
// the token's TTL (the bed's role: 1h), the token being renewed meanwhile.
func TestRevocationWithinOneRefresh(t *testing.T) {
	for name, tc := range map[string]struct {
		relogin time.Duration
		steps   []time.Duration // fake time; allowed after every step but the last
	}{
		"reloginInterval below the refresh": {relogin: 30 * time.Second, steps: []time.Duration{time.Minute}},
		"default: the token's TTL":          {steps: []time.Duration{59 * time.Minute, time.Minute}},
	} {
		t.Run(name, func(t *testing.T) {
			env := testenv.Get(t)
			ctx := context.Background()
			ns := testenv.UniqueName("rv")
			identity(ctx, t, env, ns, "default", "sk-revoked-soon")
			// Valid past the fake hour: the session can log in again with it.
			tok, err := env.Kube.Token(ctx, ns, "default", nil, 3*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			cfg := apptest.Config(env)
			cfg.Events.NatsURL = ""
			cfg.Prefetch.Refresh = time.Minute
			cfg.Vault.ReloginInterval = tc.relogin
			srv, clk := startFake(t, env, cfg)
			if got := srv.Check(t, tok, "h"); got != "allow authorization=Bearer sk-revoked-soon" {
				t.Fatalf("before: %q", got)
			}
			if err := env.Vault.UnbindNamespace(ctx, ns); err != nil {
				t.Fatal(err)
			}
			changed := clk.Now()
			var limit time.Duration
			for _, d := range tc.steps {
				limit += d
			}
			for i, d := range tc.steps {
				apptest.Eventually(t, 20*time.Second, "the waiter of the refresher", clk.HasWaiters)
				clk.Step(d)
				if i < len(tc.steps)-1 {
					// Renewed, not logged in again: still served.
					apptest.Eventually(t, 20*time.Second, "served before the relogin", func() bool {
						return srv.Check(t, tok, "h") == "allow authorization=Bearer sk-revoked-soon" && clk.HasWaiters()
					})
				}
			}
			// The refresher logs in again and Vault refuses. Other parts
			// wait on the fake clock too (the audit trail's ticker), so a
			// step may come before the refresher waits: keep time moving,
			// a little at a time, and bound how much of it passed.
			apptest.Eventually(t, 20*time.Second, "revocation", func() bool {
				if srv.Check(t, tok, "h") == "deny 403 vault_denied" {
					return true
				}
				clk.Step(time.Second)
				return false
			})
			// Within the interval, give or take one read schedule (2/3 of
			// prefetch.refresh) for when the step came before the refresher
			// waited on the clock.
			if late := clk.Since(changed); late > limit+cfg.Prefetch.Refresh {
				t.Fatalf("refused %v after the role change, want within %v", late, limit)
			}
		})
	}
}

func TestVaultDownStalePolicy(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns := testenv.UniqueName("vd")
	tokCached := identity(ctx, t, env, ns, "cached", "sk-cached")
	tokCold := identity(ctx, t, env, ns, "cold", "sk-cold")
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Prefetch.Refresh = time.Minute
	cfg.Prefetch.StaleGrace = 5 * time.Minute
	srv, clk := startFake(t, env, cfg)
	if got := srv.Check(t, tokCached, "h"); got != "allow authorization=Bearer sk-cached" {
		t.Fatalf("warm-up: %q", got)
	}

	env.Vault.Stop()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = env.Vault.Start(context.Background())
		}
	})
	if got := srv.Check(t, tokCold, "h"); got != "deny 503 vault_unavailable" {
		t.Fatalf("uncached identity with Vault down: %q", got)
	}
	// Past the refresh time, within staleGrace: served stale, counted.
	clk.Step(2 * time.Minute)
	if got := srv.Check(t, tokCached, "h"); got != "allow authorization=Bearer sk-cached" {
		t.Fatalf("stale within grace: %q", got)
	}
	if n := srv.Counter(t, "credinject_stale_answers_total", nil); n < 1 {
		t.Fatalf("stale answers counted: %v", n)
	}
	// Past staleGrace: fail closed.
	clk.Step(4 * time.Minute)
	if got := srv.Check(t, tokCached, "h"); got != "deny 503 vault_unavailable" {
		t.Fatalf("past grace: %q", got)
	}

	if err := env.Vault.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	// Recovery without restart: the refresher's backoff fires as time moves.
	apptest.Eventually(t, 30*time.Second, "recovery", func() bool {
		clk.Step(5 * time.Second)
		return srv.Check(t, tokCached, "h") == "allow authorization=Bearer sk-cached" &&
			srv.Check(t, tokCold, "h") == "allow authorization=Bearer sk-cold"
	})
}

func TestTwoRoutes(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns := testenv.UniqueName("rt")
	tok := identity(ctx, t, env, ns, "default", "sk-openai")
	if _, err := env.Vault.PutCredential(ctx, "anthropic/"+ns+"/default", map[string]any{"api_key": "ak-anthropic"}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "openai/"+ns+"/default", map[string]any{"api_key": "sk-route-openai"}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "bad/"+ns+"/default", map[string]any{"api_key": "x\r\nX-Evil: 1"}); err != nil {
		t.Fatal(err)
	}
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	f := false
	cfg.DefaultRoute = &f
	cfg.Routes = []config.Route{
		{Hosts: []string{"api.openai.com"}, Path: "openai/{namespace}/{serviceaccount}", Inject: config.Inject{Header: "authorization", Value: "Bearer {api_key}"}},
		{Hosts: []string{"api.anthropic.com", "*.anthropic.com"}, Path: "anthropic/{namespace}/{serviceaccount}", Inject: config.Inject{Header: "x-api-key", Value: "{api_key}"}},
		{Hosts: []string{"bad.example"}, Path: "bad/{namespace}/{serviceaccount}", Inject: config.Inject{Header: "x-api-key", Value: "{api_key}"}},
	}
	srv := apptest.Start(t, env, cfg)
	cases := map[string]string{
		"api.openai.com":    "allow authorization=Bearer sk-route-openai",
		"api.anthropic.com": "allow x-api-key=ak-anthropic",
		"eu.anthropic.com":  "allow x-api-key=ak-anthropic",
		"example.com":       "deny 403 no_route",
		"bad.example":       "deny 403 invalid_credential",
	}
	for host, want := range cases {
		t.Run(host, func(t *testing.T) {
			if got := srv.Check(t, tok, host); got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		})
	}
}
