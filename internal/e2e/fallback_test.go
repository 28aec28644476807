package e2e_test

import (
	"context"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// TestRequestOnlyIdentityOutlivesItsNewestPod: an identity seen only on
// requests keeps the newest token they presented, here pod-a's. pod-a is
// deleted, so at the next relogin Vault's TokenReview finds that token
// invalid and Vault refuses the login. credinject then logs in with pod-b's
// token, which pod-b's requests presented before, instead of refusing the
// identity: pod-b keeps being served without a miss. Counted on the real
// servers: one refused and one granted login, each one TokenReview at the
// API server (Vault's kubernetes auth method asks it). The relogin waits until
// the API server refuses pod-a's token: it caches a successful review for
// 10 s, so a relogin sooner would still be granted with it.
func TestRequestOnlyIdentityOutlivesItsNewestPod(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns, sa := testenv.UniqueName("fb"), "app"
	identity(ctx, t, env, ns, sa, "sk-two-pods")
	token := func(pod string) string {
		t.Helper()
		uid, err := env.Kube.CreatePod(ctx, ns, pod, sa)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := env.Kube.BoundToken(ctx, ns, sa, "Pod", pod, uid)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tokB := token("pod-b")
	tokA := token("pod-a") // minted later: the newest (the later offered, on a tie)

	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Prefetch.Refresh = time.Minute
	cfg.Vault.ReloginInterval = 30 * time.Second
	srv, clk := startFake(t, env, cfg)
	const want = "allow authorization=Bearer sk-two-pods"
	if got := srv.Check(t, tokB, "h"); got != want { // the miss: logs in with pod-b's token
		t.Fatalf("pod-b: %q", got)
	}
	if got := srv.Check(t, tokA, "h"); got != want { // a new token: validated, and kept as the newest
		t.Fatalf("pod-a: %q", got)
	}
	if err := env.Kube.DeletePod(ctx, ns, "pod-a"); err != nil {
		t.Fatal(err)
	}
	// The API server caches a successful token authentication for 10 s
	// (real time): credinject's own TokenReview of pod-a's token above
	// (tokenreview mode) would vouch for it to Vault's for that long, and
	// Vault would grant the login with it. Wait, asking as Vault's
	// kubernetes auth method asks (no audiences), until the API server
	// itself refuses it.
	apptest.Eventually(t, 15*time.Second, "the API server to refuse pod-a's token", func() bool {
		r, err := env.Kube.Client.AuthenticationV1().TokenReviews().Create(ctx,
			&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tokA}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return !r.Status.Authenticated
	})

	logins := func(result string) float64 {
		return srv.Counter(t, "credinject_vault_requests_total", map[string]string{"op": "login", "result": result})
	}
	reviews := func() float64 {
		n, err := env.Kube.RequestCount(ctx, "tokenreviews")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	denied0, ok0, reviews0, misses0 := logins("denied"), logins("ok"), reviews(), srv.Counter(t, "credinject_cache_misses_total", map[string]string{"cache": "credential"})
	// The relogin is due 30 s after the first login. Other parts wait on
	// the fake clock too (the audit trail's ticker): move it a second at a
	// time until the refresher has logged in again.
	apptest.Eventually(t, 20*time.Second, "the waiter of the refresher", clk.HasWaiters)
	apptest.Eventually(t, 30*time.Second, "the relogin", func() bool {
		if logins("ok") > ok0 {
			return true
		}
		clk.Step(time.Second)
		return false
	})
	if d, o := logins("denied")-denied0, logins("ok")-ok0; d != 1 || o != 1 {
		t.Fatalf("relogin: %v logins refused, %v granted; want 1 (pod-a's token) and 1 (pod-b's)", d, o)
	}
	// Vault's two logins, each one TokenReview. (Read before any Check:
	// credinject's own TokenReviews of tokens past cache.tokenTTL on the
	// fake clock would count too.)
	if n := reviews() - reviews0; n != 2 {
		t.Fatalf("%v TokenReviews at the API server during the relogin, want 2 (Vault's, one per login)", n)
	}
	if got := srv.Check(t, tokB, "h"); got != want {
		t.Fatalf("pod-b after pod-a's deletion and the relogin: %q", got)
	}
	if n := srv.Counter(t, "credinject_cache_misses_total", map[string]string{"cache": "credential"}) - misses0; n != 0 {
		t.Fatalf("%v credential cache misses after the fallback, want 0: the identity stayed served", n)
	}
}
