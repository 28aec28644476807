package e2e_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// upstream is what the bed's servers saw: TokenReviews and ServiceAccount
// GETs at the API server (its apiserver_request_total), and credinject's
// Vault logins (each would cost Vault a TokenReview of its own, counted
// with the TokenReviews too).
type upstream struct {
	tokenReviews, saGets, vaultLogins float64
}

func countUpstream(t *testing.T, env *testenv.Env, srv *apptest.Running) upstream {
	t.Helper()
	ctx := context.Background()
	var u upstream
	var err error
	if u.tokenReviews, err = env.Kube.RequestCount(ctx, "tokenreviews"); err != nil {
		t.Fatal(err)
	}
	if u.saGets, err = env.Kube.RequestCountVerb(ctx, "serviceaccounts", "", "GET"); err != nil {
		t.Fatal(err)
	}
	u.vaultLogins = srv.Counter(t, "credinject_vault_requests_total", map[string]string{"op": "login"})
	return u
}

func (u upstream) minus(v upstream) upstream {
	return upstream{u.tokenReviews - v.tokenReviews, u.saGets - v.saGets, u.vaultLogins - v.vaultLogins}
}

// hammer checks each of tokens n times from 8 workers and returns the
// distinct answers with their counts.
func hammer(t *testing.T, srv *apptest.Running, tokens []string, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n*len(tokens) {
					return
				}
				a := srv.Check(t, tokens[i%len(tokens)], "h")
				mu.Lock()
				got[a]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return got
}

// offsetClock is the real clock moved by d: credinject's clock ahead of
// the API server's.
type offsetClock struct {
	clock.RealClock
	d time.Duration
}

func (c offsetClock) Now() time.Time                  { return time.Now().Add(c.d) }
func (c offsetClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// steppedClock is the real clock moved ahead by what step has added up:
// time passing for credinject without the test waiting for it.
type steppedClock struct {
	clock.RealClock
	ahead *atomic.Int64
}

func (c steppedClock) Now() time.Time                  { return time.Now().Add(time.Duration(c.ahead.Load())) }
func (c steppedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }
func (c steppedClock) step(d time.Duration)            { c.ahead.Add(int64(d)) }

// TestFailingTokensCostOneUpstreamCall: a token that passes the offline
// check but fails after it, presented 200 times from 8 clients, costs the
// API server and Vault at most one call per cache.tokenNegativeTTL: a token
// expired within the clock-skew allowance on credinject's clock (ahead of
// the API server's, which still accepts it), a token of a deleted
// ServiceAccount (refused by TokenReview), and a token bound to a deleted
// Pod (jwks mode).
func TestFailingTokensCostOneUpstreamCall(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	const n = 200
	run := func(t *testing.T, srv *apptest.Running, tok, want string, negTTL time.Duration) {
		t.Helper()
		// The first answer may be the one before the refusal is cached.
		apptest.Eventually(t, 10*time.Second, "the token to be refused", func() bool { return srv.Check(t, tok, "h") == want })
		before := countUpstream(t, env, srv)
		start := time.Now()
		got := hammer(t, srv, []string{tok}, n)
		took := time.Since(start)
		d := countUpstream(t, env, srv).minus(before)
		limit := 1 + float64(took/negTTL)
		t.Logf("%d requests in %v: answers %v; upstream: %.0f TokenReviews, %.0f ServiceAccount GETs, %.0f Vault logins (limit %.0f each)",
			n, took.Round(time.Millisecond), got, d.tokenReviews, d.saGets, d.vaultLogins, limit)
		if len(got) != 1 || got[want] != n {
			t.Fatalf("answers %v, want %d × %q", got, n, want)
		}
		if d.tokenReviews > limit || d.saGets > limit || d.vaultLogins > 0 {
			t.Fatalf("upstream calls %+v over %.0f per negative TTL", d, limit)
		}
	}

	t.Run("expired within the skew", func(t *testing.T) {
		cfg := apptest.Config(env)
		cfg.Events.NatsURL = ""
		// The shortest token TokenRequest mints lives 10 minutes: on a
		// clock 10m30s ahead it expired 30 s ago, within ClockSkew.
		srv := apptest.StartWith(t, env, cfg, func(o *app.Options) { o.Clock = offsetClock{d: 10*time.Minute + 30*time.Second} })
		ns, sa, _ := boundIdentity(ctx, t, env, "skew", "sk-skew")
		tok, err := env.Kube.Token(ctx, ns, sa, nil, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		run(t, srv, tok, "deny 401 invalid_token", cfg.Cache.TokenNegative)
	})

	t.Run("deleted service account, tokenreview", func(t *testing.T) {
		cfg := apptest.Config(env)
		cfg.Events.NatsURL = ""
		srv := apptest.Start(t, env, cfg)
		ns, sa, tok := boundIdentity(ctx, t, env, "gone-sa", "sk-gone")
		if err := env.Kube.DeleteServiceAccount(ctx, ns, sa); err != nil {
			t.Fatal(err)
		}
		// Refused by TokenReview, or by the informer once it has seen the
		// deletion: either is a 401 cached for the negative TTL.
		apptest.Eventually(t, 10*time.Second, "the deletion to be seen", func() bool {
			a := srv.Check(t, tok, "h")
			return a == "deny 401 unknown_serviceaccount" || a == "deny 401 invalid_token"
		})
		run(t, srv, tok, srv.Check(t, tok, "h"), cfg.Cache.TokenNegative)
	})

	t.Run("bound to a deleted pod, jwks", func(t *testing.T) {
		cfg := apptest.Config(env)
		cfg.Events.NatsURL = ""
		cfg.Kubernetes.TokenValidation = "jwks"
		srv := apptest.Start(t, env, cfg)
		ns, sa, _ := boundIdentity(ctx, t, env, "gone-pod", "sk-gone-pod")
		uid, err := env.Kube.CreatePod(ctx, ns, "p", sa)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := env.Kube.BoundToken(ctx, ns, sa, "Pod", "p", uid)
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Kube.DeletePod(ctx, ns, "p"); err != nil {
			t.Fatal(err)
		}
		run(t, srv, tok, "deny 401 invalid_token", cfg.Cache.TokenNegative)
	})
}

// heldWatches holds back what the ServiceAccount watch stream delivers
// once held is set, until release is closed: the informer syncs at start,
// then sees no change until the test lets it, as an informer behind a busy
// API server does. A fault the test injects and lifts, so the lag needs no
// clock.
type heldWatches struct {
	rt      http.RoundTripper
	held    *atomic.Bool
	release <-chan struct{}
}

func (h heldWatches) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.rt.RoundTrip(r)
	if err == nil && strings.HasSuffix(r.URL.Path, "/serviceaccounts") && r.URL.Query().Get("watch") == "true" {
		resp.Body = heldBody{ReadCloser: resp.Body, h: h}
	}
	return resp, err
}

type heldBody struct {
	io.ReadCloser
	h heldWatches
}

// Read hands over what arrived only once released, when held.
func (b heldBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.h.held.Load() {
		<-b.h.release
	}
	return n, err
}

// TestNewServiceAccountAtOnce: a ServiceAccount created a moment before its
// tokens are used, with an informer that has not seen it yet: 400
// concurrent requests with its first token and 16 more tokens minted during
// them are all allowed (never unknown_serviceaccount), costing a few
// ServiceAccount GETs; once the ServiceAccount is deleted its token is
// refused within 5 s of the informer catching up, and then costs at most one GET per
// negative TTL.
func TestNewServiceAccountAtOnce(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	for _, mode := range []string{"tokenreview", "jwks"} {
		t.Run(mode, func(t *testing.T) {
			cfg := apptest.Config(env)
			cfg.Events.NatsURL = ""
			cfg.Kubernetes.TokenValidation = mode
			release, held := make(chan struct{}), new(atomic.Bool)
			lift := sync.OnceFunc(func() { close(release) })
			t.Cleanup(lift) // before the server stops (cleanups run last first)
			srv := apptest.StartWith(t, env, cfg, func(o *app.Options) {
				o.RestConfig.Wrap(func(rt http.RoundTripper) http.RoundTripper { return heldWatches{rt: rt, held: held, release: release} })
			})
			held.Store(true) // synced: from now on the informer sees nothing new
			before := countUpstream(t, env, srv)
			ns, sa, tok := boundIdentity(ctx, t, env, "atonce-"+mode, "sk-atonce")
			allow := "allow authorization=Bearer sk-atonce"
			tokens := []string{tok}
			var wg sync.WaitGroup
			var mu sync.Mutex
			got := map[string]int{}
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 50 {
						use := tok
						if i%25 == 24 {
							fresh, err := env.Kube.Token(ctx, ns, sa, nil, time.Hour)
							if err != nil {
								t.Error(err)
								return
							}
							use = fresh
							mu.Lock()
							tokens = append(tokens, fresh)
							mu.Unlock()
						}
						a := srv.Check(t, use, "h")
						mu.Lock()
						got[a]++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			d := countUpstream(t, env, srv).minus(before)
			t.Logf("%s: 400 requests at once with %d tokens of a new ServiceAccount: answers %v; %.0f ServiceAccount GETs, %.0f TokenReviews, lookups %v",
				mode, len(tokens), got, d.saGets, d.tokenReviews, lookups(t, srv))
			if len(got) != 1 || got[allow] != 400 {
				t.Fatalf("answers %v, want 400 × %q", got, allow)
			}
			if d.saGets > float64(len(tokens)) {
				t.Fatalf("%.0f ServiceAccount GETs for %d tokens", d.saGets, len(tokens))
			}

			if err := env.Kube.DeleteServiceAccount(ctx, ns, sa); err != nil {
				t.Fatal(err)
			}
			caughtUp := time.Now()
			lift() // the informer sees the creation and the deletion now
			took := refusedWithin(t, srv, tok, caughtUp, 5*time.Second, "deny 401 unknown_serviceaccount")
			t.Logf("%s: refused %v after the informer caught up", mode, took.Round(time.Millisecond))
			before = countUpstream(t, env, srv)
			start := time.Now()
			answers := hammer(t, srv, tokens, 20)
			d = countUpstream(t, env, srv).minus(before)
			limit := float64(len(tokens)) * (1 + float64(time.Since(start)/cfg.Cache.TokenNegative))
			t.Logf("%s: after the deletion, %d requests with its %d tokens: answers %v; %.0f ServiceAccount GETs (limit %.0f), %.0f TokenReviews",
				mode, 20*len(tokens), len(tokens), answers, d.saGets, limit, d.tokenReviews)
			for a := range answers {
				if !strings.HasPrefix(a, "deny 401 ") {
					t.Fatalf("a deleted ServiceAccount's token answered %q", a)
				}
			}
			if d.saGets > limit {
				t.Fatalf("%.0f GETs after the deletion, over %.0f", d.saGets, limit)
			}
		})
	}
}

// lookups reads credinject_serviceaccount_lookups_total by result.
func lookups(t *testing.T, srv *apptest.Running) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, r := range []string{"found", "not_found", "error", "budget_exhausted"} {
		m[r] = srv.Counter(t, "credinject_serviceaccount_lookups_total", map[string]string{"result": r})
	}
	return m
}

// jwksProxy counts the key-set requests credinject sends the API server and,
// while failing, answers them 503 itself.
type jwksProxy struct {
	rt      http.RoundTripper
	hits    *atomic.Int64
	failing *atomic.Bool
}

func (p jwksProxy) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/openid/v1/jwks" {
		p.hits.Add(1)
		if p.failing.Load() {
			return &http.Response{StatusCode: http.StatusServiceUnavailable, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
		}
	}
	return p.rt.RoundTrip(r)
}

// withKid replaces a real token's header by one naming key id kid, which the
// issuer's key set does not hold.
func withKid(real, kid string) string {
	hdr := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"alg":"RS256","kid":%q}`, kid)))
	return hdr + real[strings.IndexByte(real, '.'):]
}

// TestJWKSFetchesBounded: tokens naming key ids the key set does not hold
// (a rotation, or garbage) cost the API server's key-set endpoint at most one
// fetch per refetch interval (10 s), whether it serves the keys or fails.
// Each case starts a refetch interval after the last fetch (credinject's
// clock is stepped past it), so its first unknown kid may fetch.
func TestJWKSFetchesBounded(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Kubernetes.TokenValidation = "jwks"
	const minRefetch = 10 * time.Second // checker.JWKSConfig's default
	var hits atomic.Int64
	var failing atomic.Bool
	clk := steppedClock{ahead: new(atomic.Int64)}
	srv := apptest.StartWith(t, env, cfg, func(o *app.Options) {
		o.Clock = clk
		o.RestConfig.Wrap(func(rt http.RoundTripper) http.RoundTripper { return jwksProxy{rt: rt, hits: &hits, failing: &failing} })
	})
	if hits.Load() == 0 {
		t.Fatal("the key set was loaded at start without passing the counting proxy")
	}
	_, _, real := boundIdentity(ctx, t, env, "kid", "sk-kid")
	const n = 400
	for _, c := range []struct {
		name    string
		failing bool
		want    string
	}{
		{"endpoint serves the keys", false, "deny 401 invalid_token"},
		{"endpoint fails", true, "deny 503 tokenreview_unavailable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			failing.Store(c.failing)
			clk.step(minRefetch + time.Second)
			toks := make([]string, n)
			for i := range toks {
				toks[i] = withKid(real, fmt.Sprintf("%s-%d", strings.ReplaceAll(c.name, " ", "-"), i))
			}
			h0, start := hits.Load(), time.Now()
			got := hammer(t, srv, toks, 1)
			fetches, took := hits.Load()-h0, time.Since(start)
			limit := 1 + int64(took/minRefetch)
			t.Logf("%s: %d tokens with unknown key ids in %v: answers %v; %d key-set fetches (limit %d)", c.name, n, took.Round(time.Millisecond), got, fetches, limit)
			if len(got) != 1 || got[c.want] != n {
				t.Fatalf("answers %v, want %d × %q", got, n, c.want)
			}
			if fetches < 1 || fetches > limit {
				t.Fatalf("%d key-set fetches, want 1 to %d", fetches, limit)
			}
		})
	}
	failing.Store(false)
	if got := srv.Check(t, real, "h"); got != "allow authorization=Bearer sk-kid" {
		t.Fatalf("a token of the known key after the endpoint failed: %q", got)
	}
}
