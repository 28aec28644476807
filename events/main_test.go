package events

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/credinject/credinject/internal/testenv/logbuf"
	"github.com/credinject/credinject/internal/testenv/poll"
)

// One embedded nats-server for the package, on a port chosen at the first
// start and kept across restarts (the reconnect test stops and restarts it).
// Tests that use it do not run in parallel.
var testNATS struct {
	mu   sync.Mutex
	srv  *server.Server
	port int
}

func TestMain(m *testing.M) {
	srv, err := startNATS(-1)
	if err != nil {
		fmt.Fprintln(os.Stderr, "events tests: start nats-server:", err)
		os.Exit(1)
	}
	testNATS.srv = srv
	testNATS.port = srv.Addr().(*net.TCPAddr).Port

	code := m.Run()

	testNATS.mu.Lock()
	testNATS.srv.Shutdown()
	testNATS.srv.WaitForShutdown()
	testNATS.mu.Unlock()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "events tests: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func startNATS(port int) (*server.Server, error) {
	srv, err := server.NewServer(&server.Options{
		Host:   "127.0.0.1",
		Port:   port,
		NoLog:  true,
		NoSigs: true,
	})
	if err != nil {
		return nil, err
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats-server on port %d not ready", port)
	}
	return srv, nil
}

func natsURL() string {
	testNATS.mu.Lock()
	defer testNATS.mu.Unlock()
	return fmt.Sprintf("nats://127.0.0.1:%d", testNATS.port)
}

func natsServer() *server.Server {
	testNATS.mu.Lock()
	defer testNATS.mu.Unlock()
	return testNATS.srv
}

// stopNATS shuts the shared server down; the returned function starts it
// again on the same port.
func stopNATS(t *testing.T) (restart func()) {
	t.Helper()
	testNATS.mu.Lock()
	testNATS.srv.Shutdown()
	testNATS.srv.WaitForShutdown()
	port := testNATS.port
	testNATS.mu.Unlock()
	var once sync.Once
	restart = func() {
		once.Do(func() {
			srv, err := startNATS(port)
			if err != nil {
				t.Fatalf("restart nats-server on port %d: %v", port, err)
			}
			testNATS.mu.Lock()
			testNATS.srv = srv
			testNATS.mu.Unlock()
		})
	}
	// Leave a running server to the next test even if this one fails.
	t.Cleanup(restart)
	return restart
}

// waitFor polls cond until it holds or a deadline passes; for states that
// have no event to wait on (server-side interest, connection state).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.True(t, 15*time.Second, what, cond)
}

// waitInterest waits until the server has n subscriptions matching subject,
// so a message published next reaches all of them.
func waitInterest(t *testing.T, srv *server.Server, subject string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d subscriptions on %s", n, subject), func() bool {
		sz, err := srv.Subsz(&server.SubszOptions{Subscriptions: true, Test: subject})
		return err == nil && sz.Total == n
	})
}

// recv waits for one value from ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// recorder is a Refresher and Resyncer that reports every call on a channel.
type recorder struct {
	refreshed chan Rotation
	resynced  chan struct{}
	// refresh, when set, runs inside Refresh before it reports.
	refresh func(ctx context.Context, r Rotation) error
	// resync, when set, runs inside ResyncAll before it reports.
	resync func(ctx context.Context) error
}

func newRecorder() *recorder {
	return &recorder{refreshed: make(chan Rotation, 1000), resynced: make(chan struct{}, 100)}
}

func (rec *recorder) Refresh(ctx context.Context, r Rotation) error {
	var err error
	if rec.refresh != nil {
		err = rec.refresh(ctx, r)
	}
	rec.refreshed <- r
	return err
}

func (rec *recorder) ResyncAll(ctx context.Context) error {
	var err error
	if rec.resync != nil {
		err = rec.resync(ctx)
	}
	rec.resynced <- struct{}{}
	return err
}

// noResync fails the test if ResyncAll has reported a call that was not
// received yet.
func noResync(t *testing.T, rec *recorder, when string) {
	t.Helper()
	select {
	case <-rec.resynced:
		t.Errorf("ResyncAll %s", when)
	default:
	}
}

var (
	_ Refresher = (*recorder)(nil)
	_ Resyncer  = (*recorder)(nil)
)

type running struct {
	s    *Subscriber
	reg  *prometheus.Registry
	logs *logbuf.Buffer
	stop func() error // cancels Run and returns its result
}

// runSubscriber starts a Subscriber on the shared server (unless cfg.URL is
// set) and stops it at cleanup.
func runSubscriber(t *testing.T, cfg SubscriberConfig) *running {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = natsURL()
	}
	if cfg.ReconnectWait == 0 {
		cfg.ReconnectWait = 20 * time.Millisecond
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = time.Second
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	logs := &logbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := NewSubscriber(cfg)
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = fmt.Errorf("Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &running{s: s, reg: reg, logs: logs, stop: stop}
}

// metric reads one counter or gauge from g; labels are name, value pairs.
func metric(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// uniqueSubject keeps tests that share the server from seeing each other's
// events.
func uniqueSubject(t *testing.T) string {
	return "test." + sanitize(t.Name())
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}
