package auditbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/events"
)

type fakeSender struct {
	fail atomic.Int32 // publishes left to fail
	sent chan events.Rotation
}

func (f *fakeSender) Publish(_ context.Context, r events.Rotation) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("events: new event: %w", err)
	}
	if f.fail.Add(-1) >= 0 {
		return errors.New("flush: timeout")
	}
	f.sent <- r
	return nil
}

type pubRun struct {
	p    *publisher
	s    *fakeSender
	reg  *prometheus.Registry
	conn atomic.Bool
	up   chan struct{}
	stop func()
}

func startPublisher(t *testing.T, connected bool, coalesce time.Duration) *pubRun {
	t.Helper()
	r := &pubRun{s: &fakeSender{sent: make(chan events.Rotation, 100)}, reg: prometheus.NewRegistry(), up: make(chan struct{}, 1)}
	r.conn.Store(connected)
	m, err := newMetrics(r.reg)
	if err != nil {
		t.Fatal(err)
	}
	q := newQueue(100)
	q.gauge = m.pending
	r.p = &publisher{
		clock: clock.RealClock{}, q: q, send: r.s, connected: r.conn.Load, up: r.up, coalesce: coalesce, timeout: waitTimeout, m: m,
		log: slog.New(slog.DiscardHandler),
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.p.run(ctx, waitTimeout) })
	var once sync.Once
	r.stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(r.stop)
	return r
}

func (r *pubRun) push(rs ...events.Rotation) {
	for _, x := range rs {
		r.p.q.push(x)
	}
}

func (r *pubRun) expect(t *testing.T, want ...events.Rotation) {
	t.Helper()
	for _, w := range want {
		if got := recv(t, r.s.sent, w.String()); got != w {
			t.Fatalf("sent %s, want %s", got, w)
		}
	}
}

func TestPublisherWaitsForTheConnection(t *testing.T) {
	r := startPublisher(t, false, 0)
	r.push(rot("a", "1"), rot("b", "1"), rot("a", "1"))
	waitFor(t, "2 pending", func() bool { return metric(t, r.reg, "credinject_audit_events_pending") == 2 })
	select {
	case got := <-r.s.sent:
		t.Fatalf("sent %s while disconnected", got)
	default:
	}
	r.conn.Store(true)
	r.up <- struct{}{}
	r.expect(t, rot("a", "1"), rot("b", "1"))
	waitFor(t, "0 pending", func() bool { return metric(t, r.reg, "credinject_audit_events_pending") == 0 })
}

func TestPublisherRetries(t *testing.T) {
	r := startPublisher(t, true, 0)
	r.s.fail.Store(2)
	r.push(rot("a", "1"), rot("b", "1"))
	r.expect(t, rot("a", "1"), rot("b", "1"))
	if got := metric(t, r.reg, "credinject_audit_publish_errors_total"); got != 2 {
		t.Errorf("publish errors = %v, want 2", got)
	}
}

func TestPublisherDropsInvalid(t *testing.T) {
	r := startPublisher(t, true, 0)
	r.push(events.Rotation{ServiceAccount: "no-namespace"}, rot("a", "1"))
	r.expect(t, rot("a", "1"))
	if got := metric(t, r.reg, "credinject_audit_events_dropped_total", "reason", DropInvalid); got != 1 {
		t.Errorf("dropped{invalid} = %v, want 1", got)
	}
}

func TestPublisherSendsWhatIsLeftAtShutdown(t *testing.T) {
	r := startPublisher(t, true, waitTimeout) // nothing goes out before the stop
	r.push(rot("a", "1"))
	r.stop()
	r.expect(t, rot("a", "1"))
}
