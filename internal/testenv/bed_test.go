package testenv_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.All) }

// vaultLogin logs in to Vault's Kubernetes auth as the reference design does.
func vaultLogin(ctx context.Context, env *testenv.Env, jwt string) (*vaultapi.Client, error) {
	c, err := env.Vault.Client.Clone()
	if err != nil {
		return nil, err
	}
	c.ClearToken()
	s, err := c.Logical().WriteWithContext(ctx, "auth/kubernetes/login", map[string]any{"role": testenv.VaultRole, "jwt": jwt})
	if err != nil {
		return nil, err
	}
	c.SetToken(s.Auth.ClientToken)
	return c, nil
}

func statusOf(err error) int {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func TestBedIsReal(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("bound namespace reads its own credential", func(t *testing.T) {
		ns, sa, tok, err := env.Kube.Identity(ctx, "bed-bound")
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Vault.BindNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-" + ns}); err != nil {
			t.Fatal(err)
		}
		c, err := vaultLogin(ctx, env, tok)
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		s, err := c.KVv2("secret").Get(ctx, "egress/"+ns+"/"+sa)
		if err != nil {
			t.Fatalf("read own path: %v", err)
		}
		if got := s.Data["api_key"]; got != "sk-"+ns {
			t.Fatalf("api_key = %v, want sk-%s", got, ns)
		}
		// The templated policy confines it to its own path.
		other := "egress/" + testenv.BoundNamespace + "/default"
		if _, err := env.Vault.PutCredential(ctx, other, map[string]any{"api_key": "sk-other"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.KVv2("secret").Get(ctx, other); statusOf(err) != http.StatusForbidden {
			t.Fatalf("read of another identity's path: err %v, want 403", err)
		}
	})

	t.Run("unbound namespace is denied by Vault", func(t *testing.T) {
		_, _, tok, err := env.Kube.Identity(ctx, "bed-unbound")
		if err != nil {
			t.Fatal(err)
		}
		_, err = vaultLogin(ctx, env, tok)
		if statusOf(err) != http.StatusForbidden {
			t.Fatalf("login from an unbound namespace: err %v, want 403", err)
		}
	})

	t.Run("tokenreview with the wrong audience is unauthenticated", func(t *testing.T) {
		ns, sa, _, err := env.Kube.Identity(ctx, "bed-aud")
		if err != nil {
			t.Fatal(err)
		}
		tok, err := env.Kube.Token(ctx, ns, sa, []string{"https://not-the-api.example"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		review := func(auds []string) *authnv1.TokenReview {
			r, err := env.Kube.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
				Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: auds},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		if r := review([]string{testenv.Audience}); r.Status.Authenticated {
			t.Fatalf("token for another audience was authenticated for %s", testenv.Audience)
		}
		if r := review([]string{"https://not-the-api.example"}); !r.Status.Authenticated {
			t.Fatalf("token not authenticated for its own audience: %s", r.Status.Error)
		}
	})
}
