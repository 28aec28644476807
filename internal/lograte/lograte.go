// Package lograte bounds how often one log message is written: a slog
// Handler in front of another lets each message (the record's constant
// Message, whatever its attributes) through at Burst at once and Rate per
// second after that, and counts the rest instead of writing them. The next
// record of that message to be written carries "suppressed": how many were
// left out since the last one written; credinject_log_suppressed_total
// counts them all by level at once.
//
// It is for log lines a request, a forged token or a refused identity can
// cause (a warning per request must not become a flood of writes): one
// Limiter is shared by the handlers of the parts that write them. Debug
// records pass untouched (debug logging is one line per decision on
// purpose, and opt-in). It imports nothing of credinject's.
package lograte

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// maxMessages bounds the messages tracked one by one; records of further
// messages share one more budget. Messages are constants of the code, so a few
// dozen are expected.
const maxMessages = 1024

// Config configures a Limiter.
type Config struct {
	// Rate is how many records of one message per second are written once
	// Burst were (0: 1).
	Rate float64
	// Burst is how many records of one message are written at once (0: 10).
	Burst int
	// Clock times the budgets (nil: the real clock).
	Clock clock.PassiveClock
	// Registerer receives credinject_log_suppressed_total (nil: not
	// registered).
	Registerer prometheus.Registerer
}

// Limiter keeps one budget per message, shared by every Handler it makes.
type Limiter struct {
	rate  rate.Limit
	burst int
	clock clock.PassiveClock
	count *prometheus.CounterVec

	mu   sync.Mutex
	msgs map[string]*budget
}

// budget is one message's: its token bucket and the records it left out
// since the last one written.
type budget struct {
	lim        *rate.Limiter
	suppressed int64
}

// New builds a Limiter and registers its metric.
func New(cfg Config) (*Limiter, error) {
	if cfg.Rate < 0 || cfg.Burst < 0 {
		return nil, fmt.Errorf("lograte: Rate (%v) and Burst (%d) must not be negative", cfg.Rate, cfg.Burst)
	}
	if cfg.Rate == 0 {
		cfg.Rate = 1
	}
	if cfg.Burst == 0 {
		cfg.Burst = 10
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	count := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_log_suppressed_total",
		Help: "Log records left out because their message was written more often than its budget allows, by level.",
	}, []string{"level"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(count); err != nil {
			return nil, fmt.Errorf("lograte: metrics: %w", err)
		}
	}
	return &Limiter{rate: rate.Limit(cfg.Rate), burst: cfg.Burst, clock: cfg.Clock, count: count, msgs: map[string]*budget{}}, nil
}

// Handler returns next behind the Limiter.
func (l *Limiter) Handler(next slog.Handler) slog.Handler { return &handler{next: next, l: l} }

// allow reports whether a record of msg may be written now and, if so, how
// many of it were left out before.
func (l *Limiter) allow(msg string, level slog.Level) (suppressed int64, ok bool) {
	now := l.clock.Now()
	l.mu.Lock()
	b := l.msgs[msg]
	if b == nil {
		if len(l.msgs) >= maxMessages {
			msg = ""
			b = l.msgs[msg]
		}
		if b == nil {
			b = &budget{lim: rate.NewLimiter(l.rate, l.burst)}
			l.msgs[msg] = b
		}
	}
	if !b.lim.AllowN(now, 1) {
		b.suppressed++
		l.mu.Unlock()
		l.count.WithLabelValues(level.String()).Inc()
		return 0, false
	}
	n := b.suppressed
	b.suppressed = 0
	l.mu.Unlock()
	return n, true
}

type handler struct {
	next slog.Handler
	l    *Limiter
}

func (h *handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo {
		return h.next.Handle(ctx, r)
	}
	n, ok := h.l.allow(r.Message, r.Level)
	if !ok {
		return nil
	}
	if n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int64("suppressed", n))
	}
	return h.next.Handle(ctx, r)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{next: h.next.WithAttrs(as), l: h.l}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{next: h.next.WithGroup(name), l: h.l}
}
