// Command otlpsink runs the OpenTelemetry Collector's real OTLP receiver
// (go.opentelemetry.io/collector/receiver/otlpreceiver) on loopback and keeps
// every span it receives in memory, so credinject's end-to-end tests can
// assert on what an OTLP exporter really delivered.
//
//	otlpsink -grpc 127.0.0.1:4317 -http 127.0.0.1:4318 -query 127.0.0.1:4319
//
// The query listener serves GET /traces: every received span, one JSON object
// per line, in the shape
//
//	{"traceId":"<32 hex>","spanId":"<16 hex>","parentSpanId":"<16 hex or empty>",
//	 "name":"…","service":"…","attributes":{"k":"v",…}}
//
// It prints "otlpsink ready" on stdout once all three listeners accept.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
)

// span is one received span, flattened for the tests.
type span struct {
	TraceID      string            `json:"traceId"`
	SpanID       string            `json:"spanId"`
	ParentSpanID string            `json:"parentSpanId"`
	Name         string            `json:"name"`
	Service      string            `json:"service"`
	Attributes   map[string]string `json:"attributes"`
}

type store struct {
	mu    sync.Mutex
	spans []span
}

func (s *store) consume(_ context.Context, td ptrace.Traces) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < td.ResourceSpans().Len(); i++ {
		rs := td.ResourceSpans().At(i)
		service := ""
		if v, ok := rs.Resource().Attributes().Get("service.name"); ok {
			service = v.AsString()
		}
		for j := 0; j < rs.ScopeSpans().Len(); j++ {
			ss := rs.ScopeSpans().At(j)
			for k := 0; k < ss.Spans().Len(); k++ {
				sp := ss.Spans().At(k)
				attrs := map[string]string{}
				for key, v := range sp.Attributes().All() {
					attrs[key] = v.AsString()
				}
				parent := ""
				if !sp.ParentSpanID().IsEmpty() {
					parent = sp.ParentSpanID().String()
				}
				s.spans = append(s.spans, span{
					TraceID: sp.TraceID().String(), SpanID: sp.SpanID().String(), ParentSpanID: parent,
					Name: sp.Name(), Service: service, Attributes: attrs,
				})
			}
		}
	}
	return nil
}

func (s *store) serve(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	spans := append([]span(nil), s.spans...)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for _, sp := range spans {
		_ = enc.Encode(sp)
	}
}

func main() {
	grpcAddr := flag.String("grpc", "127.0.0.1:4317", "OTLP/gRPC listen address")
	httpAddr := flag.String("http", "127.0.0.1:4318", "OTLP/HTTP listen address")
	queryAddr := flag.String("query", "127.0.0.1:4319", "listen address of GET /traces")
	flag.Parse()
	if err := run(*grpcAddr, *httpAddr, *queryAddr); err != nil {
		fmt.Fprintln(os.Stderr, "otlpsink:", err)
		os.Exit(1)
	}
}

func run(grpcAddr, httpAddr, queryAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	st := &store{}
	next, err := consumer.NewTraces(st.consume)
	if err != nil {
		return err
	}
	f := otlpreceiver.NewFactory()
	cfg := f.CreateDefaultConfig()
	conf := confmap.NewFromStringMap(map[string]any{"protocols": map[string]any{
		"grpc": map[string]any{"endpoint": grpcAddr},
		"http": map[string]any{"endpoint": httpAddr},
	}})
	if err := conf.Unmarshal(cfg); err != nil {
		return fmt.Errorf("receiver config: %w", err)
	}
	r, err := f.CreateTraces(ctx, receivertest.NewNopSettings(f.Type()), cfg, next)
	if err != nil {
		return fmt.Errorf("create receiver: %w", err)
	}
	if err := r.Start(ctx, componenttest.NewNopHost()); err != nil {
		return fmt.Errorf("start receiver: %w", err)
	}
	defer func() { _ = r.Shutdown(context.Background()) }()

	srv := &http.Server{Addr: queryAddr, Handler: http.HandlerFunc(st.serve)}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Println("otlpsink ready")
	select {
	case <-ctx.Done():
		_ = srv.Close()
		return nil
	case err := <-errc:
		return err
	}
}
