package lograte

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"
)

// lines decodes the JSON log lines written to buf.
func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(buf.Bytes()))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func count(recs []map[string]any, msg string) int {
	n := 0
	for _, r := range recs {
		if r["msg"] == msg {
			n++
		}
	}
	return n
}

// TestFloodIsBounded: 1,000 warnings of one message (a per-request warning
// under a flood of distinct forged tokens, each with its own attributes)
// write Burst lines at once and Rate per second after; the next line
// written says how many were left out, and the metric counts them at once.
// Another message has its own budget, Debug records are never limited, and
// the loggers derived with With share the budget.
func TestFloodIsBounded(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	l, err := New(Config{Rate: 2, Burst: 5, Clock: clk, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(l.Handler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	checker, watcher := log.With("component", "checker"), log.With("component", "watcher")
	for i := range 1000 {
		checker.Warn("token validation failed", "token", fmt.Sprintf("%08x", i))
		checker.Debug("decision", "n", i)
	}
	watcher.Warn("refresh failed", "identity", "ns/sa")
	watcher.Info("token validation failed") // the same message, another logger: one budget

	recs := lines(t, &buf)
	if n := count(recs, "token validation failed"); n != 5 {
		t.Fatalf("%d lines of the flooded message, want the burst of 5", n)
	}
	if n := count(recs, "decision"); n != 1000 {
		t.Fatalf("%d debug lines, want all 1000", n)
	}
	if n := count(recs, "refresh failed"); n != 1 {
		t.Fatalf("another message: %d lines, want 1", n)
	}
	if got := testutil.ToFloat64(l.count.WithLabelValues("WARN")); got != 995 {
		t.Fatalf("suppressed{level=WARN} = %v, want 995", got)
	}
	if got := testutil.ToFloat64(l.count.WithLabelValues("INFO")); got != 1 {
		t.Fatalf("suppressed{level=INFO} = %v, want 1", got)
	}

	// Half a second later the budget has one more line: it carries the count.
	clk.Step(500 * time.Millisecond)
	buf.Reset()
	checker.Warn("token validation failed", "token", "next")
	checker.Warn("token validation failed", "token", "left out")
	recs = lines(t, &buf)
	if len(recs) != 1 || recs[0]["suppressed"] != 996.0 || recs[0]["token"] != "next" || recs[0]["component"] != "checker" {
		t.Fatalf("after 0.5 s: %v; want one line with suppressed 996", recs)
	}
	// Then it starts over from what it left out since.
	clk.Step(time.Second)
	buf.Reset()
	checker.Warn("token validation failed")
	if recs = lines(t, &buf); len(recs) != 1 || recs[0]["suppressed"] != 1.0 {
		t.Fatalf("after 1.5 s: %v; want suppressed 1", recs)
	}
}

// TestManyMessagesShareOneBudget: beyond maxMessages distinct messages the
// limiter tracks no more: the rest share one budget.
func TestManyMessagesShareOneBudget(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	l, err := New(Config{Rate: 1, Burst: 1, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(l.Handler(slog.NewJSONHandler(&buf, nil)))
	for i := range maxMessages + 100 {
		log.Warn(fmt.Sprintf("message %d", i))
	}
	if len(l.msgs) != maxMessages+1 {
		t.Fatalf("%d budgets, want %d and the shared one", len(l.msgs), maxMessages)
	}
	if n := len(lines(t, &buf)); n != maxMessages+1 {
		t.Fatalf("%d lines, want %d (one per tracked message, one for all the rest)", n, maxMessages)
	}
}
