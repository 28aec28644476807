package devstack_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	vaultapi "github.com/hashicorp/vault/api"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/devstack"
	"github.com/credinject/credinject/internal/satoken"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, dir string) *devstack.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute) // a cold Vault build
	defer cancel()
	s, err := devstack.Start(ctx, devstack.Options{
		DataDir: dir, VaultAddr: "127.0.0.1:0", NATSAddr: "127.0.0.1:0", Progress: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// login logs in to the stack's Vault as the dev identity holding token, the
// way credinject's watcher does.
func login(ctx context.Context, s *devstack.Stack, token string) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = s.VaultAddr
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.ClearToken()
	sec, err := c.Logical().WriteWithContext(ctx, "auth/"+devstack.AuthMount+"/login", map[string]any{"role": devstack.Role, "jwt": token})
	if err != nil {
		return nil, err
	}
	c.SetToken(sec.Auth.ClientToken)
	return c, nil
}

func status(err error) int {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func identity(t *testing.T, s *devstack.Stack, name string) devstack.Identity {
	t.Helper()
	for _, id := range s.Identities {
		if id.Name() == name {
			return id
		}
	}
	t.Fatalf("no demo identity %s", name)
	return devstack.Identity{}
}

func TestStack(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	defer s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	egress := identity(t, s, "egress-test/default")
	b := identity(t, s, "workload-b/default")
	unbound := identity(t, s, "default/default")

	t.Run("each identity reads its own key and only its own", func(t *testing.T) {
		for _, tc := range []struct{ id, other devstack.Identity }{{egress, b}, {b, egress}} {
			c, err := login(ctx, s, tc.id.Token)
			if err != nil {
				t.Fatalf("%s: login: %v", tc.id.Name(), err)
			}
			sec, err := c.KVv2(devstack.KVMount).Get(ctx, "egress/"+tc.id.Name())
			if err != nil {
				t.Fatalf("%s: read own path: %v", tc.id.Name(), err)
			}
			if got := sec.Data["api_key"]; got != tc.id.Key {
				t.Fatalf("%s: api_key = %v, want %s", tc.id.Name(), got, tc.id.Key)
			}
			if _, err := c.KVv2(devstack.KVMount).Get(ctx, "egress/"+tc.other.Name()); status(err) != http.StatusForbidden {
				t.Fatalf("%s read %s's path: err %v, want 403", tc.id.Name(), tc.other.Name(), err)
			}
		}
	})

	t.Run("an unbound namespace is refused by Vault", func(t *testing.T) {
		if unbound.Key != "" {
			t.Fatalf("default/default has a key")
		}
		if _, err := login(ctx, s, unbound.Token); status(err) != http.StatusBadRequest {
			t.Fatalf("login: err %v, want 400 (role's bound_claims)", err)
		}
	})

	t.Run("a token of another issuer key or audience is refused by Vault", func(t *testing.T) {
		other, err := satoken.New(s.Issuer.URL)
		if err != nil {
			t.Fatal(err)
		}
		forged, err := other.Mint(satoken.Token{Namespace: "egress-test", ServiceAccount: "default", Audiences: s.Audiences, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := login(ctx, s, forged); status(err) != http.StatusBadRequest {
			t.Fatalf("forged token: err %v, want 400", err)
		}
		wrongAud, err := s.Issuer.Mint(satoken.Token{Namespace: "egress-test", ServiceAccount: "default", Audiences: []string{"https://elsewhere.example"}, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := login(ctx, s, wrongAud); status(err) != http.StatusBadRequest {
			t.Fatalf("wrong audience: err %v, want 400", err)
		}
	})

	t.Run("credinject's jwks validator accepts the tokens", func(t *testing.T) {
		cfg := s.Config("127.0.0.1:0", "127.0.0.1:0")
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		if cfg.Kubernetes.TokenValidation != "jwks" || cfg.Vault.AuthMethod != "jwt" || cfg.Vault.AuthMount != devstack.AuthMount || cfg.Events.NatsURL != s.NATSURL {
			t.Fatalf("config: %+v", cfg)
		}
		v, err := checker.NewJWKSValidator(ctx, checker.JWKSConfig{Issuer: cfg.Kubernetes.Issuer, Audiences: cfg.Kubernetes.Audiences, Keys: s.JWKS()})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range s.Identities {
			got, err := v.Validate(ctx, id.Token)
			if err != nil {
				t.Fatalf("%s: %v", id.Name(), err)
			}
			if got.Identity.Namespace != id.Namespace || got.Identity.ServiceAccount != id.ServiceAccount {
				t.Fatalf("%s: validated as %+v", id.Name(), got)
			}
			if time.Until(got.Expires) < 23*time.Hour {
				t.Fatalf("%s: expires %v, want about 24h", id.Name(), got.Expires)
			}
		}
	})

	t.Run("a second stack on the same folder is refused", func(t *testing.T) {
		_, err := devstack.Start(ctx, devstack.Options{DataDir: dir, VaultAddr: "127.0.0.1:0", NATSAddr: "127.0.0.1:0"})
		if err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("err %v, want in use", err)
		}
	})

	t.Run("the guide's grpcurl body is a CheckRequest", func(t *testing.T) {
		var req authv3.CheckRequest
		if err := protojson.Unmarshal([]byte(devstack.CheckRequestJSON("Bearer "+egress.Token)), &req); err != nil {
			t.Fatal(err)
		}
		h := req.GetAttributes().GetRequest().GetHttp()
		if h.GetHeaders()["authorization"] != "Bearer "+egress.Token || h.GetHost() == "" {
			t.Fatalf("request: %v", h)
		}
		var out strings.Builder
		if err := (devstack.Guide{Stack: s, GRPCAddr: "127.0.0.1:9191", HTTPAddr: "127.0.0.1:8181", Command: "credinject"}).Write(&out); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"export TOKEN_EGRESS_TEST='" + egress.Token + "'", "export TOKEN_WORKLOAD_B=", "export TOKEN_DEFAULT=", "VAULT_TOKEN=root credinject rotate --nats-url " + s.NATSURL} {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("guide lacks %q:\n%s", want, out.String())
			}
		}
	})

	// Restart on the same data: Vault keeps its storage, the setup is
	// idempotent, the new issuer key replaces the old one.
	s.Stop()
	s2 := start(t, dir)
	defer s2.Stop()
	if _, err := login(ctx, s2, egress.Token); status(err) != http.StatusBadRequest {
		t.Fatalf("old run's token after restart: err %v, want 400", err)
	}
	c, err := login(ctx, s2, identity(t, s2, "egress-test/default").Token)
	if err != nil {
		t.Fatalf("login after restart: %v", err)
	}
	sec, err := c.KVv2(devstack.KVMount).GetVersion(ctx, "egress/egress-test/default", 0)
	if err != nil {
		t.Fatal(err)
	}
	if sec.VersionMetadata.Version != 1 {
		t.Fatalf("version %d after restart, want 1 (seeding must not add versions)", sec.VersionMetadata.Version)
	}
}
