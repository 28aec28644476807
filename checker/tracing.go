package checker

import (
	"context"
	"math/rand/v2"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/authz"
)

// Span names and attribute keys of the checker's spans. Extend, never
// rename: dashboards and trace queries name them.
const (
	// SpanCheck is one decision (ext_authz Check or forward-auth /check),
	// a child of the gateway's span when the request carries a sampled
	// trace context (traceparent, or B3).
	SpanCheck = "credinject.check"
	// SpanTokenReview is one TokenReview call to the API server.
	SpanTokenReview = "credinject.tokenreview"

	// AttrIdentity is the workload identity, "namespace/serviceaccount".
	AttrIdentity = attribute.Key(authz.TraceAttrIdentity)
	// AttrIdentitySource is token or peer.
	AttrIdentitySource = attribute.Key(authz.TraceAttrIdentitySource)
	// AttrRoute is the route's name ("" for the default route).
	AttrRoute = attribute.Key(authz.TraceAttrRoute)
	// AttrResult is allow or deny; AttrReason the deny reason.
	AttrResult = attribute.Key(authz.TraceAttrResult)
	AttrReason = attribute.Key("credinject.reason")
	// AttrCache is hit or miss (the credential cache); AttrStale is set
	// on an allow served past its refresh time.
	AttrCache = attribute.Key("credinject.cache")
	AttrStale = attribute.Key("credinject.stale")
)

// Tracing configures the checker's spans.
type Tracing struct {
	// TracerProvider makes the spans (nil: tracing off, no cost on the
	// hot path).
	TracerProvider trace.TracerProvider
	// SamplingRatio is the share of requests without a trace context (or
	// with one that leaves the decision to the receiver) whose Check is
	// traced, in [0, 1] (tracing.samplingRatio). The checker draws it
	// before making a span, so an untraced request costs no allocation;
	// the provider's sampler must then sample the root spans named
	// SpanCheck it is given (see the internal/app sampler).
	SamplingRatio float64
}

// tracer is the checker's view of tracing: nil when off.
type tracer struct {
	t     trace.Tracer
	ratio float64
	prop  propagation.TextMapPropagator
}

func newTracer(cfg Tracing) *tracer {
	if cfg.TracerProvider == nil {
		return nil
	}
	return &tracer{
		t:     cfg.TracerProvider.Tracer("github.com/credinject/credinject/checker"),
		ratio: cfg.SamplingRatio,
		prop:  propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, b3.New()),
	}
}

// traceHeaders are the values of the headers that carry a trace context.
type traceHeaders struct {
	traceparent, b3, b3TraceID, b3Sampled, b3Flags string
}

// sampling is what the trace headers say about tracing a request.
type sampling uint8

const (
	// noParent: no trace context; the ratio decides.
	noParent sampling = iota
	// parentSampled: the caller's trace is sampled; join it.
	parentSampled
	// parentNotSampled: the caller decided not to sample (or left a
	// trace context without a decision, which a parent-based sampler
	// does not sample either).
	parentNotSampled
)

// decide reads the sampling decision from the headers without allocating:
// W3C traceparent's flags, then B3 (single header, then multi headers).
// Only a sampled parent is handed to the propagator, which allocates.
func (h *traceHeaders) decide() sampling {
	if v := h.traceparent; v != "" {
		// version "-" trace-id(32) "-" parent-id(16) "-" flags(2)
		if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
			return noParent // invalid: the propagator would ignore it
		}
		if hexDigit(v[54])&1 == 1 {
			return parentSampled
		}
		return parentNotSampled
	}
	if v := h.b3; v != "" {
		// {traceid}-{spanid}[-{sampling}[-{parent}]] or {sampling} alone
		var state string
		switch n := strings.Count(v, "-"); {
		case n == 0:
			state = v
		case n == 1:
			return parentNotSampled // deferred
		default:
			i := strings.IndexByte(v, '-')
			j := strings.IndexByte(v[i+1:], '-') + i + 1
			state = v[j+1:]
			if k := strings.IndexByte(state, '-'); k >= 0 {
				state = state[:k]
			}
		}
		switch state {
		case "1", "d":
			if strings.Contains(v, "-") {
				return parentSampled
			}
			return noParent // a decision without ids: a new trace
		case "0":
			return parentNotSampled
		}
		return noParent
	}
	if h.b3TraceID != "" {
		if h.b3Flags == "1" || h.b3Sampled == "1" || h.b3Sampled == "true" {
			return parentSampled
		}
		return parentNotSampled
	}
	return noParent
}

func hexDigit(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return 0
}

// start begins the Check span when the request is to be traced: the
// caller's context joined when sampled, else a new trace at the ratio. It
// returns ctx unchanged and a nil span otherwise, allocating nothing.
func (t *tracer) start(ctx context.Context, h *traceHeaders, carrier propagation.TextMapCarrier) (context.Context, trace.Span) {
	switch h.decide() {
	case parentNotSampled:
		return ctx, nil
	case parentSampled:
		if pctx := t.prop.Extract(ctx, carrier); trace.SpanContextFromContext(pctx).IsValid() {
			return t.t.Start(pctx, SpanCheck, trace.WithSpanKind(trace.SpanKindServer))
		}
		// Flagged sampled, but no context the propagator accepts (a zero
		// or non-hex id): no parent, so the ratio decides, as the
		// provider's sampler would not (it samples every root Check).
	}
	if t.ratio <= 0 || (t.ratio < 1 && rand.Float64() >= t.ratio) {
		return ctx, nil
	}
	return t.t.Start(ctx, SpanCheck, trace.WithSpanKind(trace.SpanKindServer))
}

// endCheck records d on span (nil: not traced) and ends it.
func endCheck(span trace.Span, d *Decision) {
	if span == nil {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 7)
	if d.Identity.Key() != "" {
		attrs = append(attrs, AttrIdentity.String(d.Identity.Key()))
	}
	attrs = append(attrs, AttrIdentitySource.String(d.Source.String()))
	if d.routed {
		cache := "hit"
		if d.miss {
			cache = "miss"
		}
		attrs = append(attrs, AttrRoute.String(d.route), AttrCache.String(cache))
	}
	if d.Reason == authz.ReasonNone {
		attrs = append(attrs, AttrResult.String("allow"), AttrStale.Bool(d.Stale))
	} else {
		attrs = append(attrs, AttrResult.String("deny"), AttrReason.String(string(d.Reason)))
		if d.Reason.Status() >= 500 {
			span.SetStatus(codes.Error, string(d.Reason))
		}
	}
	span.SetAttributes(attrs...)
	span.End()
}

// grpcTraceHeaders finds the trace headers of an ext_authz request and a
// carrier for the propagator: the headers map (Envoy sends lower-case
// names), or Envoy's raw HeaderMap.
func grpcTraceHeaders(h *authv3.AttributeContext_HttpRequest) (traceHeaders, propagation.TextMapCarrier) {
	var th traceHeaders
	if h == nil {
		return th, propagation.MapCarrier(nil)
	}
	if hs := h.GetHeaders(); len(hs) > 0 {
		th.traceparent = hs["traceparent"]
		th.b3 = hs["b3"]
		th.b3TraceID = hs["x-b3-traceid"]
		th.b3Sampled = hs["x-b3-sampled"]
		th.b3Flags = hs["x-b3-flags"]
		return th, propagation.MapCarrier(hs)
	}
	hm := headerMapCarrier{h}
	th.traceparent = hm.Get("traceparent")
	th.b3 = hm.Get("b3")
	th.b3TraceID = hm.Get("x-b3-traceid")
	th.b3Sampled = hm.Get("x-b3-sampled")
	th.b3Flags = hm.Get("x-b3-flags")
	return th, hm
}

// headerMapCarrier reads Envoy's raw HeaderMap (encode_raw_headers).
type headerMapCarrier struct {
	h *authv3.AttributeContext_HttpRequest
}

func (c headerMapCarrier) Get(key string) string {
	for _, kv := range c.h.GetHeaderMap().GetHeaders() {
		if strings.EqualFold(kv.GetKey(), key) {
			return headerValue(kv)
		}
	}
	return ""
}

func (headerMapCarrier) Set(string, string) {}

func (c headerMapCarrier) Keys() []string {
	var ks []string
	for _, kv := range c.h.GetHeaderMap().GetHeaders() {
		ks = append(ks, kv.GetKey())
	}
	return ks
}

// missSpan marks the Check span (if any) as a credential-cache miss, with
// the route, before the miss path's child spans (so a Check cut short by a
// timeout still says what it was waiting for).
func missSpan(ctx context.Context, route string) {
	if s := trace.SpanFromContext(ctx); s.IsRecording() {
		s.SetAttributes(AttrCache.String("miss"), AttrRoute.String(route))
	}
}
