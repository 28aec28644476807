package auditbridge

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/testenv/logbuf"
	"github.com/credinject/credinject/internal/testenv/natsauth"
)

// TestBridgeWithNATSCredentials runs the bridge against a NATS server that
// requires TLS, a client certificate and a creds user (the files `credinject
// vault-audit-bridge --nats-*` names): a watched write read from the socket
// input is published. With another account's user the bridge keeps trying
// (refused credentials do not close its connection for good), buffers, and
// publishes once the creds file is replaced with a good one.
func TestBridgeWithNATSCredentials(t *testing.T) {
	srv, err := natsauth.Start(t.TempDir(), natsauth.Creds)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	good, err := events.Credentials(srv.Good).Options()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := events.Connect(t.Context(), srv.URL, good...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const subject = "test.bridge.credentials"
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	next := func(t *testing.T) events.Rotation {
		t.Helper()
		msg, err := sub.NextMsg(15 * time.Second)
		if err != nil {
			t.Fatalf("no event: %v", err)
		}
		r, _, err := events.Parse(msg.Data)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	want := events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"}

	t.Run("good credentials", func(t *testing.T) {
		b, addr, _ := runCredsBridge(t, srv.URL, subject, good)
		waitFor(t, "connected", b.Connected)
		feed(t, addr)
		if got := next(t); got != want {
			t.Fatalf("event %+v, want %+v", got, want)
		}
	})

	t.Run("wrong credentials, then fixed", func(t *testing.T) {
		wrong, err := events.Credentials(srv.Wrong).Options()
		if err != nil {
			t.Fatal(err)
		}
		conns := func() int64 {
			v, err := srv.Server().Varz(nil)
			if err != nil {
				t.Fatal(err)
			}
			return int64(v.TotalConnections)
		}
		before := conns()
		b, addr, logs := runCredsBridge(t, srv.URL, subject, wrong)
		waitFor(t, "the authorization error", func() bool {
			return strings.Contains(strings.ToLower(logs.String()), "authorization violation")
		})
		// nats.go gives up after two authorization errors in a row unless
		// told otherwise: three more attempts show the bridge keeps going.
		waitFor(t, "three more connection attempts", func() bool { return conns() >= before+4 })
		if b.Connected() {
			t.Fatal("connected with wrong credentials")
		}
		feed(t, addr)
		waitFor(t, "the event buffered", func() bool { return b.q.len() > 0 })
		creds, err := os.ReadFile(srv.Good.CredsFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(srv.Wrong.CredsFile, creds, 0o600); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "connected with the fixed file", b.Connected)
		if got := next(t); got != want {
			t.Fatalf("event %+v, want %+v", got, want)
		}
	})
}

// runCredsBridge runs a bridge with a socket input and the NATS options until
// the test ends; Run must not fail.
func runCredsBridge(t *testing.T, url, subject string, opts []nats.Option) (*Bridge, string, *logbuf.Buffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	b, err := New(Config{
		Listener: ln, NATSURL: url, Subject: subject, NATSOptions: opts,
		ReconnectWait: 20 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:    prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return b, ln.Addr().String(), logs
}

// feed sends a real Vault's audit lines for a kv v2 put of egress/ns1/sa1
// (and more) to the socket input.
func feed(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, l := range realLines(t) {
		if _, err := c.Write(append(l, '\n')); err != nil {
			t.Fatal(err)
		}
	}
}
