package app_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.All) }

// TestShutdownLeavesNothingBehind runs a full credinject (informer, prefetch,
// watcher refreshers, NATS subscriber, gRPC and HTTP servers), serves a few
// decisions, stops it, and checks that none of its goroutines outlive Run.
func TestShutdownLeavesNothingBehind(t *testing.T) {
	for _, mode := range []string{"tokenreview", "jwks"} {
		t.Run(mode, func(t *testing.T) { shutdownLeavesNothingBehind(t, mode, false) })
	}
	// Tracing on: the SDK's batcher and the OTLP exporter's connection
	// end with Run too; so does the debug listener.
	t.Run("tokenreview with tracing and debug", func(t *testing.T) { shutdownLeavesNothingBehind(t, "tokenreview", true) })
}

// shutdownLeavesNothingBehind runs the check in one token-validation mode
// (jwks adds the bound-object informers).
func shutdownLeavesNothingBehind(t *testing.T, mode string, operability bool) {
	env := testenv.Get(t)
	var sink *testenv.OTLPSink
	if operability {
		sink = env.OTLPSink(t)
	}
	ctx := context.Background()
	ns, sa, tok, err := env.Kube.Identity(ctx, "leak")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Vault.BindNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-leak"}); err != nil {
		t.Fatal(err)
	}
	// Whatever runs now belongs to the bed and the test binary.
	before := goleak.IgnoreCurrent()

	cfg := apptest.Config(env)
	cfg.Kubernetes.TokenValidation = mode
	cfg.Prefetch.Namespaces = []string{ns}
	if operability {
		cfg.Tracing.OTLPEndpoint, cfg.Tracing.SamplingRatio = sink.GRPCEndpoint, 1
		cfg.Debug.Listen = "127.0.0.1:0"
	}
	runCtx, cancel := context.WithCancel(ctx)
	srv, done := apptest.Run(t, runCtx, env, cfg)
	if got := srv.Check(t, tok, "h"); got != "allow authorization=Bearer sk-leak" {
		t.Fatalf("check: %q", got)
	}
	if got := srv.Check(t, "", "h"); got != "deny 401 missing_token" {
		t.Fatalf("no token: %q", got)
	}
	srv.Conn.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	goleak.VerifyNone(t, before)
}
