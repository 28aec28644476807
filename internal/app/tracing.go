package app

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/checker"
)

// tracerProvider builds the OpenTelemetry SDK provider of tracing.* with its
// OTLP/gRPC exporter (batched), or nil when tracing.otlpEndpoint is empty.
// The exporter connects lazily: an unreachable receiver costs dropped spans
// and a log line from the SDK, never a failed start.
func (a *App) tracerProvider() (*sdktrace.TracerProvider, error) {
	cfg := a.cfg.Tracing
	if cfg.OTLPEndpoint == "" {
		return nil, nil
	}
	u, err := url.Parse(cfg.OTLPEndpoint)
	if err != nil {
		return nil, fmt.Errorf("tracing.otlpEndpoint: %w", err)
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(u.Host)}
	if u.Scheme == "http" {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing.otlpEndpoint %q: %w", cfg.OTLPEndpoint, err)
	}
	// The SDK reports export failures through the process-wide handler;
	// send them to our log rather than the standard logger's stderr.
	log := a.log.With("component", "tracing")
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("tracing: export", "error", err) }))
	res := resource.NewSchemaless(attribute.String("service.name", "credinject"))
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(newSampler(cfg.SamplingRatio)),
	), nil
}

// newSampler follows the caller's decision (a sampled parent is sampled, an
// unsampled one is not) and samples new traces at ratio, except the
// checker's Check spans: the checker has already drawn those at ratio, so
// that an untraced request allocates nothing (checker.Tracing).
func newSampler(ratio float64) sdktrace.Sampler {
	return sdktrace.ParentBased(rootSampler{ratio: sdktrace.TraceIDRatioBased(ratio)})
}

type rootSampler struct{ ratio sdktrace.Sampler }

func (s rootSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if p.Name == checker.SpanCheck {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
	}
	return s.ratio.ShouldSample(p)
}

func (s rootSampler) Description() string {
	return "CheckPresampled{" + s.ratio.Description() + "}"
}

// shutdownTracing flushes the spans still batched and stops the exporter.
func (a *App) shutdownTracing() {
	if a.tracing == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.tracing.Shutdown(ctx); err != nil {
		a.log.Warn("tracing: shutdown", "error", err)
	}
}
