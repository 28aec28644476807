package watcher

import (
	"context"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// spyVault is fakeVault recording the span each call's context carries.
type spyVault struct {
	*fakeVault
	mu    sync.Mutex
	spans map[string]trace.SpanContext // by operation
}

func (v *spyVault) see(op string, ctx context.Context) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.spans[op] = trace.SpanContextFromContext(ctx)
}

func (v *spyVault) Login(ctx context.Context, jwt string) (vaultLogin, error) {
	v.see("login", ctx)
	return v.fakeVault.Login(ctx, jwt)
}

func (v *spyVault) Read(ctx context.Context, token, path string) (*vaultapi.Secret, error) {
	v.see("read", ctx)
	return v.fakeVault.Read(ctx, token, path)
}

// A miss made under a Check span runs in a refresh span, its child, and the
// Vault login and read get that span in their context, although the miss's
// single flight runs detached from its caller's context.
func TestMissJoinsTheCallersTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	r := newRig(t)
	spy := &spyVault{fakeVault: r.vault, spans: map[string]trace.SpanContext{}}
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := newWatcher(Config{
		Routes: r.w.cfg.Routes, Refresh: 5 * time.Minute, StaleGrace: 15 * time.Minute, DeniedTTL: 10 * time.Second,
		KVMount: "secret", Concurrency: 4, Store: r.creds, Clock: r.clock, Jitter: func() float64 { return 0 }, ReloginPhase: func() float64 { return 0 },
		TracerProvider: tp,
	}, spy, nil, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	id, tok := r.identity("ns", "sa", "sk-1")
	ctx, check := tp.Tracer("test").Start(context.Background(), "check")
	e, err := w.Credential(ctx, "", id, tok, r.clock.Now().Add(time.Hour))
	check.End()
	if err != nil || e.Value != "Bearer sk-1" {
		t.Fatalf("miss: %v %v", e, err)
	}
	var refresh sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == SpanRefresh {
			refresh = s
		}
	}
	if refresh == nil {
		t.Fatalf("no %s span in %v", SpanRefresh, rec.Ended())
	}
	if refresh.Parent().SpanID() != check.SpanContext().SpanID() || refresh.SpanContext().TraceID() != check.SpanContext().TraceID() {
		t.Errorf("refresh span's parent %v, want the caller's %v", refresh.Parent(), check.SpanContext())
	}
	got := map[string]string{}
	for _, kv := range refresh.Attributes() {
		got[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range map[string]string{"credinject.identity": "ns/sa", "credinject.route": "", "credinject.trigger": "miss", "credinject.source": "kv", "credinject.result": "ok"} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("refresh attribute %s = %q (set %v), want %q", k, g, ok, v)
		}
	}
	for _, op := range []string{"login", "read"} {
		if sc := spy.spans[op]; sc.SpanID() != refresh.SpanContext().SpanID() {
			t.Errorf("vault %s ran under span %v, want the refresh span %v", op, sc.SpanID(), refresh.SpanContext().SpanID())
		}
	}
	for _, kv := range refresh.Attributes() {
		if v := kv.Value.String(); v == tok || v == "sk-1" {
			t.Errorf("attribute %s carries a secret", kv.Key)
		}
	}
}
