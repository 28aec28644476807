package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
)

// Output values of audit.output besides a file path.
const (
	OutputStdout = "stdout"
	OutputOff    = "off"
)

// Open returns where audit.output says to write: os.Stdout for "stdout",
// the file at any other value (created 0600 if absent, appended to, so
// copytruncate rotation works), nil for "off". close releases it (a no-op
// for stdout and off).
func Open(output string) (w io.Writer, close func() error, err error) {
	switch output {
	case OutputOff, "":
		return nil, func() error { return nil }, nil
	case OutputStdout:
		return os.Stdout, func() error { return nil }, nil
	}
	f, err := os.OpenFile(output, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: open %s: %w", output, err)
	}
	return f, f.Close, nil
}

// Config configures a Log. Interval and MaxKeys are required: their
// defaults live in internal/config (audit.interval, audit.maxKeys).
type Config struct {
	// Output receives the JSON lines (each record is one Write).
	Output io.Writer
	// Interval is how often usage records are written (Run).
	Interval time.Duration
	// MaxKeys bounds the usage keys (allow and deny) held per interval.
	MaxKeys int
	// Clock stamps records and ticks the interval (default the real clock).
	Clock clock.WithTicker
	// Registerer receives the credinject_audit_* metrics (nil: not
	// registered).
	Registerer prometheus.Registerer
	// Log receives write errors (nil: discarded).
	Log *slog.Logger
}

// Log is the audit trail: lifecycle records written at once, usage records
// aggregated and written per interval. It is safe for concurrent use.
type Log struct {
	cfg     Config
	metrics *metrics
	usage   *usage

	mu  sync.Mutex // guards the writer
	buf *bufio.Writer
	enc *json.Encoder

	flushMu sync.Mutex // serialises flushes; guards from
	from    time.Time
}

// New builds a Log.
func New(cfg Config) (*Log, error) {
	if cfg.Output == nil {
		return nil, errors.New("audit: an Output is required")
	}
	if cfg.Interval <= 0 || cfg.MaxKeys <= 0 {
		return nil, fmt.Errorf("audit: Interval (%v) and MaxKeys (%d) must be positive", cfg.Interval, cfg.MaxKeys)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	l := &Log{cfg: cfg, metrics: m, usage: newUsage(cfg.MaxKeys, m.dropped), from: cfg.Clock.Now()}
	// Large enough that a record is one Write.
	l.buf = bufio.NewWriterSize(cfg.Output, 64<<10)
	l.enc = json.NewEncoder(l.buf)
	l.enc.SetEscapeHTML(false)
	return l, nil
}

// Lifecycle writes e now, stamped with the clock's time.
func (l *Log) Lifecycle(e Event) {
	e.LeaseID, e.OldLeaseID = LeaseRef(e.LeaseID), LeaseRef(e.OldLeaseID)
	l.write([]record{{kind: e.Kind, v: &eventRecord{header: l.header(e.Kind, l.cfg.Clock.Now()), Event: e}}})
}

// Use counts one decision in the current interval. It does not allocate
// when u's key is already held in the interval, and takes one of several
// locks (by identity, or by token tag without one), never a global one.
func (l *Log) Use(u Use) { l.usage.add(u) }

// Run writes the usage records every Interval until ctx ends. Call Close
// once the last decision is made (the servers stopped) for the last
// interval's.
func (l *Log) Run(ctx context.Context) {
	t := l.cfg.Clock.NewTicker(l.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			l.Flush()
		}
	}
}

// Close writes the last interval's usage records (shutdown). The Log may
// still be used after it; its output is the caller's to close.
func (l *Log) Close() { l.Flush() }

// Flush writes the usage and denied records of the interval that ends now,
// then a flush record, and starts a new interval.
func (l *Log) Flush() {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	now := l.cfg.Clock.Now()
	from := l.from
	l.from = now
	allows, denies, dropped := l.usage.take()
	recs := make([]record, 0, len(allows)+len(denies)+1)
	for _, r := range allows {
		r.header = l.header(KindUsage, now)
		recs = append(recs, record{kind: KindUsage, v: &r})
	}
	for _, r := range denies {
		r.header = l.header(KindDenied, now)
		recs = append(recs, record{kind: KindDenied, v: &r})
	}
	recs = append(recs, record{kind: KindFlush, v: &flushRecord{header: l.header(KindFlush, now),
		From: from, To: now, Usage: len(allows), Denied: len(denies), Dropped: dropped}})
	l.write(recs)
}

func (l *Log) header(kind string, t time.Time) header {
	return header{Time: t.UTC(), Log: "audit", Record: kind}
}

type record struct {
	kind string
	v    any
}

// write encodes recs, one line each, and flushes them to the output.
func (l *Log) write(recs []record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range recs {
		if err := l.enc.Encode(r.v); err != nil {
			l.fail(err)
			continue
		}
		// One Write per record keeps lines whole beside other writers of
		// the same stream.
		if err := l.buf.Flush(); err != nil {
			l.fail(err)
			continue
		}
		if c := l.metrics.records[r.kind]; c != nil {
			c.Inc()
		}
	}
}

func (l *Log) fail(err error) {
	l.metrics.writeErrors.Inc()
	// A failed bufio.Writer keeps its error; start over on the next record.
	l.buf.Reset(l.cfg.Output)
	l.cfg.Log.Error("audit record not written", "error", err)
}
