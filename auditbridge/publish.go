package auditbridge

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/backoff"
)

// Retry pauses after a failed publish while the connection is up (a flush
// that timed out); while it is down the publisher waits for the reconnect.
const (
	minRetry = 100 * time.Millisecond
	maxRetry = 5 * time.Second
)

// sender publishes one event; events.Publisher in production.
type sender interface {
	Publish(ctx context.Context, r events.Rotation) error
}

var _ sender = (*events.Publisher)(nil)

// publisher is the single consumer of the queue.
type publisher struct {
	clock     clock.WithTicker
	q         *queue
	send      sender
	connected func() bool
	up        <-chan struct{} // signalled on every (re)connect
	coalesce  time.Duration
	timeout   time.Duration // one publish
	m         *metrics
	log       *slog.Logger
}

// run publishes until ctx is done, then makes one last attempt, bounded by
// drain, to send what is still buffered.
func (p *publisher) run(ctx context.Context, drain time.Duration) {
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drain)
		defer cancel()
		p.final(dctx)
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.q.ready:
		}
		// Let writes that come together (a put and a metadata update, a
		// script touching many keys) coalesce for a moment.
		if p.coalesce > 0 {
			t := p.clock.NewTimer(p.coalesce)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
		}
		p.sendAll(ctx)
	}
}

// sendAll publishes until the queue is empty or ctx is done. While the
// connection is down it leaves the events in the queue and waits for the
// reconnect.
func (p *publisher) sendAll(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		if !p.connected() {
			// The reconnect handler wakes us; the timer is a safety net.
			p.wait(ctx, maxRetry)
			continue
		}
		batch := p.q.take()
		if len(batch) == 0 {
			return
		}
		n, err := p.sendBatch(ctx, batch)
		if err == nil {
			failures = 0
			continue
		}
		if p.q.requeue(batch[n:]) {
			p.overflow()
		}
		failures++
		p.wait(ctx, backoff.Delay(failures, minRetry, maxRetry, 0))
	}
}

// wait pauses for d, or until the connection comes back or ctx is done.
func (p *publisher) wait(ctx context.Context, d time.Duration) {
	t := p.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-p.up:
	case <-t.C():
	}
}

// sendBatch publishes batch in order and returns how many were dealt with
// (sent, or dropped as invalid) before the first failure.
func (p *publisher) sendBatch(ctx context.Context, batch []events.Rotation) (int, error) {
	for i, r := range batch {
		if !p.connected() {
			return i, errDisconnected
		}
		pctx, cancel := context.WithTimeout(ctx, p.timeout)
		err := p.send.Publish(pctx, r)
		cancel()
		switch {
		case err == nil:
			p.m.published.Inc()
			p.log.Debug("auditbridge: published", "rotation", r)
		case errors.Is(err, events.ErrInvalidRotation):
			p.m.dropped[DropInvalid].Inc()
			p.log.Error("auditbridge: dropped an invalid event", "rotation", r, "err", err)
		default:
			p.m.publishErrs.Inc()
			p.log.Warn("auditbridge: publish failed, will retry", "rotation", r, "err", err)
			return i, err
		}
	}
	return len(batch), nil
}

var errDisconnected = errors.New("auditbridge: NATS not connected")

// final sends what is buffered at shutdown, if NATS is there to take it.
func (p *publisher) final(ctx context.Context) {
	batch := p.q.take()
	if len(batch) == 0 {
		return
	}
	n, err := p.sendBatch(ctx, batch)
	if err != nil {
		p.log.Warn("auditbridge: stopping with events not published", "events", len(batch)-n, "err", err)
	}
}

func (p *publisher) overflow() {
	p.m.dropped[DropOverflow].Inc()
	p.log.Warn("auditbridge: event buffer full, replaced by one event for every identity", "buffer", p.q.max)
}
