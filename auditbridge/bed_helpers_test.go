//go:build bed

package auditbridge

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/logbuf"
)

// checkLeaks verifies, after every later cleanup has run, that the test
// left no goroutine behind. Idle HTTP connections of the shared Vault
// client and a restarted Vault's process waiter belong to the bed.
func checkLeaks(t *testing.T) {
	t.Helper()
	current := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, current,
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("github.com/credinject/credinject/internal/testenv.(*proc).start.func1"),
			// A restarted Vault's log copier and process waiter.
			goleak.IgnoreAnyFunction("github.com/credinject/credinject/internal/devstack.StartVault.func1"),
			goleak.IgnoreAnyFunction("github.com/credinject/credinject/internal/devstack.StartVault.func2"),
			goleak.IgnoreAnyFunction("os/exec.(*Cmd).Wait"),
		)
	})
}

type bridgeRun struct {
	b       *Bridge
	reg     *prometheus.Registry
	logs    *logbuf.Buffer
	addr    string // the socket input, if any
	subject string
	stop    func() // cancels Run and checks it returned nil; idempotent
}

// startBridge runs a bridge on a fresh subject of the bed's NATS, with a
// socket listener on a free port unless noSocket.
func startBridge(t *testing.T, cfg Config, noSocket bool) *bridgeRun {
	t.Helper()
	env := testenv.Get(t)
	r := &bridgeRun{reg: prometheus.NewRegistry(), logs: &logbuf.Buffer{}, subject: "credinject.test." + testenv.RandHex(4)}
	if !noSocket {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Listener = ln
		r.addr = ln.Addr().String()
	}
	if cfg.NATSURL == "" {
		cfg.NATSURL = env.NATS.URL
	}
	cfg.Subject = r.subject
	cfg.Registerer = r.reg
	cfg.Logger = slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	b, err := New(cfg)
	if err != nil {
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		t.Fatal(err)
	}
	r.b = b
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := recv(t, done, "Run to return"); err != nil {
				t.Errorf("Run = %v", err)
			}
			if t.Failed() {
				t.Logf("bridge logs:\n%s", r.logs.String())
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

type received struct {
	r   events.Rotation
	err error
}

// subscribe listens on subject with a plain NATS subscription, as a
// credinject replica would.
func subscribe(t *testing.T, subject string) <-chan received {
	t.Helper()
	nc, err := nats.Connect(testenv.Get(t).NATS.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ch := make(chan received, 100)
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		r, _, err := events.Parse(m.Data)
		ch <- received{r, err}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

// next returns the next event on ch and checks it is want.
func next(t *testing.T, ch <-chan received, want events.Rotation) {
	t.Helper()
	got := recv(t, ch, "event "+want.String())
	if got.err != nil {
		t.Fatalf("invalid event: %v", got.err)
	}
	if got.r != want {
		t.Fatalf("event %s, want %s", got.r, want)
	}
}

// enableAudit enables an audit device on the bed's Vault and disables it
// when the test ends, before the bridge stops: Vault fails requests it
// cannot audit.
func enableAudit(t *testing.T, typ string, options map[string]string) string {
	t.Helper()
	c := testenv.Get(t).Vault.Client
	path := "cib-" + typ + "-" + testenv.RandHex(4)
	options["format"] = "json"
	if err := c.Sys().EnableAuditWithOptionsWithContext(t.Context(), path,
		&vaultapi.EnableAuditOptions{Type: typ, Options: options}); err != nil {
		t.Fatalf("enable %s audit device: %v", typ, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Sys().DisableAuditWithContext(ctx, path); err != nil {
			t.Errorf("disable audit device %s: %v", path, err)
		}
	})
	return path
}

func enableSocketAudit(t *testing.T, addr string) string {
	t.Helper()
	return enableAudit(t, "socket", map[string]string{"address": addr, "socket_type": "tcp"})
}

func put(t *testing.T, path string) {
	t.Helper()
	if _, err := testenv.Get(t).Vault.PutCredential(t.Context(), path, map[string]any{"api_key": "sk-test-" + testenv.RandHex(4)}); err != nil {
		t.Fatal(err)
	}
}
