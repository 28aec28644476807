package events

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/internal/redact"
)

// DefaultConnectTimeout bounds Connect and a Publish whose context has no
// deadline.
const DefaultConnectTimeout = 5 * time.Second

// ErrNoConnection is returned by Publish on a Publisher without a connection.
var ErrNoConnection = errors.New("events: no NATS connection")

// Publisher sends rotation events. It is safe for concurrent use.
type Publisher struct {
	clock   clock.PassiveClock
	nc      *nats.Conn
	subject string
	source  string
}

// NewPublisher publishes on nc to subject (default DefaultSubject) with the
// CloudEvents source (default DefaultSource). The caller keeps ownership of
// nc and closes it.
func NewPublisher(nc *nats.Conn, subject, source string) *Publisher {
	if subject == "" {
		subject = DefaultSubject
	}
	if source == "" {
		source = DefaultSource
	}
	return &Publisher{nc: nc, subject: subject, source: source, clock: clock.RealClock{}}
}

// Publish sends r as a CloudEvent and waits until the server has it (a
// flush round trip), so a command-line caller that returns success knows
// every connected subscriber will receive it. Without a deadline in ctx it
// waits at most DefaultConnectTimeout.
func (p *Publisher) Publish(ctx context.Context, r Rotation) error {
	if p == nil || p.nc == nil {
		return ErrNoConnection
	}
	if err := checkSubject(p.subject, false); err != nil {
		return fmt.Errorf("events: publish: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("events: publish: %w", err)
	}
	b, err := NewEvent(p.source, r, p.clock.Now())
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: p.subject, Data: b, Header: nats.Header{}}
	// The CloudEvents NATS binding marks structured mode this way; servers
	// too old for headers get the bare payload, which is the whole event.
	msg.Header.Set("Content-Type", "application/cloudevents+json")
	err = p.nc.PublishMsg(msg)
	if errors.Is(err, nats.ErrHeadersNotSupported) {
		err = p.nc.Publish(p.subject, b)
	}
	if err != nil {
		return fmt.Errorf("events: publish to %q: %w", p.subject, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultConnectTimeout)
		defer cancel()
	}
	if err := p.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("events: publish to %q: flush: %w", p.subject, err)
	}
	return nil
}

// Connect opens a connection for a short-lived caller such as `credinject
// rotate`: it fails fast (within ctx's deadline, at most
// DefaultConnectTimeout) instead of retrying, and a cancelled ctx aborts the
// dial. opts add credentials or TLS. The caller closes the connection.
func Connect(ctx context.Context, url string, opts ...nats.Option) (*nats.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("events: connect: %w", err)
	}
	timeout := DefaultConnectTimeout
	if dl, ok := ctx.Deadline(); ok {
		if timeout = min(timeout, time.Until(dl)); timeout <= 0 {
			return nil, fmt.Errorf("events: connect: %w", context.DeadlineExceeded)
		}
	}
	d := &ctxDialer{ctx: ctx, timeout: timeout}
	all := append(slices.Clone(opts),
		nats.Name(DefaultConnectionName+"-publisher"),
		nats.Timeout(timeout),
		nats.SetCustomDialer(d),
		nats.RetryOnFailedConnect(false),
		nats.MaxReconnects(3),
	)
	nc, err := nats.Connect(url, all...)
	d.release()
	if err != nil {
		return nil, fmt.Errorf("events: connect to %s: %w", redact.URLs(url), redact.Error(err))
	}
	return nc, nil
}

// ctxDialer ties the first dial to the caller's context; once Connect has
// returned, later reconnects dial on their own (the caller's context is
// often a short timeout that ends right after Connect).
type ctxDialer struct {
	mu      sync.Mutex
	ctx     context.Context
	timeout time.Duration
}

func (d *ctxDialer) Dial(network, address string) (net.Conn, error) {
	d.mu.Lock()
	ctx, timeout := d.ctx, d.timeout
	d.mu.Unlock()
	nd := net.Dialer{Timeout: timeout}
	return nd.DialContext(ctx, network, address)
}

func (d *ctxDialer) release() {
	d.mu.Lock()
	d.ctx = context.Background()
	d.timeout = DefaultConnectTimeout
	d.mu.Unlock()
}
