package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"k8s.io/utils/clock"
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
