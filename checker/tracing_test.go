package checker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
)

const (
	gwTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	gwSpan  = "00f067aa0ba902b7"
)

// tracedRig is a rig whose checker records its spans with the real SDK
// (parent-based; new traces sampled by the checker's own ratio draw).
func tracedRig(t *testing.T, ratio float64) (*rig, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return newTracedRig(t, nil, true, checker.Tracing{TracerProvider: tp, SamplingRatio: ratio}), rec
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]string {
	m := map[attribute.Key]string{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value.String()
	}
	return m
}

func spansNamed(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// A sampled trace context in the request's headers (W3C or B3, single or
// multi) is the Check span's parent, and the miss path gets the Check span
// in its context: the watcher's spans join the gateway's trace.
func TestTraceJoinsTheGatewaysTrace(t *testing.T) {
	for name, hdrs := range map[string]map[string]string{
		"traceparent": {"traceparent": "00-" + gwTrace + "-" + gwSpan + "-01"},
		"b3 single":   {"b3": gwTrace + "-" + gwSpan + "-1"},
		"b3 multi":    {"x-b3-traceid": gwTrace, "x-b3-spanid": gwSpan, "x-b3-sampled": "1"},
	} {
		t.Run(name, func(t *testing.T) {
			r, rec := tracedRig(t, 0)
			var seen trace.SpanContext
			r.source = func(ctx context.Context, route string, id authz.Identity, token string, exp time.Time) (*cache.Entry, error) {
				seen = trace.SpanContextFromContext(ctx)
				now := r.clock.Now()
				e := &cache.Entry{Route: route, Identity: id, Header: "authorization", Value: "Bearer k", ReadAt: now, FreshUntil: now.Add(time.Minute), ExpiresAt: now.Add(2 * time.Minute)}
				return e, r.creds.Set(e)
			}
			q := request("Bearer "+r.token(t, "ns", "sa"), "api.openai.com")
			for k, v := range hdrs {
				q.Attributes.Request.Http.Headers[k] = v
			}
			if resp, _ := r.g.Check(context.Background(), q); resp.GetOkResponse() == nil {
				t.Fatalf("not allowed: %v", outcome(resp))
			}
			checks := spansNamed(rec, checker.SpanCheck)
			if len(checks) != 1 {
				t.Fatalf("%d Check spans, want 1", len(checks))
			}
			s := checks[0]
			if got := s.SpanContext().TraceID().String(); got != gwTrace {
				t.Errorf("trace id %s, want the gateway's %s", got, gwTrace)
			}
			if got := s.Parent().SpanID().String(); got != gwSpan || !s.Parent().IsRemote() {
				t.Errorf("parent %s (remote %v), want the gateway's span %s", got, s.Parent().IsRemote(), gwSpan)
			}
			if s.SpanKind() != trace.SpanKindServer {
				t.Errorf("kind %v", s.SpanKind())
			}
			a := attrs(s)
			want := map[attribute.Key]string{checker.AttrIdentity: "ns/sa", checker.AttrRoute: "", checker.AttrResult: "allow", checker.AttrCache: "miss", checker.AttrStale: "false"}
			for k, v := range want {
				if got, ok := a[k]; !ok || got != v {
					t.Errorf("attribute %s = %q (set %v), want %q", k, got, ok, v)
				}
			}
			if seen.SpanID() != s.SpanContext().SpanID() {
				t.Errorf("the source's context carries span %s, want the Check span %s", seen.SpanID(), s.SpanContext().SpanID())
			}
			// A hit in the same trace: a second span, marked as a hit.
			rec2 := len(rec.Ended())
			if resp, _ := r.g.Check(context.Background(), q); resp.GetOkResponse() == nil {
				t.Fatalf("not allowed: %v", outcome(resp))
			}
			if got := rec.Ended(); len(got) != rec2+1 || attrs(got[rec2])[checker.AttrCache] != "hit" {
				t.Errorf("the hit made %d spans (cache %q)", len(got)-rec2, attrs(got[len(got)-1])[checker.AttrCache])
			}
		})
	}
}

// A deny carries its reason; a 5xx reason marks the span as an error.
func TestTraceRecordsTheDenyReason(t *testing.T) {
	r, rec := tracedRig(t, 1)
	q := request("Bearer "+r.token(t, "ns", "sa"), "api.openai.com")
	if resp, _ := r.g.Check(context.Background(), q); resp.GetOkResponse() != nil {
		t.Fatal("allowed without a credential")
	}
	checks := spansNamed(rec, checker.SpanCheck)
	if len(checks) != 1 {
		t.Fatalf("%d Check spans, want 1 (ratio 1, no parent: a new trace)", len(checks))
	}
	a := attrs(checks[0])
	if a[checker.AttrResult] != "deny" || a[checker.AttrReason] != string(authz.ReasonVaultUnavailable) {
		t.Errorf("attributes %v", a)
	}
	if checks[0].Status().Code.String() != "Error" {
		t.Errorf("status %v, want Error for %s", checks[0].Status(), authz.ReasonVaultUnavailable)
	}
	if checks[0].Parent().IsValid() {
		t.Errorf("a request without a trace context got parent %v", checks[0].Parent())
	}
}

// An unsampled request makes no span: the gateway said not to sample, or
// the ratio did. (tracing_alloc_test.go: nor any allocation on a hit.)
func TestTraceUnsampledMakesNoSpan(t *testing.T) {
	for name, c := range unsampledCases {
		t.Run(name, func(t *testing.T) {
			if n := c.spansOfThreeHits(t); n != 0 {
				t.Errorf("%d spans for unsampled requests", n)
			}
		})
	}
}

type unsampledCase struct {
	ratio float64
	hdrs  map[string]string
}

var unsampledCases = map[string]unsampledCase{
	"traceparent flags 00":    {1, map[string]string{"traceparent": "00-" + gwTrace + "-" + gwSpan + "-00"}},
	"b3 single sampled 0":     {1, map[string]string{"b3": gwTrace + "-" + gwSpan + "-0"}},
	"b3 single deferred":      {1, map[string]string{"b3": gwTrace + "-" + gwSpan}},
	"b3 multi sampled 0":      {1, map[string]string{"x-b3-traceid": gwTrace, "x-b3-spanid": gwSpan, "x-b3-sampled": "0"}},
	"ratio 0, no parent":      {0, nil},
	"ratio 0, invalid parent": {0, map[string]string{"traceparent": "garbage"}},
}

// A context that says sampled but that the propagator refuses (a zero or
// non-hex id) is no parent: the ratio decides, as without one. (Extracting
// it allocates, so these are not in unsampledCases.)
func TestTraceInvalidSampledParentFollowsTheRatio(t *testing.T) {
	for name, c := range map[string]unsampledCase{
		"ratio 0, zero trace id flagged sampled": {0, map[string]string{"traceparent": "00-00000000000000000000000000000000-" + gwSpan + "-01"}},
		"ratio 0, non-hex traceparent sampled":   {0, map[string]string{"traceparent": "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-" + gwSpan + "-01"}},
		"ratio 0, b3 single bad ids sampled":     {0, map[string]string{"b3": "not-hex-1"}},
		"ratio 0, b3 multi bad trace id sampled": {0, map[string]string{"x-b3-traceid": "not-hex", "x-b3-spanid": gwSpan, "x-b3-sampled": "1"}},
	} {
		t.Run(name, func(t *testing.T) {
			if n := c.spansOfThreeHits(t); n != 0 {
				t.Errorf("%d spans at ratio 0 for an invalid parent", n)
			}
		})
	}
}

// hitRig is a traced rig at c's ratio with a cached credential for ns/sa,
// and c's request for it (a cache hit).
func (c unsampledCase) hitRig(t *testing.T) (*rig, *tracetest.SpanRecorder, *authv3.CheckRequest) {
	t.Helper()
	r, rec := tracedRig(t, c.ratio)
	r.put(t, "", "ns", "sa", "authorization", "Bearer k")
	return r, rec, c.request(t, r)
}

// spansOfThreeHits serves three allowed Checks of c's request from a hitRig
// and returns how many spans ended.
func (c unsampledCase) spansOfThreeHits(t *testing.T) int {
	t.Helper()
	r, rec, q := c.hitRig(t)
	for range 3 {
		if resp, _ := r.g.Check(context.Background(), q); resp.GetOkResponse() == nil {
			t.Fatalf("not allowed: %v", outcome(resp))
		}
	}
	return len(rec.Ended())
}

func (c unsampledCase) request(t *testing.T, r *rig) *authv3.CheckRequest {
	q := request("Bearer "+r.token(t, "ns", "sa"), "api.openai.com")
	for k, v := range c.hdrs {
		q.Attributes.Request.Http.Headers[k] = v
	}
	return q
}

// The forward-auth endpoint joins the trace of the request's headers too.
func TestTraceForwardAuth(t *testing.T) {
	r, rec := tracedRig(t, 0)
	r.put(t, "", "ns", "sa", "authorization", "Bearer k")
	h := checker.NewHTTP(r.c)
	req := httptest.NewRequest(http.MethodGet, "/check", nil)
	req.Host = "api.openai.com"
	req.Header.Set("Authorization", "Bearer "+r.token(t, "ns", "sa"))
	req.Header.Set("traceparent", "00-"+gwTrace+"-"+gwSpan+"-01")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	checks := spansNamed(rec, checker.SpanCheck)
	if len(checks) != 1 || checks[0].Parent().SpanID().String() != gwSpan || checks[0].SpanContext().TraceID().String() != gwTrace {
		t.Fatalf("spans %v", rec.Ended())
	}
	// Not sampled: no span.
	req.Header.Set("traceparent", "00-"+gwTrace+"-"+gwSpan+"-00")
	h.ServeHTTP(httptest.NewRecorder(), req)
	if n := len(rec.Ended()); n != 1 {
		t.Errorf("%d spans after an unsampled request, want still 1", n)
	}
}

// The raw HeaderMap (Envoy's encode_raw_headers) carries a trace context
// as well as the headers map.
func TestTraceRawHeaderMap(t *testing.T) {
	r, rec := tracedRig(t, 0)
	r.put(t, "", "ns", "sa", "authorization", "Bearer k")
	q := request("Bearer "+r.token(t, "ns", "sa"), "api.openai.com")
	var hm []*corev3.HeaderValue
	for k, v := range q.Attributes.Request.Http.Headers {
		hm = append(hm, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	hm = append(hm, &corev3.HeaderValue{Key: "traceparent", RawValue: []byte("00-" + gwTrace + "-" + gwSpan + "-01")})
	q.Attributes.Request.Http.Headers = nil
	q.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: hm}
	if resp, _ := r.g.Check(context.Background(), q); resp.GetOkResponse() == nil {
		t.Fatalf("not allowed: %v", outcome(resp))
	}
	checks := spansNamed(rec, checker.SpanCheck)
	if len(checks) != 1 || checks[0].Parent().SpanID().String() != gwSpan {
		t.Fatalf("spans %v", rec.Ended())
	}
}
