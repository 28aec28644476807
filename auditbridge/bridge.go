package auditbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/panics"
	"github.com/credinject/credinject/internal/redact"
)

// Defaults of Config.
const (
	DefaultNATSURL        = "nats://127.0.0.1:4222"
	DefaultSource         = "credinject/vault-audit-bridge"
	DefaultMaxPending     = 10000
	DefaultCoalesce       = 5 * time.Millisecond
	DefaultPublishTimeout = events.DefaultConnectTimeout
	DefaultDrainTimeout   = 2 * time.Second
	DefaultReconnectWait  = events.DefaultReconnectWait
	connectionName        = "credinject-vault-audit-bridge"
)

var (
	// ErrInvalidConfig is wrapped by New's errors.
	ErrInvalidConfig = errors.New("invalid audit bridge configuration")
	// ErrAlreadyRunning is returned by a second call of Run.
	ErrAlreadyRunning = errors.New("auditbridge: already running")
)

// Config configures a Bridge. New copies it.
type Config struct {
	// Listener receives Vault's socket audit device connections; Run
	// closes it. Nil: no socket input.
	Listener net.Listener
	// Files are paths of Vault file audit devices to follow.
	Files []string
	// FromStart reads files that exist at startup from their beginning
	// instead of their end.
	FromStart bool
	// PollInterval is how often a followed file is checked at its end;
	// default DefaultPollInterval.
	PollInterval time.Duration

	// KVMount is the KV v2 mount (default "secret"); Templates the
	// watched paths under it (default egress/{namespace}/{serviceaccount}).
	KVMount   string
	Templates []Template

	// NATSURL (default DefaultNATSURL), Subject (default
	// events.DefaultSubject) and Source (default DefaultSource) say where
	// and as whom events are published.
	NATSURL string
	Subject string
	Source  string
	// NATSOptions add credentials or TLS. Reconnect settings and
	// connection-state handlers given here are overridden.
	NATSOptions []nats.Option
	// ReconnectWait is the least pause between reconnect attempts (plus up
	// to as much again of jitter); default DefaultReconnectWait.
	ReconnectWait time.Duration

	// MaxPending bounds the events buffered while NATS is unreachable;
	// beyond it the buffer becomes one event for every identity. Default
	// DefaultMaxPending.
	MaxPending int
	// Coalesce is how long the publisher lets events gather before sending
	// (identical ones are sent once); default DefaultCoalesce, negative
	// for none.
	Coalesce time.Duration
	// PublishTimeout bounds one publish; default DefaultPublishTimeout.
	PublishTimeout time.Duration
	// DrainTimeout bounds the last attempt, at shutdown, to send what is
	// buffered; default DefaultDrainTimeout.
	DrainTimeout time.Duration

	// Clock drives the file poll, coalescing and retry timers (default the
	// real clock).
	Clock clock.WithTicker
	// Logger; nil discards logs.
	Logger *slog.Logger
	// Registerer receives the credinject_audit_* metrics; nil skips
	// registration.
	Registerer prometheus.Registerer
}

// Bridge reads Vault audit devices and publishes rotation events.
type Bridge struct {
	cfg     Config
	matcher *Matcher
	q       *queue
	m       *metrics
	log     *slog.Logger

	running   atomic.Bool
	connected atomic.Bool
	stopping  atomic.Bool
	up        chan struct{} // capacity 1

	warnMu sync.Mutex
	warned map[string]bool // inputs that logged a malformed line at warn level
}

// New checks cfg, fills in defaults and registers the metrics. It starts
// nothing; Run does. If New fails, the caller still owns cfg.Listener.
func New(cfg Config) (*Bridge, error) {
	cfg.Files = slices.Clone(cfg.Files)
	cfg.Templates = slices.Clone(cfg.Templates)
	cfg.NATSOptions = slices.Clone(cfg.NATSOptions)
	if cfg.Listener == nil && len(cfg.Files) == 0 {
		return nil, fmt.Errorf("auditbridge: %w: no input (a listener or a file)", ErrInvalidConfig)
	}
	if slices.Contains(cfg.Files, "") {
		return nil, fmt.Errorf("auditbridge: %w: empty file path", ErrInvalidConfig)
	}
	m, err := NewMatcher(cfg.KVMount, cfg.Templates)
	if err != nil {
		return nil, fmt.Errorf("auditbridge: %w: %w", ErrInvalidConfig, err)
	}
	if strings.TrimSpace(cfg.NATSURL) == "" {
		cfg.NATSURL = DefaultNATSURL
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Subject == "" {
		cfg.Subject = events.DefaultSubject
	}
	if strings.ContainsAny(cfg.Subject, " \t\r\n*>") || strings.Contains(cfg.Subject, "..") ||
		strings.HasPrefix(cfg.Subject, ".") || strings.HasSuffix(cfg.Subject, ".") {
		return nil, fmt.Errorf("auditbridge: %w: %q is not a subject to publish on", ErrInvalidConfig, cfg.Subject)
	}
	if cfg.Source == "" {
		cfg.Source = DefaultSource
	}
	if len(cfg.Source) > events.MaxSourceLength {
		return nil, fmt.Errorf("auditbridge: %w: source longer than %d bytes", ErrInvalidConfig, events.MaxSourceLength)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.ReconnectWait <= 0 {
		cfg.ReconnectWait = DefaultReconnectWait
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = DefaultCoalesce
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	q := newQueue(cfg.MaxPending)
	q.gauge = met.pending
	return &Bridge{
		cfg:     cfg,
		matcher: m,
		q:       q,
		m:       met,
		log:     log.With("component", "auditbridge"),
		up:      make(chan struct{}, 1),
		warned:  map[string]bool{},
	}, nil
}

// Connected reports whether the NATS connection is up.
func (b *Bridge) Connected() bool { return b.connected.Load() }

// Run connects to NATS, reads every input and publishes until ctx is
// cancelled; then it stops the inputs, makes one bounded attempt to send
// what is still buffered, closes the connection and returns nil once every
// goroutine it started has ended. NATS being unreachable is not an error:
// events wait in the buffer while the client reconnects. Run returns an
// error when an input fails for good (the listener breaks) or the NATS
// connection cannot be set up at all (a bad URL). Run may be called once;
// it always closes cfg.Listener.
func (b *Bridge) Run(ctx context.Context) (err error) {
	if !b.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	if b.cfg.Listener != nil {
		defer b.cfg.Listener.Close()
	}

	closed := make(chan struct{})
	opts := append(slices.Clone(b.cfg.NATSOptions),
		nats.Name(connectionName),
		nats.ReconnectWait(b.cfg.ReconnectWait),
		nats.ReconnectJitter(b.cfg.ReconnectWait, b.cfg.ReconnectWait),
		// Fail publishes while disconnected instead of holding them in the
		// client: our own buffer is bounded, coalesces and is counted.
		nats.ReconnectBufSize(-1),
		nats.ConnectHandler(b.onConnect),
		nats.ReconnectHandler(b.onConnect),
		nats.DisconnectErrHandler(b.onDisconnect),
		nats.ReconnectErrHandler(b.onConnectError),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			b.log.Warn("auditbridge: NATS error", "err", err)
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
	)
	nc, err := events.KeepConnected(b.cfg.NATSURL, opts...)
	if err != nil {
		return fmt.Errorf("auditbridge: %w", err)
	}
	defer func() {
		b.stopping.Store(true)
		nc.Close()
		<-closed
		b.setConnected(false)
	}()

	p := &publisher{
		clock:     b.cfg.Clock,
		q:         b.q,
		send:      events.NewPublisher(nc, b.cfg.Subject, b.cfg.Source),
		connected: nc.IsConnected,
		up:        b.up,
		coalesce:  max(b.cfg.Coalesce, 0),
		timeout:   b.cfg.PublishTimeout,
		m:         b.m,
		log:       b.log,
	}
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()
	// The inputs stop first, so the publisher's last attempt sees every
	// line they read.
	inCtx, stopInputs := context.WithCancel(ctx)
	defer stopInputs()
	errs := make(chan error, 2+len(b.cfg.Files))
	var pubWG sync.WaitGroup
	pubWG.Go(func() {
		err := panics.Guard(b.m.panics, "auditbridge", func() error { p.run(pubCtx, b.cfg.DrainTimeout); return nil })
		if err != nil {
			errs <- err
			stopInputs()
		}
	})

	var inWG sync.WaitGroup
	start := func(name string, f func(context.Context) error) {
		inWG.Go(func() {
			err := panics.Guard(b.m.panics, "auditbridge", func() error { return f(inCtx) })
			if errors.Is(err, panics.ErrPanic) {
				err = fmt.Errorf("%s: %w", name, err)
			}
			if err != nil {
				errs <- err
				stopInputs()
			}
		})
	}
	if b.cfg.Listener != nil {
		s := &socketServer{clock: b.cfg.Clock, ln: b.cfg.Listener, handle: b.handle, log: b.log, m: b.m}
		start("socket input", s.serve)
	}
	for _, path := range b.cfg.Files {
		f := &follower{clock: b.cfg.Clock, path: path, fromStart: b.cfg.FromStart, poll: b.cfg.PollInterval, handle: b.handle, log: b.log}
		start("file input "+path, f.run)
	}
	b.log.Info("auditbridge: running", "nats", redact.URLs(b.cfg.NATSURL), "subject", b.cfg.Subject,
		"mount", b.matcher.Mount(), "templates", len(b.matcher.templates), "files", len(b.cfg.Files),
		"socket", b.cfg.Listener != nil)

	<-inCtx.Done()
	inWG.Wait()
	stopInputs()
	stopPub()
	pubWG.Wait()
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	err = errors.Join(all...)
	if err == nil {
		b.log.Info("auditbridge: stopped")
	}
	return err
}

// handle runs on an input's goroutine for every line: parse, count, queue.
// It never blocks.
func (b *Bridge) handle(input string, line []byte, tooLong bool) {
	var r Result
	if tooLong {
		r = Result{Verdict: Malformed, Reason: ReasonTooLong}
	} else {
		r = b.matcher.ParseLine(line)
	}
	b.m.lines[r.Verdict].Inc()
	switch r.Verdict {
	case Malformed:
		// Never the content: it may be anything, secrets included.
		lvl := slog.LevelDebug
		b.warnMu.Lock()
		if !b.warned[input] {
			b.warned[input] = true
			lvl = slog.LevelWarn
		}
		b.warnMu.Unlock()
		b.log.Log(context.Background(), lvl, "auditbridge: skipped a malformed audit line (is the device's format json?)",
			"input", input, "reason", r.Reason, "bytes", len(line))
	case Ignored:
		if r.Reason != ReasonBlank {
			b.log.Debug("auditbridge: ignored", "input", input, "reason", r.Reason,
				"operation", short(r.Operation), "path", short(r.Path))
		}
	case Publish:
		for _, rot := range r.Rotations {
			switch b.q.push(rot) {
			case coalesced:
				b.m.coalesced.Inc()
			case overflowed:
				b.m.dropped[DropOverflow].Inc()
				b.log.Warn("auditbridge: event buffer full, replaced by one event for every identity", "buffer", b.cfg.MaxPending)
			}
		}
		if b.log.Enabled(context.Background(), slog.LevelDebug) {
			names := make([]string, len(r.Rotations))
			for i, rot := range r.Rotations {
				names[i] = rot.String()
			}
			b.log.Debug("auditbridge: watched write", "input", input, "operation", r.Operation, "path", r.Path,
				"rotations", names)
		}
	}
}

func (b *Bridge) setConnected(up bool) {
	b.connected.Store(up)
	if up {
		b.m.connected.Set(1)
	} else {
		b.m.connected.Set(0)
	}
}

func (b *Bridge) onConnect(nc *nats.Conn) {
	b.setConnected(true)
	b.log.Info("auditbridge: connected to NATS", "server", nc.ConnectedUrlRedacted())
	select {
	case b.up <- struct{}{}:
	default:
	}
}

func (b *Bridge) onDisconnect(_ *nats.Conn, err error) {
	b.setConnected(false)
	if b.stopping.Load() {
		return
	}
	b.log.Warn("auditbridge: disconnected from NATS, buffering events", "err", err, "pending", b.q.len())
}

func (b *Bridge) onConnectError(_ *nats.Conn, err error) {
	b.log.Debug("auditbridge: NATS connection attempt failed", "err", err)
}

// short cuts a value for a log line.
func short(s string) string {
	const n = 256
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
