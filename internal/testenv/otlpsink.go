package testenv

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// OTLPSink is a running otlpsink (tools/otlpsink: the OpenTelemetry
// Collector's real OTLP receiver, built by tools/build.sh into the tools
// cache) on loopback. It keeps every span it receives; Spans returns them.
type OTLPSink struct {
	// GRPCEndpoint is the OTLP/gRPC receiver's URL (http://127.0.0.1:port),
	// as tracing.otlpEndpoint takes it.
	GRPCEndpoint string
	query        string
	proc         *proc
	dir          string
}

// Span is one span the sink received.
type Span struct {
	TraceID      string            `json:"traceId"`
	SpanID       string            `json:"spanId"`
	ParentSpanID string            `json:"parentSpanId"`
	Name         string            `json:"name"`
	Service      string            `json:"service"`
	Attributes   map[string]string `json:"attributes"`
}

// OTLPSink starts a sink of the test's own (so its spans are the test's
// alone), stopped when the test ends.
func (e *Env) OTLPSink(t testing.TB) *OTLPSink {
	t.Helper()
	s, err := StartOTLPSink(context.Background())
	if err != nil {
		t.Fatalf("testenv: otlpsink: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartOTLPSink runs otlpsink on free ports and waits for its query
// listener.
func StartOTLPSink(ctx context.Context) (*OTLPSink, error) {
	bin, err := ToolDir("otlpsink")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "credinject-otlpsink-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	s := &OTLPSink{GRPCEndpoint: "http://" + addr(ports[0]), query: "http://" + addr(ports[2]), dir: dir}
	s.proc = &proc{
		name: "otlpsink", bin: filepath.Join(bin, "otlpsink"),
		args:    []string{"-grpc", addr(ports[0]), "-http", addr(ports[1]), "-query", addr(ports[2])},
		logPath: filepath.Join(dir, "otlpsink.log"),
	}
	if err := s.proc.start(); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, s.proc, "otlpsink", 30*time.Second, httpOK(&http.Client{Timeout: 2 * time.Second}, s.query+"/traces")); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Spans returns every span received so far.
func (s *OTLPSink) Spans(ctx context.Context) ([]Span, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.query+"/traces", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("otlpsink: GET /traces: status %d", resp.StatusCode)
	}
	var spans []Span
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var sp Span
		if err := json.Unmarshal(sc.Bytes(), &sp); err != nil {
			return nil, fmt.Errorf("otlpsink: %w", err)
		}
		spans = append(spans, sp)
	}
	return spans, sc.Err()
}

// Stop stops the sink and removes its folder.
func (s *OTLPSink) Stop() {
	if s.proc != nil {
		s.proc.stop()
	}
	_ = os.RemoveAll(s.dir)
}
