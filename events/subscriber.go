package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/internal/panics"
	"github.com/credinject/credinject/internal/redact"
)

// Refresher re-reads the credentials a rotation event names. The watcher
// implements it. Refresh must honour ctx: the Subscriber bounds every call
// with SubscriberConfig.RefreshTimeout. The Subscriber calls it with events
// coalesced (see SubscriberConfig.MinInterval): one call may stand for many
// events of its scope, and for the narrower wildcards inside it.
type Refresher interface {
	Refresh(ctx context.Context, r Rotation) error
}

// BatchRefresher is a Refresher that re-reads several scopes in one call,
// each (identity, route) once with the strongest ask of the scopes covering
// it (an event naming the identity beats a wildcard). The Subscriber uses it,
// when its Refresher has it, for overlapping scopes that start together (see
// coalescer); otherwise it calls Refresh for each. The watcher implements it.
type BatchRefresher interface {
	RefreshBatch(ctx context.Context, rs []Rotation) error
}

// Resyncer re-reads every credential. The Subscriber calls it whenever events
// may have been missed: when the connection drops (once per drop), after a
// reconnect, when its queue overflowed, when the NATS client dropped
// messages, and when the first connection succeeded only after NATS had been
// unreachable. Requests made while one is pending coalesce into one call,
// made on the Subscriber's worker goroutine and bounded by
// SubscriberConfig.ResyncTimeout.
type Resyncer interface {
	ResyncAll(ctx context.Context) error
}

// RefresherFunc adapts a function to Refresher.
type RefresherFunc func(ctx context.Context, r Rotation) error

// Refresh calls f.
func (f RefresherFunc) Refresh(ctx context.Context, r Rotation) error { return f(ctx, r) }

// ResyncerFunc adapts a function to Resyncer.
type ResyncerFunc func(ctx context.Context) error

// ResyncAll calls f.
func (f ResyncerFunc) ResyncAll(ctx context.Context) error { return f(ctx) }

var (
	_ Refresher = RefresherFunc(nil)
	_ Resyncer  = ResyncerFunc(nil)
)

// Status values, for /readyz detail.
const (
	StatusConnected    = "connected"
	StatusDisconnected = "disconnected: falling back to TTL refresh"
	StatusDisabled     = "disabled"
)

// Defaults of SubscriberConfig.
const (
	DefaultRefreshTimeout = 10 * time.Second
	DefaultResyncTimeout  = 2 * time.Minute
	DefaultQueueSize      = 1024
	DefaultDedupeSize     = 10000
	DefaultDedupeWindow   = 10 * time.Minute
	DefaultReconnectWait  = 250 * time.Millisecond
	DefaultConnectionName = "credinject"
)

var (
	// ErrInvalidConfig is wrapped by NewSubscriber's errors.
	ErrInvalidConfig = errors.New("invalid events configuration")
	// ErrAlreadyRunning is returned by a second call of Subscriber.Run.
	ErrAlreadyRunning = errors.New("events: subscriber already running")
)

// SubscriberConfig configures a Subscriber. NewSubscriber copies it.
type SubscriberConfig struct {
	// URL is the NATS server URL (a comma-separated list for a cluster).
	// Empty disables the subscriber: Run only waits for its context and
	// Status reports StatusDisabled.
	URL string
	// Subject to subscribe to (config events.subject); required unless
	// disabled. Wildcards are allowed.
	Subject string
	// Refresher receives every valid event. Required unless disabled.
	Refresher Refresher
	// Resyncer is asked to re-read everything when events may have been
	// missed, including once each time the connection drops (not when Run
	// closes it). Required unless disabled.
	Resyncer Resyncer
	// Clock paces the coalesced refreshes, ages the remembered event ids
	// and times refreshes and resyncs for the logs (default the real
	// clock).
	Clock clock.Clock
	// Logger; nil discards logs.
	Logger *slog.Logger
	// Registerer receives the credinject_events_* metrics; nil skips
	// registration.
	Registerer prometheus.Registerer
	// RefreshTimeout bounds one Refresh call; default DefaultRefreshTimeout.
	RefreshTimeout time.Duration
	// ResyncTimeout bounds one ResyncAll call; default DefaultResyncTimeout.
	ResyncTimeout time.Duration
	// QueueSize is how many distinct scopes may wait for the worker (events
	// for a scope already waiting cost nothing) before new ones are
	// replaced by a resync; default DefaultQueueSize.
	QueueSize int
	// MinInterval is the least time between two refreshes of scopes that
	// share an identity and route (config events.minInterval; required
	// unless disabled): events arriving meanwhile wait and coalesce
	// into one refresh at the end of the interval, so each credential is
	// re-read at most once per interval, and always after the last event.
	MinInterval time.Duration
	// DedupeSize and DedupeWindow bound the memory of recent events:
	// an event whose (source, id) was seen within DedupeWindow is dropped
	// as a duplicate, and at most DedupeSize pairs are kept (defaults
	// DefaultDedupeSize, DefaultDedupeWindow).
	DedupeSize   int
	DedupeWindow time.Duration
	// ReconnectWait is the least pause between reconnect attempts; a random
	// jitter of up to three times as much is added (default 250ms, so
	// 250ms-1s).
	ReconnectWait time.Duration
	// Name identifies the connection in the server's monitoring; default
	// DefaultConnectionName.
	Name string
	// Options are extra connection options such as credentials or TLS
	// (nats.UserCredentials, nats.RootCAs). Connection-state handlers and
	// reconnect settings given here are overridden.
	Options []nats.Option
}

// Subscriber listens for rotation events and hands them, one at a time and
// in arrival order, to a Refresher, bounding the work a flood can cause:
// duplicates (same source and id) are dropped, and events for a scope are
// coalesced so that a credential is re-read at most once per MinInterval,
// always once more after the last event (see coalescer). Every replica
// subscribes on its own (no queue group), so every replica refreshes its
// own cache.
//
// The NATS read loop only parses, drops duplicates and records the event;
// a single worker goroutine calls the Refresher, which keeps events for the
// same identity in order without ever blocking the connection. When too
// many scopes are waiting the event is dropped and a full resync is
// scheduled instead, so nothing is lost. The same worker runs the resyncs
// the connection's handlers ask for (a drop, a reconnect), so they never
// block NATS's callback goroutine either.
type Subscriber struct {
	cfg      SubscriberConfig
	log      *slog.Logger
	m        *metrics
	disabled bool

	waiting *coalescer
	seen    *recentIDs    // used by handle only
	wake    chan struct{} // capacity 1: an event is waiting
	resync  chan struct{} // capacity 1: requests coalesce
	pending atomic.Uint32 // bits of the triggers a pending resync covers, see triggerBit

	connected     atomic.Bool
	connectFailed atomic.Bool // a connection attempt has failed
	lastErr       atomic.Pointer[error]
	running       atomic.Bool
	stopping      atomic.Bool // Run is closing the connection on purpose
}

// NewSubscriber checks cfg, fills in defaults and registers the metrics. It
// does not connect; Run does.
func NewSubscriber(cfg SubscriberConfig) (*Subscriber, error) {
	if cfg.RefreshTimeout <= 0 {
		cfg.RefreshTimeout = DefaultRefreshTimeout
	}
	if cfg.ResyncTimeout <= 0 {
		cfg.ResyncTimeout = DefaultResyncTimeout
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.DedupeSize <= 0 {
		cfg.DedupeSize = DefaultDedupeSize
	}
	if cfg.DedupeWindow <= 0 {
		cfg.DedupeWindow = DefaultDedupeWindow
	}
	if cfg.ReconnectWait <= 0 {
		cfg.ReconnectWait = DefaultReconnectWait
	}
	if cfg.Name == "" {
		cfg.Name = DefaultConnectionName
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	cfg.Options = slices.Clone(cfg.Options)
	disabled := strings.TrimSpace(cfg.URL) == ""
	if !disabled {
		if err := checkSubject(cfg.Subject, true); err != nil {
			return nil, fmt.Errorf("events: %w: %w", ErrInvalidConfig, err)
		}
		if cfg.MinInterval <= 0 {
			return nil, fmt.Errorf("events: %w: MinInterval %v is not positive", ErrInvalidConfig, cfg.MinInterval)
		}
		if cfg.Refresher == nil {
			return nil, fmt.Errorf("events: %w: no Refresher", ErrInvalidConfig)
		}
		if cfg.Resyncer == nil {
			return nil, fmt.Errorf("events: %w: no Resyncer", ErrInvalidConfig)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Subscriber{
		cfg:      cfg,
		log:      log.With("component", "events"),
		m:        m,
		disabled: disabled,
		waiting:  newCoalescer(cfg.MinInterval, cfg.QueueSize),
		seen:     newRecentIDs(cfg.DedupeSize, cfg.DedupeWindow, cfg.Clock),
		wake:     make(chan struct{}, 1),
		resync:   make(chan struct{}, 1),
	}, nil
}

// Connected reports whether the NATS connection is up. A nil Subscriber is
// never connected.
func (s *Subscriber) Connected() bool {
	return s != nil && s.connected.Load()
}

// Status is one of StatusConnected, StatusDisconnected and StatusDisabled.
// A nil Subscriber is disabled.
func (s *Subscriber) Status() string {
	switch {
	case s == nil || s.disabled:
		return StatusDisabled
	case s.connected.Load():
		return StatusConnected
	default:
		return StatusDisconnected
	}
}

// LastError is the error of the last failed connection attempt or
// disconnection (an authorization violation, a TLS failure, a refused
// dial); nil while connected or before any failure. It never holds a
// credential: nats.go's errors name none.
func (s *Subscriber) LastError() error {
	if s == nil || s.connected.Load() {
		return nil
	}
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Subscriber) setLastError(err error) {
	if err != nil {
		s.lastErr.Store(&err)
	}
}

// Run connects, subscribes and processes events until ctx is cancelled; then
// it drains the subscription, closes the connection, stops the worker (events
// still queued are abandoned: the process is stopping) and returns nil. NATS
// being unreachable is not an error: Run keeps reconnecting, and Status says
// so. Run returns an error only if the connection cannot be set up at all
// (a bad URL, a refused subscription) or is closed for good by the client
// library. Run may be called once.
func (s *Subscriber) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	if s.disabled {
		s.log.Info("events: no NATS URL configured, rotation events disabled")
		<-ctx.Done()
		return nil
	}

	// The worker outlives ctx until the connection is closed, so messages
	// flushed by the drain are still handed over; its calls get their own
	// context, cancelled once Run is done with the connection.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { s.work(workCtx) })
	defer func() {
		stopWork()
		wg.Wait()
		s.setConnected(false)
	}()

	closed := make(chan struct{})
	opts := append(slices.Clone(s.cfg.Options),
		nats.Name(s.cfg.Name),
		nats.ReconnectWait(s.cfg.ReconnectWait),
		nats.ReconnectJitter(3*s.cfg.ReconnectWait, 3*s.cfg.ReconnectWait),
		nats.DrainTimeout(5*time.Second),
		nats.ConnectHandler(s.onConnect),
		nats.ReconnectHandler(s.onReconnect),
		nats.DisconnectErrHandler(s.onDisconnect),
		nats.ReconnectErrHandler(s.onConnectError),
		nats.ErrorHandler(s.onAsyncError),
		nats.ClosedHandler(func(*nats.Conn) {
			s.setConnected(false)
			close(closed)
		}),
	)
	nc, err := KeepConnected(s.cfg.URL, opts...)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	if _, err := nc.Subscribe(s.cfg.Subject, s.handle); err != nil {
		nc.Close()
		<-closed
		return fmt.Errorf("events: subscribe to %q: %w", s.cfg.Subject, err)
	}
	s.log.Info("events: subscribed", "url", redact.URLs(s.cfg.URL), "subject", s.cfg.Subject)

	select {
	case <-ctx.Done():
	case <-closed:
		return fmt.Errorf("events: connection to %s closed: %w", redact.URLs(s.cfg.URL), lastError(nc))
	}
	s.stopping.Store(true)
	// Drain closes the connection itself when it is not connected.
	if err := nc.Drain(); err != nil {
		// Not connected: Drain has closed the connection already, or
		// there is nothing to drain. Close is idempotent.
		nc.Close()
	}
	<-closed
	s.log.Info("events: stopped")
	return nil
}

func lastError(nc *nats.Conn) error {
	if err := nc.LastError(); err != nil {
		return err
	}
	return nats.ErrConnectionClosed
}

// handle runs on the subscription's delivery goroutine: parse, count, drop
// duplicates, hand over to the coalescer, never block.
func (s *Subscriber) handle(msg *nats.Msg) {
	r, meta, err := Parse(msg.Data)
	if err != nil {
		if msg.Header.Get("ce-specversion") != "" {
			err = fmt.Errorf("%w (binary content mode is not supported: send the whole event as the payload)", err)
		}
		reason := dropReason(err)
		s.m.dropped[reason].Inc()
		// The payload is never logged: it may hold what a confused
		// publisher thought was data.
		s.log.Warn("events: dropped event", "reason", reason, "subject", msg.Subject, "bytes", len(msg.Data), "err", err)
		return
	}
	s.m.received.Inc()
	if s.seen.seen(meta) {
		s.m.dropped[DropDuplicate].Inc()
		s.log.Debug("events: dropped a duplicate event", "id", meta.ID, "source", meta.Source, "rotation", r)
		return
	}
	absorbed, ok := s.waiting.add(r, meta)
	switch {
	case !ok:
		s.m.dropped[DropOverflow].Inc()
		s.log.Warn("events: queue full, dropping event and resyncing everything",
			"id", meta.ID, "rotation", r, "queue", s.cfg.QueueSize)
		s.requestResync(TriggerOverflow)
		return
	case absorbed:
		s.m.coalesced.Inc()
		return
	}
	select {
	case s.wake <- struct{}{}:
	default: // the worker will look anyway
	}
}

// requestResync asks the worker for a full resync; it never blocks.
func (s *Subscriber) requestResync(trigger string) {
	s.m.resyncs[trigger].Inc()
	s.pending.Or(triggerBit(trigger))
	select {
	case s.resync <- struct{}{}:
	default: // one is pending already; it will cover this one too
	}
}

// work is the single consumer of the coalescer: it refreshes each waiting
// scope as soon as MinInterval allows, one at a time. A pending resync goes
// first: it covers whatever was dropped, and the events still waiting after
// it only cause harmless second refreshes.
func (s *Subscriber) work(ctx context.Context) {
	for {
		if ctx.Err() != nil {
			return // Run is done: a pending resync is abandoned too
		}
		select {
		case <-s.resync:
			s.resyncAll(ctx)
			continue
		default:
		}
		batch, settled, wait := s.waiting.next(s.cfg.Clock.Now())
		if batch != nil {
			s.refresh(ctx, batch, settled)
			continue
		}
		var timer clock.Timer
		var ready <-chan time.Time
		if wait > 0 {
			timer = s.cfg.Clock.NewTimer(wait)
			ready = timer.C()
		}
		select {
		case <-ctx.Done():
		case <-s.resync:
			s.resyncAll(ctx)
		case <-s.wake:
		case <-ready:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// refresh asks the Refresher to re-read the scopes of batch, started
// together, which also covers the events of settled.
func (s *Subscriber) refresh(ctx context.Context, batch, settled []*waitingScope) {
	w := batch[0]
	covered := -1
	rs := make([]Rotation, 0, len(batch))
	for _, b := range batch {
		covered += b.n
		rs = append(rs, b.r)
	}
	for _, x := range settled {
		covered += x.n
	}
	if len(settled) > 0 {
		s.m.coalesced.Add(float64(len(settled)))
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RefreshTimeout)
	defer cancel()
	start := s.cfg.Clock.Now()
	err := panics.Guard(s.m.panics, "events", func() error {
		if br, ok := s.cfg.Refresher.(BatchRefresher); ok && len(rs) > 1 {
			return br.RefreshBatch(ctx, rs)
		}
		var errs []error
		for _, r := range rs {
			errs = append(errs, s.cfg.Refresher.Refresh(ctx, r))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		s.m.refreshErrs.Inc()
		s.log.Warn("events: refresh failed", "id", w.last.ID, "source", w.last.Source, "rotation", rs, "coalesced", covered, "err", err)
		return
	}
	s.log.Debug("events: refreshed", "id", w.last.ID, "source", w.last.Source, "rotation", rs, "coalesced", covered,
		"duration", s.cfg.Clock.Since(start))
}

// resyncAll runs one resync for every trigger requested since the last one.
// No trigger left means a request raced with the previous resync, which
// started after it and so covered it.
func (s *Subscriber) resyncAll(ctx context.Context) {
	covered := triggerNames(s.pending.Swap(0))
	if len(covered) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ResyncTimeout)
	defer cancel()
	start := s.cfg.Clock.Now()
	if err := panics.Guard(s.m.panics, "events", func() error { return s.cfg.Resyncer.ResyncAll(ctx) }); err != nil {
		s.m.resyncErrs.Inc()
		s.log.Warn("events: resync failed", "triggers", covered, "err", err)
		return
	}
	s.log.Info("events: resynced", "triggers", covered, "duration", s.cfg.Clock.Since(start))
}

// triggerBit is trigger's bit in Subscriber.pending: 1 << its index in
// triggers.
func triggerBit(trigger string) uint32 {
	return 1 << slices.Index(triggers, trigger)
}

// triggerNames lists the triggers whose bits are set, in triggers' order.
func triggerNames(bits uint32) []string {
	var names []string
	for i, t := range triggers {
		if bits&(1<<i) != 0 {
			names = append(names, t)
		}
	}
	return names
}

// setConnected records the connection state and reports the previous one.
func (s *Subscriber) setConnected(up bool) (was bool) {
	was = s.connected.Swap(up)
	if up {
		s.m.connected.Set(1)
	} else {
		s.m.connected.Set(0)
	}
	return was
}

// The handlers below run on the connection's callback goroutine, in order.

func (s *Subscriber) onConnect(nc *nats.Conn) {
	s.setConnected(true)
	if s.connectFailed.Load() {
		// Events published while NATS was unreachable are gone.
		s.log.Info("events: connected after NATS was unreachable, resyncing everything", "server", nc.ConnectedUrlRedacted())
		s.requestResync(TriggerLateConnect)
		return
	}
	s.log.Info("events: connected", "server", nc.ConnectedUrlRedacted())
}

func (s *Subscriber) onReconnect(nc *nats.Conn) {
	s.setConnected(true)
	s.log.Info("events: reconnected, resyncing everything", "server", nc.ConnectedUrlRedacted())
	s.requestResync(TriggerReconnect)
}

// onDisconnect resyncs once per drop: events published before the drop was
// noticed may be lost, and a Resyncer that plans by Connected (the watcher)
// sees the connection down by the time it runs. nats.go calls this when a
// connection is lost, not for each failed reconnect attempt; the swap in
// setConnected makes it once per drop regardless. A close by Run (stopping)
// is no drop.
func (s *Subscriber) onDisconnect(_ *nats.Conn, err error) {
	wasUp := s.setConnected(false)
	s.setLastError(err)
	if s.stopping.Load() || !wasUp {
		return
	}
	s.log.Warn("events: disconnected, resyncing everything; falling back to TTL refresh", "err", err)
	s.requestResync(TriggerDisconnect)
}

func (s *Subscriber) onConnectError(_ *nats.Conn, err error) {
	s.setLastError(err)
	if !s.connectFailed.Swap(true) && !s.stopping.Load() {
		s.log.Warn("events: cannot reach NATS, retrying; falling back to TTL refresh meanwhile",
			"url", redact.URLs(s.cfg.URL), "err", err)
		return
	}
	s.log.Debug("events: connection attempt failed", "err", err)
}

func (s *Subscriber) onAsyncError(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) {
		s.m.dropped[DropSlowConsumer].Inc()
		s.log.Warn("events: NATS client dropped messages, resyncing everything", "err", err)
		s.requestResync(TriggerSlowConsumer)
		return
	}
	s.setLastError(err)
	s.log.Warn("events: NATS error", "err", err)
}

// checkSubject accepts a NATS subject: dot-separated non-empty tokens without
// whitespace; '*' and '>' only as whole tokens ('>' last), and only if
// wildcards are allowed.
func checkSubject(subject string, wildcards bool) error {
	if subject == "" {
		return errors.New("empty subject")
	}
	tokens := strings.Split(subject, ".")
	for i, t := range tokens {
		switch {
		case t == "":
			return fmt.Errorf("subject %q has an empty token", subject)
		case strings.ContainsAny(t, " \t\r\n\f\v"):
			return fmt.Errorf("subject %q contains whitespace", subject)
		case t == "*" || t == ">":
			if !wildcards {
				return fmt.Errorf("subject %q: wildcards are not allowed here", subject)
			}
			if t == ">" && i != len(tokens)-1 {
				return fmt.Errorf("subject %q: '>' must be the last token", subject)
			}
		case strings.ContainsAny(t, "*>"):
			return fmt.Errorf("subject %q: '*' and '>' must be whole tokens", subject)
		}
	}
	return nil
}
