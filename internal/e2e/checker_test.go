package e2e_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/satoken"
	"github.com/credinject/credinject/internal/testenv"
)

// expiredToken signs an already expired token for ns/sa with the API
// server's own service-account key: the API server cannot be asked for one
// (TokenRequest's minimum lifetime is 10 minutes), but it is exactly what a
// workload holding a stale token presents.
func expiredToken(t *testing.T, env *testenv.Env, ns, sa, uid, realToken string) string {
	t.Helper()
	hdr, err := base64.RawURLEncoding.DecodeString(strings.Split(realToken, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatal(err)
	}
	iss, err := satoken.FromKey(testenv.Issuer, h.Kid, env.Kube.SAKey, jose.RS256)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := iss.Mint(satoken.Token{Namespace: ns, ServiceAccount: sa, UID: uid, Audiences: []string{testenv.Audience}, IssuedAt: time.Now().Add(-2 * time.Hour), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestCheckOnTheBed drives the real server through a real gRPC client and
// the HTTP endpoint, against the real API server and Vault, in both token
// validation modes.
func TestCheckOnTheBed(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Two bound identities with different keys, one unbound.
	nsA, saA, tokA, err := env.Kube.Identity(ctx, "chk-a")
	if err != nil {
		t.Fatal(err)
	}
	nsB, saB, tokB, err := env.Kube.Identity(ctx, "chk-b")
	if err != nil {
		t.Fatal(err)
	}
	nsU, saU, tokU, err := env.Kube.Identity(ctx, "chk-unbound")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range [][2]string{{nsA, saA}, {nsB, saB}, {nsU, saU}} {
		if _, err := env.Vault.PutCredential(ctx, "egress/"+id[0]+"/"+id[1], map[string]any{"api_key": "sk-" + id[0]}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{nsA, nsB} {
		if err := env.Vault.BindNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	wrongAud, err := env.Kube.Token(ctx, nsA, saA, []string{"https://not-the-api.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	uidA, err := env.Kube.CreateServiceAccount(ctx, nsA, saA)
	if err != nil {
		t.Fatal(err)
	}
	expired := expiredToken(t, env, nsA, saA, uidA, tokA)

	for _, mode := range []string{"tokenreview", "jwks"} {
		t.Run(mode, func(t *testing.T) {
			cfg := apptest.Config(env)
			cfg.Events.NatsURL = ""
			cfg.Kubernetes.TokenValidation = mode
			srv := apptest.Start(t, env, cfg)

			cases := []struct{ name, authz, want string }{
				{"no token", "", "deny 401 missing_token"},
				{"garbage header", "Bearer ***.%%%.@@@", "deny 401 malformed_token"},
				{"basic auth", "Basic YTpi", "deny 401 malformed_token"},
				{"not a JWT", "Bearer abc.def", "deny 401 malformed_token"},
				{"authorized a", "Bearer " + tokA, "allow authorization=Bearer sk-" + nsA},
				{"authorized b", "Bearer " + tokB, "allow authorization=Bearer sk-" + nsB},
				{"unbound namespace", "Bearer " + tokU, "deny 403 vault_denied"},
				{"wrong audience", "Bearer " + wrongAud, "deny 401 invalid_token"},
				{"expired", "Bearer " + expired, "deny 401 invalid_token"},
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					if got := srv.CheckHeader(t, c.authz, "api.openai.com"); got != c.want {
						t.Fatalf("grpc: got %q, want %q", got, c.want)
					}
					if got := srv.HTTPCheck(t, c.authz, "api.openai.com", "Authorization"); got != c.want {
						t.Fatalf("http: got %q, want %q", got, c.want)
					}
				})
			}
			t.Run("the workload token never appears in an answer", func(t *testing.T) {
				resp, err := srv.Client.Check(ctx, apptest.Request("Bearer "+tokA, "api.openai.com"))
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(resp.String(), tokA) {
					t.Fatal("the SA token appears in the CheckResponse")
				}
			})
			t.Run("deleted service account", func(t *testing.T) {
				ns, sa, tok, err := env.Kube.Identity(ctx, "chk-del-"+mode)
				if err != nil {
					t.Fatal(err)
				}
				if err := env.Vault.BindNamespace(ctx, ns); err != nil {
					t.Fatal(err)
				}
				if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-del"}); err != nil {
					t.Fatal(err)
				}
				// Asked again, the token is a cache hit whose result the
				// informer confirmed: later hits skip the informer until it
				// counts a removal, which the delete below must be.
				for range 3 {
					if got := srv.Check(t, tok, "h"); got != "allow authorization=Bearer sk-del" {
						t.Fatalf("before delete: %q", got)
					}
				}
				if err := env.Kube.DeleteServiceAccount(ctx, ns, sa); err != nil {
					t.Fatal(err)
				}
				apptest.Eventually(t, 10*time.Second, "the deleted SA's token to be refused", func() bool {
					return srv.Check(t, tok, "h") == "deny 401 unknown_serviceaccount"
				})
			})
		})
	}
}
