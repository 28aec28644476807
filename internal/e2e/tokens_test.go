package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// refusedWithin polls until token is refused and returns how long that took
// after since; it fails the test after limit.
func refusedWithin(t *testing.T, srv *apptest.Running, token string, since time.Time, limit time.Duration, want string) time.Duration {
	t.Helper()
	apptest.Eventually(t, limit-time.Since(since), "the token to be refused", func() bool {
		return srv.Check(t, token, "h") == want
	})
	return time.Since(since)
}

// TestBoundTokensRevoke: a token bound to a Pod, a Secret or a Node is allowed while
// the object lives, refused within 5 s of its deletion in jwks mode (within
// the token-result TTL in tokenreview mode), and stays refused when an object
// of the same name is re-created (new uid), while the new object's own token
// is allowed.
func TestBoundTokensRevoke(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	// The API server caches a successful token authentication for 10 s
	// itself, so tokenreview mode revokes within max(tokenTTL, 10 s) of a
	// review: with a TTL of 10 s, within the TTL.
	const ttl = 10 * time.Second
	for _, mode := range []string{"jwks", "tokenreview"} {
		t.Run(mode, func(t *testing.T) {
			cfg := apptest.Config(env)
			cfg.Events.NatsURL = ""
			cfg.Kubernetes.TokenValidation = mode
			cfg.Cache.TokenTTL = ttl
			srv := apptest.Start(t, env, cfg)
			limit := 5 * time.Second
			if mode == "tokenreview" {
				limit = ttl + time.Second
			}
			ns, sa, _ := boundIdentity(ctx, t, env, "bound-"+mode, "sk-bound-"+mode)
			allow := "allow authorization=Bearer sk-bound-" + mode
			for _, kind := range []string{"Pod", "Secret", "Node"} {
				t.Run(kind, func(t *testing.T) {
					// Nodes are cluster-wide: a name of this run's own.
					name := "obj-" + strings.ToLower(kind)
					if kind == "Node" {
						name = ns + "-node"
					}
					create := func() string {
						var uid string
						var err error
						switch kind {
						case "Pod":
							uid, err = env.Kube.CreatePod(ctx, ns, name, sa)
						case "Secret":
							uid, err = env.Kube.CreateSecret(ctx, ns, name)
						default:
							uid, err = env.Kube.CreateNode(ctx, name)
						}
						if err != nil {
							t.Fatal(err)
						}
						return uid
					}
					del := func() {
						var err error
						switch kind {
						case "Pod":
							err = env.Kube.DeletePod(ctx, ns, name)
						case "Secret":
							err = env.Kube.DeleteSecret(ctx, ns, name)
						default:
							err = env.Kube.DeleteNode(ctx, name)
						}
						if err != nil {
							t.Fatal(err)
						}
					}
					uid := create()
					tok, err := env.Kube.BoundToken(ctx, ns, sa, kind, name, uid)
					if err != nil {
						t.Fatal(err)
					}
					// The informer may not have the new object yet: poll.
					apptest.Eventually(t, 5*time.Second, "the bound token to be allowed", func() bool { return srv.Check(t, tok, "h") == allow })

					deleted := time.Now()
					del()
					took := refusedWithin(t, srv, tok, deleted, limit, "deny 401 invalid_token")
					t.Logf("%s: %s-bound token refused %v after the %s's deletion (limit %v)", mode, kind, took.Round(time.Millisecond), kind, limit)

					uid2 := create()
					tok2, err := env.Kube.BoundToken(ctx, ns, sa, kind, name, uid2)
					if err != nil {
						t.Fatal(err)
					}
					apptest.Eventually(t, 5*time.Second, "the new object's token to be allowed", func() bool { return srv.Check(t, tok2, "h") == allow })
					if got := srv.Check(t, tok, "h"); got != "deny 401 invalid_token" {
						t.Fatalf("the old token after the %s was re-created with a new uid: %q", kind, got)
					}
				})
			}
		})
	}
}

// forge keeps a real token's header and claims and replaces its signature
// with random bytes of the same length.
func forge(t *testing.T, real string) string {
	t.Helper()
	i := strings.LastIndexByte(real, '.')
	sig := make([]byte, base64.RawURLEncoding.DecodedLen(len(real)-i-1))
	if _, err := rand.Read(sig); err != nil {
		t.Fatal(err)
	}
	return real[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// TestForgedFloodCostsNoTokenReviews floods tokenreview mode with 2,000
// distinct forged tokens (a real token's header and claims, a random
// signature) from 8 clients and counts, with the API server's own
// apiserver_request_total, the TokenReviews it received: at most 1 % of the
// forgeries may reach it. Fresh real tokens minted and sent during the flood
// must all be allowed.
func TestForgedFloodCostsNoTokenReviews(t *testing.T) {
	for _, mode := range []string{"tokenreview", "jwks"} {
		t.Run(mode, func(t *testing.T) { forgedFlood(t, mode) })
	}
}

// forgedFlood runs the flood in one token-validation mode: fresh real tokens
// cost one TokenReview each in tokenreview mode, none in jwks mode.
func forgedFlood(t *testing.T, mode string) {
	env := testenv.Get(t)
	ctx := context.Background()
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Kubernetes.TokenValidation = mode
	srv := apptest.Start(t, env, cfg)
	ns, sa, real := boundIdentity(ctx, t, env, "flood-"+mode, "sk-flood")
	allow := "allow authorization=Bearer sk-flood"
	if got := srv.Check(t, real, "h"); got != allow {
		t.Fatalf("real token before the flood: %q", got)
	}
	const forged = 2000
	f := flood(ctx, t, env, srv, real, forged, ns, sa, allow)
	// Each fresh real token costs one TokenReview (credinject's); a Vault
	// Kubernetes login would cost one more (Vault's), though the credential
	// is cached and none is expected.
	perFresh := 1.0
	if mode == "jwks" {
		perFresh = 0
	}
	fromForged := f.tokenReviews - perFresh*float64(f.fresh) - f.vaultLogins
	answers := f.answers
	t.Logf("%s: %d forged tokens in %v (%.0f/s): answers %v; %d fresh real tokens sent during the flood, all allowed: %v; TokenReviews at the API server: %.0f, of which %.0f for the fresh tokens, %.0f for Vault logins, %.0f from forgeries",
		mode, forged, f.took.Round(time.Millisecond), forged/f.took.Seconds(), answers, f.fresh, f.freshBad == 0, f.tokenReviews, perFresh*float64(f.fresh), f.vaultLogins, fromForged)
	if fromForged > forged/100 {
		t.Fatalf("%.0f forged tokens reached the API server as TokenReviews (limit %d)", fromForged, forged/100)
	}
	if len(answers) != 1 || answers[0] != "deny 401 invalid_token" {
		t.Fatalf("forged tokens were answered %v", answers)
	}
}

// TestJWKSModeNeedsBoundObjectRBAC: in jwks mode, a client that may not
// list/watch pods, secrets and nodes is a start-up error naming the rule,
// never a silent allow.
func TestJWKSModeNeedsBoundObjectRBAC(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns := testenv.UniqueName("norbac")
	if _, err := env.Kube.CreateServiceAccount(ctx, ns, "credinject"); err != nil {
		t.Fatal(err)
	}
	tok, err := env.Kube.Token(ctx, ns, "credinject", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rc := env.Kube.RestConfig()
	rc.BearerToken = tok
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Kubernetes.TokenValidation = "jwks"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := app.New(ctx, app.Options{Config: cfg, RestConfig: rc, Log: slog.New(slog.DiscardHandler)})
	if err == nil {
		stopped, cancel := context.WithCancel(ctx)
		cancel()
		_ = a.Run(stopped)
		t.Fatal("jwks mode started without permission to watch bound objects")
	}
	for _, want := range []string{"kubernetes.tokenValidation jwks", `resources: ["pods", "secrets", "nodes"]`, "pods (get, list, watch)", "nodes (get, list, watch)"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	}
	t.Logf("start-up error: %v", err)
}

// TestFloodWithoutIssuerKeys: an API server that does not serve its keys to
// credinject (here a client transport that answers 404 for the issuer
// discovery paths; TokenReviews still go to the real API server). tokenreview
// mode says so in /readyz and falls back to TokenReview for every new token,
// within budgets: 2,000 forgeries of identity A's token reach the API server
// at most A's budget (burst + rate × duration), and fresh tokens of identity B,
// confirmed before, are all allowed during the flood.
func TestFloodWithoutIssuerKeys(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	srv := apptest.StartWith(t, env, cfg, func(o *app.Options) {
		o.RestConfig.Wrap(func(rt http.RoundTripper) http.RoundTripper { return noIssuerKeys{rt} })
	})
	resp, err := http.Get(srv.HTTPURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "no offline verification") {
		t.Fatalf("/readyz does not say that tokens are not verified offline:\n%s", body)
	}
	_, _, tokA := boundIdentity(ctx, t, env, "nokeys-a", "sk-a")
	nsB, saB, tokB := boundIdentity(ctx, t, env, "nokeys-b", "sk-b")
	for _, c := range [][2]string{{tokA, "sk-a"}, {tokB, "sk-b"}} {
		if got := srv.Check(t, c[0], "h"); got != "allow authorization=Bearer "+c[1] {
			t.Fatalf("before the flood: %q", got)
		}
	}
	const forged = 2000
	f := flood(ctx, t, env, srv, tokA, forged, nsB, saB, "allow authorization=Bearer sk-b")
	fromForged := f.tokenReviews - float64(f.fresh) - f.vaultLogins
	b := cfg.Kubernetes.TokenReviewBudget
	limit := float64(b.Burst) + b.Rate*f.took.Seconds() + 1
	seen := f.answers
	t.Logf("no issuer keys: %d forgeries of A in %v: answers %v; TokenReviews at the API server from forgeries: %.0f (budget %.0f), for %d fresh tokens of B (all allowed), %.0f for Vault logins; budget refusals %.0f",
		forged, f.took.Round(time.Millisecond), seen, fromForged, limit, f.fresh, f.vaultLogins,
		srv.Counter(t, "credinject_tokenreview_budget_exhausted_total", nil))
	if fromForged > limit {
		t.Fatalf("%.0f forgeries reached the API server, over the budget of %.0f", fromForged, limit)
	}
}

// floodResult is what one flood measured.
type floodResult struct {
	took         time.Duration // from the first forged Check to the last answer
	answers      []string      // the distinct answers to the forged tokens
	fresh        int64         // fresh real tokens sent during the flood
	freshBad     int64         // of which not answered allow
	tokenReviews float64       // TokenReviews at the API server during the flood (apiserver_request_total)
	vaultLogins  float64       // credinject's Vault logins during the flood (credinject_vault_requests_total{op="login"})
}

// flood sends n forgeries of real (forge) to srv from 8 workers; every
// 100th, a worker also mints a fresh token of ns/sa (TokenRequest, one hour)
// and reports an error unless srv answers it allow.
func flood(ctx context.Context, t *testing.T, env *testenv.Env, srv *apptest.Running, real string, n int, ns, sa, allow string) floodResult {
	t.Helper()
	const workers, freshEvery = 8, 100
	toks := make([]string, n)
	for i := range toks {
		toks[i] = forge(t, real)
	}
	before, err := env.Kube.RequestCount(ctx, "tokenreviews")
	if err != nil {
		t.Fatal(err)
	}
	logins := srv.Counter(t, "credinject_vault_requests_total", map[string]string{"op": "login"})
	var next, fresh, freshBad atomic.Int64
	var answers sync.Map
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				answers.Store(srv.Check(t, toks[i], "h"), true)
				if i%freshEvery == freshEvery-1 {
					tok, err := env.Kube.Token(ctx, ns, sa, nil, time.Hour)
					if err != nil {
						t.Error(err)
						return
					}
					fresh.Add(1)
					if got := srv.Check(t, tok, "h"); got != allow {
						freshBad.Add(1)
						t.Errorf("fresh token of %s/%s during the flood: %q", ns, sa, got)
					}
				}
			}
		}()
	}
	wg.Wait()
	f := floodResult{took: time.Since(start), fresh: fresh.Load(), freshBad: freshBad.Load()}
	after, err := env.Kube.RequestCount(ctx, "tokenreviews")
	if err != nil {
		t.Fatal(err)
	}
	f.tokenReviews = after - before
	f.vaultLogins = srv.Counter(t, "credinject_vault_requests_total", map[string]string{"op": "login"}) - logins
	answers.Range(func(k, _ any) bool { f.answers = append(f.answers, k.(string)); return true })
	return f
}

// noIssuerKeys answers 404 for the issuer discovery documents, as an API
// server that does not serve them to credinject.
type noIssuerKeys struct{ rt http.RoundTripper }

func (n noIssuerKeys) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.URL.Path, "/openid/") || strings.HasPrefix(r.URL.Path, "/.well-known/") {
		return &http.Response{StatusCode: http.StatusNotFound, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	}
	return n.rt.RoundTrip(r)
}
