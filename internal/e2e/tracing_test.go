package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/watcher"
)

// TestTracesJoinTheGatewaysTrace runs credinject with tracing on against the
// OpenTelemetry Collector's real OTLP receiver and sends a CheckRequest for
// a cold identity (a token-cache and a credential-cache miss) with a
// sampled traceparent: credinject's Check span arrives under the trace id
// sent, its parent the span id sent, with the TokenReview, the refresh and
// the Vault login and read under it, carrying the identity and the route and
// never the token or the credential. A request whose traceparent says "not
// sampled" sends nothing; one without a trace context starts a new trace
// (samplingRatio 1) with the same spans.
func TestTracesJoinTheGatewaysTrace(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	sink := env.OTLPSink(t)
	ns, sa, tok := boundIdentity(ctx, t, env, "trace", "sk-trace")
	id := ns + "/" + sa
	cfg := apptest.Config(env)
	cfg.Kubernetes.TokenValidation = "tokenreview"
	cfg.Tracing.OTLPEndpoint = sink.GRPCEndpoint
	// Requests without a trace context are all traced; the gateway's
	// "not sampled" still wins.
	cfg.Tracing.SamplingRatio = 1
	r := apptest.Start(t, env, cfg)

	traceID, parent := randHex(t, 16), randHex(t, 8)
	q := apptest.Request("Bearer "+tok, "api.openai.com")
	q.Attributes.Request.Http.Headers["traceparent"] = "00-" + traceID + "-" + parent + "-01"
	resp, err := r.Client.Check(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if got := apptest.Outcome(resp); got != "allow authorization=Bearer sk-trace" {
		t.Fatalf("check: %q", got)
	}
	// The same identity again, not sampled by the gateway.
	unsampled := randHex(t, 16)
	q.Attributes.Request.Http.Headers["traceparent"] = "00-" + unsampled + "-" + parent + "-00"
	if resp, err := r.Client.Check(ctx, q); err != nil || apptest.Outcome(resp) != "allow authorization=Bearer sk-trace" {
		t.Fatalf("unsampled check: %v %v", apptest.Outcome(resp), err)
	}

	// Another cold identity, no trace context at all.
	ns2, sa2, tok2 := boundIdentity(ctx, t, env, "trace-root", "sk-trace-root")
	if got := r.Check(t, tok2, "api.openai.com"); got != "allow authorization=Bearer sk-trace-root" {
		t.Fatalf("check without a trace context: %q", got)
	}

	spans, byName := traceSpans(ctx, t, sink, traceID, "the miss's spans at the OTLP receiver",
		checker.SpanCheck, checker.SpanTokenReview, watcher.SpanRefresh, watcher.SpanVaultPrefix+"login", watcher.SpanVaultPrefix+"read")
	for _, s := range spans {
		t.Logf("span %s %s parent %s %v", s.Name, s.SpanID, s.ParentSpanID, s.Attributes)
		if s.Service != "credinject" {
			t.Errorf("span %s: service %q", s.Name, s.Service)
		}
		for k, v := range s.Attributes {
			if strings.Contains(v, tok) || strings.Contains(v, "sk-trace") || (len(v) > 40 && strings.Contains(tok, v)) {
				t.Errorf("span %s attribute %s carries the token or the credential", s.Name, k)
			}
		}
	}
	check := byName[checker.SpanCheck]
	if check.ParentSpanID != parent {
		t.Errorf("Check span's parent %q, want the gateway's span %q", check.ParentSpanID, parent)
	}
	wantAttrs(t, check, map[string]string{"credinject.identity": id, "credinject.route": "", "credinject.result": "allow", "credinject.cache": "miss"})
	review := byName[checker.SpanTokenReview]
	if review.ParentSpanID != check.SpanID {
		t.Errorf("TokenReview span's parent %q, want the Check span %q", review.ParentSpanID, check.SpanID)
	}
	wantAttrs(t, review, map[string]string{"credinject.identity": id, "credinject.tokenreview.result": "ok"})
	refresh := byName[watcher.SpanRefresh]
	if refresh.ParentSpanID != check.SpanID {
		t.Errorf("refresh span's parent %q, want the Check span %q", refresh.ParentSpanID, check.SpanID)
	}
	wantAttrs(t, refresh, map[string]string{"credinject.identity": id, "credinject.route": "", "credinject.trigger": "miss", "credinject.source": "kv", "credinject.result": "ok"})
	for _, op := range []string{"login", "read"} {
		s := byName[watcher.SpanVaultPrefix+op]
		if s.ParentSpanID != refresh.SpanID {
			t.Errorf("vault.%s span's parent %q, want the refresh span %q", op, s.ParentSpanID, refresh.SpanID)
		}
		wantAttrs(t, s, map[string]string{"credinject.identity": id, "credinject.route": "", "vault.operation": op, "credinject.result": "ok"})
	}
	wantAttrs(t, byName[watcher.SpanVaultPrefix+"read"], map[string]string{"vault.path": "secret/data/egress/" + ns + "/" + sa})
	wantAttrs(t, byName[watcher.SpanVaultPrefix+"login"], map[string]string{"vault.path": "auth/kubernetes/login"})

	// Everything sampled has arrived by now (one batch); nothing of the
	// unsampled trace is among it.
	all, err := sink.Spans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.TraceID == unsampled {
			t.Errorf("span %s of the unsampled trace was exported", s.Name)
		}
	}
	// The request without a context: a root Check span of its own trace,
	// its refresh under it.
	apptest.Eventually(t, 20*time.Second, "the root trace's spans", func() bool {
		all, err := sink.Spans(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var root testenv.Span
		for _, s := range all {
			if s.Name == checker.SpanCheck && s.Attributes["credinject.identity"] == ns2+"/"+sa2 {
				root = s
			}
		}
		if root.SpanID == "" {
			return false
		}
		if root.ParentSpanID != "" || root.TraceID == traceID {
			t.Fatalf("Check span without a trace context: trace %s, parent %q", root.TraceID, root.ParentSpanID)
		}
		for _, s := range all {
			if s.Name == watcher.SpanRefresh && s.ParentSpanID == root.SpanID && s.TraceID == root.TraceID {
				return true
			}
		}
		return false
	})
}

func wantAttrs(t *testing.T, s testenv.Span, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got, ok := s.Attributes[k]; !ok || got != v {
			t.Errorf("span %s: attribute %s = %q (set %v), want %q", s.Name, k, got, ok, v)
		}
	}
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestTracesTokenEndpoint: through the forward-auth endpoint (/check, as
// nginx or Traefik call it) with a sampled traceparent, a cold identity on an
// oauth2-client-credentials route against the real Ory Hydra: the token
// request's span is under the refresh, under the Check, under the trace
// sent; no attribute carries the client secret or the access token.
func TestTracesTokenEndpoint(t *testing.T) {
	env := testenv.Get(t)
	hy := env.Hydra(t)
	ctx := context.Background()
	sink := env.OTLPSink(t)
	ns, sa := testenv.UniqueName("otr"), "app"
	tok := identity(ctx, t, env, ns, sa, "unused")
	client, secret := ns+"-"+sa, "secret-"+testenv.UniqueName("s")
	if err := hy.CreateClient(ctx, client, secret, "read", "client_secret_basic"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "egress-oauth/"+ns+"/"+sa, map[string]any{"client_id": client, "client_secret": secret}); err != nil {
		t.Fatal(err)
	}
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	cfg.Tracing.OTLPEndpoint = sink.GRPCEndpoint
	cfg.Tracing.SamplingRatio = 0
	cfg.Routes = []config.Route{{
		Name: "partner", Hosts: []string{"api.partner.example"}, Source: config.SourceOAuth2,
		Path: "egress-oauth/{namespace}/{serviceaccount}", OAuth2: &config.OAuth2{TokenURL: hy.TokenURL, Scopes: []string{"read"}},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r := apptest.Start(t, env, cfg)

	traceID, parent := randHex(t, 16), randHex(t, 8)
	req, _ := http.NewRequest(http.MethodGet, r.HTTPURL+"/check", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Host = "api.partner.example"
	req.Header.Set("traceparent", "00-"+traceID+"-"+parent+"-01")
	resp, err := r.HTTPClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	accessToken, ok := strings.CutPrefix(resp.Header.Get("Authorization"), "Bearer ")
	if resp.StatusCode != http.StatusOK || !ok || accessToken == "" {
		t.Fatalf("/check: %d %q", resp.StatusCode, resp.Header.Get("X-Credinject-Reason"))
	}

	spans, byName := traceSpans(ctx, t, sink, traceID, "the token request's span at the OTLP receiver", watcher.SpanTokenEndpoint)
	check, refresh, token := byName[checker.SpanCheck], byName[watcher.SpanRefresh], byName[watcher.SpanTokenEndpoint]
	if check.ParentSpanID != parent || refresh.ParentSpanID != check.SpanID || token.ParentSpanID != refresh.SpanID {
		t.Errorf("chain: check %s (parent %s, want %s), refresh %s (parent %s), token %s (parent %s)",
			check.SpanID, check.ParentSpanID, parent, refresh.SpanID, refresh.ParentSpanID, token.SpanID, token.ParentSpanID)
	}
	wantAttrs(t, check, map[string]string{"credinject.identity": ns + "/" + sa, "credinject.route": "partner", "credinject.result": "allow", "credinject.cache": "miss"})
	wantAttrs(t, refresh, map[string]string{"credinject.source": "oauth2-client-credentials", "credinject.route": "partner"})
	host := strings.TrimPrefix(strings.TrimPrefix(hy.TokenURL, "http://"), "https://")
	host, _, _ = strings.Cut(host, "/")
	wantAttrs(t, token, map[string]string{"credinject.identity": ns + "/" + sa, "credinject.route": "partner", "server.address": host, "credinject.result": "ok"})
	for _, s := range spans {
		for k, v := range s.Attributes {
			for _, secretValue := range []string{secret, accessToken, tok} {
				if strings.Contains(v, secretValue) {
					t.Errorf("span %s attribute %s carries a secret", s.Name, k)
				}
			}
		}
	}
}

// traceSpans polls sink (for up to 20s, what naming the wait) until the
// trace traceID has a span of each of names, and returns the trace's spans
// and, by name, the last of each.
func traceSpans(ctx context.Context, t *testing.T, sink *testenv.OTLPSink, traceID, what string, names ...string) ([]testenv.Span, map[string]testenv.Span) {
	t.Helper()
	var spans []testenv.Span
	byName := map[string]testenv.Span{}
	apptest.Eventually(t, 20*time.Second, what, func() bool {
		all, err := sink.Spans(ctx)
		if err != nil {
			t.Fatal(err)
		}
		spans = spans[:0]
		for _, s := range all {
			if s.TraceID == traceID {
				spans = append(spans, s)
				byName[s.Name] = s
			}
		}
		for _, n := range names {
			if _, ok := byName[n]; !ok {
				return false
			}
		}
		return true
	})
	return spans, byName
}
