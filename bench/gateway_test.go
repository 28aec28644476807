package bench

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/testenv"
)

// TestGatewayTargetsOnBed runs every behind-Envoy target on the bed through
// the real Envoy: each must bring each identity's own key to the upstream
// (envoy alone: the workload's own token) and deny the unbound identity with
// its authorizer's reason.
func TestGatewayTargetsOnBed(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ids, err := CreateIdentities(ctx, env, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	ns, sa, tok, err := env.Kube.Identity(ctx, "bench-gw-unbound")
	if err != nil {
		t.Fatal(err)
	}
	unbound := Identity{Namespace: ns, ServiceAccount: sa, Token: tok, APIKey: "sk-unbound"}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+unbound.Key(), map[string]any{"api_key": unbound.APIKey}); err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Log = slog.New(slog.DiscardHandler)
	opts.ReferenceQPS, opts.ReferenceBurst = ReferenceQPS, ReferenceBurst
	back := &backends{env: env, opts: opts, dir: t.TempDir()}
	defer func() {
		if err := back.stop(); err != nil {
			t.Error(err)
		}
	}()
	for _, tc := range []struct{ name, deny string }{
		{GatewayNone, ""}, {GatewayNoop, ""},
		{GatewayGRPC, "403/vault_denied"}, {GatewayHTTP, "403/vault_denied"},
		{GatewayReference, "403/" + refUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := back.start(ctx, tc.name, ids)
			if err != nil {
				t.Fatal(err)
			}
			defer r.close()
			all := append(append([]Identity{}, ids...), unbound)
			// 10 requests, round robin over 5 identities: 2 for the unbound one.
			res, err := RunOpen(ctx, r.target, NewRequests(all), Open{Rate: 50, Duration: 200 * time.Millisecond, Timeout: 10 * time.Second, MaxInFlight: 4}, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantOK := 8
			if tc.deny == "" {
				wantOK = 10
			}
			if res.OK != int64(wantOK) || (tc.deny != "" && (res.Errors[tc.deny] != 2 || len(res.Errors) != 1)) || (tc.deny == "" && len(res.Errors) != 0) {
				t.Fatalf("ok %d, errors %v; want %d correct answers and the rest %q", res.OK, res.Errors, wantOK, tc.deny)
			}
		})
	}
}

// TestGatewayClassify: the gateway client counts what the upstream reports,
// not what the gateway says.
func TestGatewayClassify(t *testing.T) {
	id := &Identity{Namespace: "ns", ServiceAccount: "sa", Token: "a.b.c", APIKey: "k"}
	cases := map[string]struct {
		status int
		header http.Header
		want   string
	}{
		"own key":        {200, http.Header{echoCount: {"1"}, echoAuthorization: {"Bearer k"}}, ""},
		"another key":    {200, http.Header{echoCount: {"1"}, echoAuthorization: {"Bearer other"}}, ErrWrongKey},
		"the token":      {200, http.Header{echoCount: {"1"}, echoAuthorization: {"Bearer a.b.c"}}, ErrWrongKey},
		"two headers":    {200, http.Header{echoCount: {"2"}, echoAuthorization: {"Bearer k"}}, ErrWrongKey},
		"none":           {200, http.Header{echoCount: {"0"}}, ErrMissingKey},
		"not the echo":   {200, http.Header{}, "no_echo"},
		"credinject 401": {401, http.Header{"X-Credinject-Reason": {"missing_token"}}, "401/missing_token"},
		"gateway 503":    {503, http.Header{}, "503/-"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range c.header {
					w.Header()[k] = v
				}
				w.WriteHeader(c.status)
			}))
			defer srv.Close()
			g := NewGateway(srv.URL, 1)
			defer g.Close()
			got, err := g.Do(context.Background(), id, "Bearer k")
			if err != nil || got != c.want {
				t.Fatalf("Do = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

// TestEnvoyFor: the benchmark's Envoy configurations are deploy/envoy's, with
// only the ext_authz timeout changed (and the filter removed for envoy).
func TestEnvoyFor(t *testing.T) {
	for _, target := range GatewayTargets {
		conf, err := EnvoyFor(target, 8080, "127.0.0.1:9191", "127.0.0.1:9000", 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		// The filter itself (the access log also names its metadata).
		if has := strings.Contains(conf, "- name: envoy.filters.http.ext_authz"); has == (target == GatewayNone) {
			t.Fatalf("%s: ext_authz filter present = %v", target, has)
		}
		if target != GatewayNone && !strings.Contains(conf, "timeout: 5s") {
			t.Fatalf("%s: timeout not raised", target)
		}
		if strings.Contains(conf, "__") {
			t.Fatalf("%s: placeholder left", target)
		}
	}
}
