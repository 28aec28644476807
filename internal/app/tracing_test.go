package app

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/checker"
)

// The sampler follows a parent's decision, samples the Check roots the
// checker has already drawn at the ratio, and other roots at the ratio.
func TestSampler(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	parent := func(sampled bool) context.Context {
		var flags trace.TraceFlags
		if sampled {
			flags = trace.FlagsSampled
		}
		return trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: true}))
	}
	for _, c := range []struct {
		name  string
		ratio float64
		ctx   context.Context
		span  string
		want  sdktrace.SamplingDecision
	}{
		{"check root, ratio 0 (drawn by the checker)", 0, context.Background(), checker.SpanCheck, sdktrace.RecordAndSample},
		{"other root, ratio 0", 0, context.Background(), "credinject.refresh", sdktrace.Drop},
		{"other root, ratio 1", 1, context.Background(), "credinject.refresh", sdktrace.RecordAndSample},
		{"sampled parent", 0, parent(true), "credinject.refresh", sdktrace.RecordAndSample},
		{"unsampled parent, check", 1, parent(false), checker.SpanCheck, sdktrace.Drop},
		{"unsampled parent", 1, parent(false), "vault.read", sdktrace.Drop},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := newSampler(c.ratio).ShouldSample(sdktrace.SamplingParameters{ParentContext: c.ctx, TraceID: tid, Name: c.span})
			if got.Decision != c.want {
				t.Errorf("decision %v, want %v", got.Decision, c.want)
			}
		})
	}
}
