package events

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	clocktesting "k8s.io/utils/clock/testing"
)

// publisher connects a Publisher to the shared server for one test.
func publisher(t *testing.T, subject string) (*Publisher, *nats.Conn) {
	t.Helper()
	nc, err := Connect(t.Context(), natsURL())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return NewPublisher(nc, subject, "test"), nc
}

func publish(t *testing.T, p *Publisher, r Rotation) {
	t.Helper()
	if err := p.Publish(t.Context(), r); err != nil {
		t.Fatalf("Publish(%v): %v", r, err)
	}
}

func TestSubscriberRoundTrip(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec})
	waitInterest(t, natsServer(), subject, 1)
	if got := run.s.Status(); got != StatusConnected {
		t.Errorf("Status = %q, want %q", got, StatusConnected)
	}
	if !run.s.Connected() || metric(t, run.reg, "credinject_events_connected") != 1 {
		t.Errorf("Connected = %v, gauge = %v; want true, 1", run.s.Connected(), metric(t, run.reg, "credinject_events_connected"))
	}

	p, _ := publisher(t, subject)
	want := Rotation{Namespace: "egress-test", ServiceAccount: "default", Route: "github"}
	publish(t, p, want)
	if got := recv(t, rec.refreshed, "refresh"); got != want {
		t.Errorf("Refresh(%+v), want %+v", got, want)
	}
	if got := metric(t, run.reg, "credinject_events_received_total"); got != 1 {
		t.Errorf("received = %v, want 1", got)
	}

	// Order per identity is kept: one publisher, one worker.
	const n = 50
	for i := range n {
		publish(t, p, Rotation{Namespace: "egress-test", ServiceAccount: "default", Route: fmt.Sprintf("r%d", i)})
	}
	for i := range n {
		if got := recv(t, rec.refreshed, "refresh"); got.Route != fmt.Sprintf("r%d", i) {
			t.Fatalf("refresh %d has route %q: out of order", i, got.Route)
		}
	}
	select {
	case <-rec.resynced:
		t.Error("ResyncAll called without a reason")
	default:
	}
}

func TestSubscriberFanOut(t *testing.T) {
	subject := uniqueSubject(t)
	recs := []*recorder{newRecorder(), newRecorder()}
	for _, rec := range recs {
		runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec})
	}
	waitInterest(t, natsServer(), subject, len(recs))

	p, _ := publisher(t, subject)
	// Scopes that do not overlap: each subscriber refreshes each at once,
	// in order (overlapping ones may coalesce, see the coalescer's tests).
	events := []Rotation{{Namespace: "a", ServiceAccount: "x"}, {Namespace: "b"}, {Namespace: "c", Route: "r"}}
	for _, r := range events {
		publish(t, p, r)
	}
	for i, rec := range recs {
		for _, want := range events {
			if got := recv(t, rec.refreshed, fmt.Sprintf("subscriber %d", i)); got != want {
				t.Errorf("subscriber %d: Refresh(%+v), want %+v", i, got, want)
			}
		}
	}
}

func TestSubscriberDropsMalformed(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec})
	waitInterest(t, natsServer(), subject, 1)
	p, nc := publisher(t, subject)

	const secret = "hunter2-s3cr3t"
	ok := map[string]any{"namespace": "a", "serviceAccount": "b"}
	tests := map[string]struct {
		msg    *nats.Msg
		reason string
	}{
		"not JSON":             {msg: &nats.Msg{Data: []byte("password=" + secret)}, reason: DropMalformed},
		"wrong type":           {msg: &nats.Msg{Data: event(t, ok, map[string]any{"type": "com.example.other"})}, reason: DropMalformed},
		"wrong specversion":    {msg: &nats.Msg{Data: event(t, ok, map[string]any{"specversion": "0.3"})}, reason: DropMalformed},
		"sa without namespace": {msg: &nats.Msg{Data: event(t, map[string]any{"serviceAccount": "b"}, nil)}, reason: DropMalformed},
		"secret-looking JSON":  {msg: &nats.Msg{Data: []byte(`{"token":"` + secret + `"}`)}, reason: DropMalformed},
		"oversized":            {msg: &nats.Msg{Data: append(event(t, ok, nil), []byte(strings.Repeat(" ", MaxEventSize))...)}, reason: DropOversized},
		"binary mode": {
			msg:    &nats.Msg{Data: []byte(`{"namespace":"a"}`), Header: nats.Header{"ce-specversion": []string{"1.0"}}},
			reason: DropMalformed,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := metric(t, run.reg, "credinject_events_dropped_total", "reason", tc.reason)
			tc.msg.Subject = subject
			if err := nc.PublishMsg(tc.msg); err != nil {
				t.Fatal(err)
			}
			// A valid event behind it: once it is refreshed, the bad one has
			// been handled (one subscription delivers in order).
			marker := Rotation{Namespace: "marker", Route: sanitizeRoute(name)}
			publish(t, p, marker)
			if got := recv(t, rec.refreshed, "marker"); got != marker {
				t.Fatalf("Refresh(%+v), want the marker %+v: the bad event got through", got, marker)
			}
			if got := metric(t, run.reg, "credinject_events_dropped_total", "reason", tc.reason); got != before+1 {
				t.Errorf("dropped{reason=%s} = %v, want %v", tc.reason, got, before+1)
			}
		})
	}
	if got, want := metric(t, run.reg, "credinject_events_received_total"), float64(len(tests)); got != want {
		t.Errorf("received = %v, want %v (the markers only)", got, want)
	}
	if logs := run.logs.String(); strings.Contains(logs, secret) {
		t.Errorf("logs contain the payload's secret:\n%s", logs)
	}
	if !strings.Contains(run.logs.String(), "binary content mode is not supported") {
		t.Error("no hint about binary content mode in the logs")
	}
	if run.s.Status() != StatusConnected {
		t.Errorf("Status = %q after malformed events", run.s.Status())
	}
}

func sanitizeRoute(name string) string {
	return strings.ToLower(strings.ReplaceAll(sanitize(name), "_", "-"))
}

func TestSubscriberOverflowResyncs(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	rec.refresh = func(ctx context.Context, r Rotation) error {
		if r.Route == "first" {
			entered <- struct{}{}
			<-gate
		}
		return nil
	}
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec, QueueSize: 1})
	waitInterest(t, natsServer(), subject, 1)
	p, _ := publisher(t, subject)

	publish(t, p, Rotation{Namespace: "a", Route: "first"})
	recv(t, entered, "the worker to take the first event")
	publish(t, p, Rotation{Namespace: "a", Route: "queued"})  // fills the queue
	publish(t, p, Rotation{Namespace: "a", Route: "dropped"}) // overflows
	publish(t, p, Rotation{Namespace: "a", Route: "dropped"}) // overflows
	waitFor(t, "two overflow drops", func() bool {
		return metric(t, run.reg, "credinject_events_dropped_total", "reason", DropOverflow) == 2
	})
	close(gate)

	if got := recv(t, rec.refreshed, "first"); got.Route != "first" {
		t.Fatalf("Refresh(%+v), want the first event", got)
	}
	recv(t, rec.resynced, "ResyncAll after overflow")
	if got := recv(t, rec.refreshed, "queued"); got.Route != "queued" {
		t.Fatalf("Refresh(%+v), want the queued event", got)
	}
	// Dropped events are not refreshed; the next one is.
	publish(t, p, Rotation{Namespace: "a", Route: "after"})
	if got := recv(t, rec.refreshed, "after"); got.Route != "after" {
		t.Fatalf("Refresh(%+v), want the event after the overflow", got)
	}
	// Two overflows while one resync was pending make one resync.
	select {
	case <-rec.resynced:
		t.Error("a second ResyncAll for overflows that were pending together")
	default:
	}
	if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", TriggerOverflow); got != 2 {
		t.Errorf("resyncs{trigger=overflow} = %v, want 2", got)
	}
}

func TestSubscriberRefreshErrors(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	deadlines := make(chan error, 1)
	rec.refresh = func(ctx context.Context, r Rotation) error {
		switch r.Route {
		case "panic":
			panic("refresher bug")
		case "slow":
			<-ctx.Done() // RefreshTimeout must bound the call
			deadlines <- ctx.Err()
			return ctx.Err()
		case "fail":
			return errors.New("vault says no")
		}
		return nil
	}
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec, RefreshTimeout: 50 * time.Millisecond})
	waitInterest(t, natsServer(), subject, 1)
	p, _ := publisher(t, subject)

	publish(t, p, Rotation{Route: "slow"})
	publish(t, p, Rotation{Route: "fail"})
	publish(t, p, Rotation{Route: "ok"})
	publish(t, p, Rotation{Route: "panic"})
	publish(t, p, Rotation{Route: "after"}) // another scope: not coalesced with ok
	if err := recv(t, deadlines, "refresh deadline"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow refresh ended with %v, want DeadlineExceeded", err)
	}
	for _, want := range []string{"slow", "fail", "ok"} {
		if got := recv(t, rec.refreshed, want); got.Route != want {
			t.Fatalf("Refresh(%+v), want route %s", got, want)
		}
	}
	// The panicking call never reports; the one after it proves the worker
	// survived.
	if got := recv(t, rec.refreshed, "after the panic"); got.Route != "after" {
		t.Fatalf("Refresh(%+v), want route after", got)
	}
	if got := metric(t, run.reg, "credinject_events_refresh_errors_total", "op", "refresh"); got != 3 {
		t.Errorf("refresh errors = %v, want 3", got)
	}
	if !strings.Contains(run.logs.String(), "refresher bug") {
		t.Error("the panic is not logged")
	}
	if got := metric(t, run.reg, "credinject_panics_total", "component", "events"); got != 1 {
		t.Errorf("panics counted = %v, want 1", got)
	}
}

// TestSubscriberReconnect: a drop asks for exactly one resync (trigger
// disconnect), however many reconnect attempts fail after it; the reconnect
// asks for one more (trigger reconnect).
func TestSubscriberReconnect(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec})
	waitInterest(t, natsServer(), subject, 1)
	p, _ := publisher(t, subject)
	publish(t, p, Rotation{Namespace: "before"})
	recv(t, rec.refreshed, "event before the outage")
	noResync(t, rec, "while connected")

	restart := stopNATS(t)
	recv(t, rec.resynced, "ResyncAll for the drop")
	// The state changes before the resync is asked for, so a Resyncer that
	// asks Connected already sees the drop.
	if run.s.Status() != StatusDisconnected || run.s.Connected() || metric(t, run.reg, "credinject_events_connected") != 0 {
		t.Errorf("Status = %q, Connected = %v, gauge = %v during the outage",
			run.s.Status(), run.s.Connected(), metric(t, run.reg, "credinject_events_connected"))
	}
	// Failed reconnect attempts are not new drops. The first failure is
	// logged as "cannot reach NATS", the following ones at debug level.
	waitFor(t, "four failed reconnect attempts", func() bool {
		return strings.Count(run.logs.String(), "events: connection attempt failed") >= 3
	})
	noResync(t, rec, "again for reconnect attempts")
	if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", TriggerDisconnect); got != 1 {
		t.Errorf("resyncs{trigger=disconnect} = %v after one drop, want 1", got)
	}
	if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", TriggerReconnect); got != 0 {
		t.Errorf("resyncs{trigger=reconnect} = %v before the server is back, want 0", got)
	}
	if logs := run.logs.String(); strings.Count(logs, "triggers=[disconnect]") != 1 {
		t.Errorf("want one resync logged with triggers=[disconnect]:\n%s", logs)
	}

	restart()
	recv(t, rec.resynced, "ResyncAll after reconnect")
	if got := run.s.Status(); got != StatusConnected {
		t.Errorf("Status = %q after reconnect", got)
	}
	if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", TriggerReconnect); got != 1 {
		t.Errorf("resyncs{trigger=reconnect} = %v, want 1", got)
	}
	if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", TriggerDisconnect); got != 1 {
		t.Errorf("resyncs{trigger=disconnect} = %v after the reconnect, want still 1", got)
	}
	waitInterest(t, natsServer(), subject, 1)
	p2, _ := publisher(t, subject) // the first publisher's connection was cut too
	want := Rotation{Namespace: "after", ServiceAccount: "sa"}
	publish(t, p2, want)
	if got := recv(t, rec.refreshed, "event after the outage"); got != want {
		t.Errorf("Refresh(%+v), want %+v", got, want)
	}
	noResync(t, rec, "a third time")
	if logs := run.logs.String(); !strings.Contains(logs, "triggers=[reconnect]") {
		t.Errorf("no resync logged with triggers=[reconnect]:\n%s", logs)
	}
}

// TestSubscriberDropResyncOffCallback: the drop's resync runs on the
// worker, not on NATS's callback goroutine: while it is still running, the
// reconnect is handled. The reconnect's resync, asked for meanwhile, follows
// it.
func TestSubscriberDropResyncOffCallback(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	first := true
	rec.resync = func(ctx context.Context) error {
		if first { // the worker makes one call at a time
			first = false
			entered <- struct{}{}
			<-gate
		}
		return nil
	}
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec})
	waitInterest(t, natsServer(), subject, 1)

	restart := stopNATS(t)
	recv(t, entered, "the drop's ResyncAll")
	restart()
	// onReconnect runs on the callback goroutine after onDisconnect has
	// returned.
	waitFor(t, "the reconnect to be handled while the drop's resync runs", func() bool {
		return run.s.Status() == StatusConnected
	})
	close(gate)
	recv(t, rec.resynced, "the drop's ResyncAll to return")
	recv(t, rec.resynced, "the reconnect's ResyncAll")
	for trigger, want := range map[string]float64{TriggerDisconnect: 1, TriggerReconnect: 1} {
		if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", trigger); got != want {
			t.Errorf("resyncs{trigger=%s} = %v, want %v", trigger, got, want)
		}
	}
}

// TestSubscriberDropResyncTimesOut: ResyncTimeout bounds the drop's resync
// as every other; a failed resync is counted.
func TestSubscriberDropResyncTimesOut(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	ended := make(chan error, 1)
	rec.resync = func(ctx context.Context) error {
		<-ctx.Done()
		ended <- ctx.Err()
		return ctx.Err()
	}
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec, ResyncTimeout: 50 * time.Millisecond})
	waitInterest(t, natsServer(), subject, 1)

	stopNATS(t)
	if err := recv(t, ended, "the drop's resync to time out"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the drop's resync ended with %v, want DeadlineExceeded", err)
	}
	recv(t, rec.resynced, "the drop's ResyncAll to return")
	// Logged after the count.
	waitFor(t, "the failed resync to be logged", func() bool {
		return strings.Contains(run.logs.String(), `msg="events: resync failed" component=events triggers=[disconnect]`)
	})
	if got := metric(t, run.reg, "credinject_events_refresh_errors_total", "op", "resync"); got != 1 {
		t.Errorf("resync errors = %v, want 1", got)
	}
}

// TestSubscriberStopDuringDropResync: stopping Run cancels a drop's resync
// that is still running.
func TestSubscriberStopDuringDropResync(t *testing.T) {
	subject := uniqueSubject(t)
	rec := newRecorder()
	entered := make(chan struct{}, 1)
	ended := make(chan error, 1)
	rec.resync = func(ctx context.Context) error {
		entered <- struct{}{}
		<-ctx.Done()
		ended <- ctx.Err()
		return ctx.Err()
	}
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec, ResyncTimeout: time.Hour})
	waitInterest(t, natsServer(), subject, 1)

	stopNATS(t)
	recv(t, entered, "the drop's ResyncAll")
	if err := run.stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	// Run has returned, so the call has ended already.
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the drop's resync ended with %v, want Canceled", err)
		}
	default:
		t.Error("Run returned while the drop's resync was still running")
	}
}

// Startup with NATS down must work: Run keeps trying, and once connected it
// resyncs, because events sent in the meantime are lost.
func TestSubscriberStartsWhileNATSDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	subject := uniqueSubject(t)
	rec := newRecorder()
	run := runSubscriber(t, SubscriberConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), Subject: subject, Refresher: rec, Resyncer: rec})
	waitFor(t, "a failed connection attempt", run.s.connectFailed.Load)
	if got := run.s.Status(); got != StatusDisconnected {
		t.Errorf("Status = %q with NATS down, want %q", got, StatusDisconnected)
	}

	srv, err := startNATS(port)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Stop the subscriber before its server.
		if err := run.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	recv(t, rec.resynced, "ResyncAll after the late first connection")
	if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", TriggerLateConnect); got != 1 {
		t.Errorf("resyncs{trigger=late_connect} = %v, want 1", got)
	}
	waitInterest(t, srv, subject, 1)
	nc, err := Connect(t.Context(), fmt.Sprintf("nats://127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	want := Rotation{Namespace: "late"}
	if err := NewPublisher(nc, subject, "").Publish(t.Context(), want); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, rec.refreshed, "event"); got != want {
		t.Errorf("Refresh(%+v), want %+v", got, want)
	}
}

func TestSubscriberRunStopsCleanly(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	subject := uniqueSubject(t)
	rec := newRecorder()
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec})
	waitInterest(t, natsServer(), subject, 1)

	if err := run.s.Run(t.Context()); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Run = %v, want ErrAlreadyRunning", err)
	}
	if err := run.stop(); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
	if run.s.Connected() || run.s.Status() != StatusDisconnected {
		t.Errorf("after Run: Connected = %v, Status = %q", run.s.Connected(), run.s.Status())
	}
	if got := metric(t, run.reg, "credinject_events_connected"); got != 0 {
		t.Errorf("connected gauge = %v after Run", got)
	}
	// Closing the connection is no drop: the disconnect handler has run
	// before Run returned (it comes before the closed handler Run waits for).
	if got := metric(t, run.reg, "credinject_events_resyncs_total", "trigger", TriggerDisconnect); got != 0 {
		t.Errorf("resyncs{trigger=disconnect} = %v after Run closed the connection, want 0", got)
	}
	noResync(t, rec, "for closing the connection")
	waitInterest(t, natsServer(), subject, 0)
}

func TestSubscriberStopsWhileDisconnected(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + l.Addr().String()
	l.Close()
	rec := newRecorder()
	run := runSubscriber(t, SubscriberConfig{URL: url, Subject: DefaultSubject, Refresher: rec, Resyncer: rec})
	waitFor(t, "a failed connection attempt", run.s.connectFailed.Load)
	if err := run.stop(); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
}

func TestSubscriberDisabled(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var none *Subscriber
	if none.Status() != StatusDisabled || none.Connected() {
		t.Errorf("nil Subscriber: Status = %q, Connected = %v", none.Status(), none.Connected())
	}
	reg := prometheus.NewRegistry()
	s, err := NewSubscriber(SubscriberConfig{Registerer: reg}) // no URL, no Refresher: fine when disabled
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	if s.Status() != StatusDisabled || s.Connected() {
		t.Errorf("Status = %q, Connected = %v", s.Status(), s.Connected())
	}
	if got := metric(t, reg, "credinject_events_connected"); got != 0 {
		t.Errorf("connected gauge = %v", got)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	cancel()
	if err := recv(t, done, "Run to return"); err != nil {
		t.Errorf("Run = %v", err)
	}
}

func TestNewSubscriberInvalid(t *testing.T) {
	rec := newRecorder()
	tests := map[string]SubscriberConfig{
		"no subject":         {URL: "nats://127.0.0.1:4222", Refresher: rec, Resyncer: rec, MinInterval: time.Second},
		"no min interval":    {URL: "nats://127.0.0.1:4222", Refresher: rec, Resyncer: rec, Subject: DefaultSubject},
		"no refresher":       {URL: "nats://127.0.0.1:4222", Resyncer: rec},
		"no resyncer":        {URL: "nats://127.0.0.1:4222", Refresher: rec},
		"subject with space": {URL: "nats://127.0.0.1:4222", Refresher: rec, Resyncer: rec, Subject: "a b"},
		"empty token":        {URL: "nats://127.0.0.1:4222", Refresher: rec, Resyncer: rec, Subject: "a..b"},
		"> not last":         {URL: "nats://127.0.0.1:4222", Refresher: rec, Resyncer: rec, Subject: "a.>.b"},
		"partial wildcard":   {URL: "nats://127.0.0.1:4222", Refresher: rec, Resyncer: rec, Subject: "a.b*"},
	}
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := NewSubscriber(cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("NewSubscriber = %v, want ErrInvalidConfig", err)
			}
		})
	}
	t.Run("metrics registered twice", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		cfg := SubscriberConfig{URL: "nats://127.0.0.1:4222", Subject: DefaultSubject, MinInterval: time.Second, Refresher: rec, Resyncer: rec, Registerer: reg}
		if _, err := NewSubscriber(cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := NewSubscriber(cfg); err == nil {
			t.Error("second NewSubscriber on one registry: no error")
		}
	})
	t.Run("wildcard subject", func(t *testing.T) {
		if _, err := NewSubscriber(SubscriberConfig{URL: "nats://127.0.0.1:4222", Refresher: rec, Resyncer: rec, Subject: "credinject.>", MinInterval: time.Second}); err != nil {
			t.Errorf("NewSubscriber = %v", err)
		}
	})
}

// TestSubscriberBoundsAFlood: on a fake clock, 200 copies of one event
// (same source and id) cost one refresh and 199 duplicate drops; 1,000
// wildcard events make one refresh at once and one trailing refresh when
// events.minInterval has passed, after the last of them; nothing more.
func TestSubscriberBoundsAFlood(t *testing.T) {
	subject := uniqueSubject(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	rec := newRecorder()
	var mu sync.Mutex
	at := map[Rotation][]time.Time{}
	rec.refresh = func(_ context.Context, r Rotation) error {
		mu.Lock()
		at[r] = append(at[r], clk.Now())
		mu.Unlock()
		return nil
	}
	run := runSubscriber(t, SubscriberConfig{Subject: subject, Refresher: rec, Resyncer: rec, Clock: clk, MinInterval: time.Second})
	waitInterest(t, natsServer(), subject, 1)
	p, nc := publisher(t, subject)
	named := Rotation{Namespace: "a", ServiceAccount: "x"}
	copyOf, err := NewEvent("test", named, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if err := nc.Publish(subject, copyOf); err != nil {
			t.Fatal(err)
		}
	}
	if got := recv(t, rec.refreshed, "the named refresh"); got != named {
		t.Fatalf("Refresh(%+v), want %+v", got, named)
	}
	waitFor(t, "200 received", func() bool { return metric(t, run.reg, "credinject_events_received_total") == 200 })
	if got := metric(t, run.reg, "credinject_events_dropped_total", "reason", DropDuplicate); got != 199 {
		t.Fatalf("dropped{reason=duplicate} = %v, want 199", got)
	}

	clk.Step(5 * time.Second) // a quiet period
	for range 999 {
		publish(t, p, Rotation{})
	}
	if got := recv(t, rec.refreshed, "the leading refresh"); got != (Rotation{}) {
		t.Fatalf("Refresh(%+v), want everything", got)
	}
	waitFor(t, "1,199 received", func() bool { return metric(t, run.reg, "credinject_events_received_total") == 1199 })
	clk.Step(500 * time.Millisecond)
	publish(t, p, Rotation{}) // the last one, half an interval later
	lastEvent := clk.Now()
	waitFor(t, "1,200 received", func() bool { return metric(t, run.reg, "credinject_events_received_total") == 1200 })
	waitFor(t, "the worker waiting for the interval", clk.HasWaiters)
	select {
	case r := <-rec.refreshed:
		t.Fatalf("Refresh(%+v) within the interval", r)
	default:
	}
	clk.Step(499 * time.Millisecond)
	waitFor(t, "the worker waiting again", clk.HasWaiters)
	select {
	case r := <-rec.refreshed:
		t.Fatalf("Refresh(%+v) 1ms before the interval ends", r)
	default:
	}
	clk.Step(time.Millisecond)
	if got := recv(t, rec.refreshed, "the trailing refresh"); got != (Rotation{}) {
		t.Fatalf("Refresh(%+v), want everything", got)
	}
	mu.Lock()
	trailing := at[Rotation{}][1]
	mu.Unlock()
	if !trailing.After(lastEvent) {
		t.Fatalf("trailing refresh at %v, not after the last event at %v", trailing, lastEvent)
	}
	clk.Step(time.Minute)
	noRefresh(t, rec, "after the trailing refresh")
	if got := metric(t, run.reg, "credinject_events_coalesced_total"); got != 998 {
		t.Errorf("coalesced = %v, want 998 (1,000 wildcards, 2 refreshes)", got)
	}

	// An id is remembered for DedupeWindow, then a copy counts again.
	clk.Step(DefaultDedupeWindow)
	if err := nc.Publish(subject, copyOf); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, rec.refreshed, "the copy after the window"); got != named {
		t.Fatalf("Refresh(%+v), want %+v", got, named)
	}
}

// noRefresh fails the test if a Refresh was reported that was not received
// yet.
func noRefresh(t *testing.T, rec *recorder, when string) {
	t.Helper()
	select {
	case r := <-rec.refreshed:
		t.Fatalf("Refresh(%+v) %s", r, when)
	default:
	}
}
