//go:build bed

package auditbridge

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/testenv"
)

func TestSocketDevice(t *testing.T) {
	checkLeaks(t)
	env := testenv.Get(t)
	run := startBridge(t, Config{}, false)
	events1 := subscribe(t, run.subject)
	enableSocketAudit(t, run.addr)

	put(t, "egress/ns1/sa1")
	next(t, events1, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})

	// Writes outside the watched paths, and reads, publish nothing: the
	// next event is the next watched write.
	put(t, "other/ns1/sa1")
	put(t, "egress/ns1")
	put(t, "egress/ns1/sa1/extra")
	if _, err := env.Vault.Client.KVv2(testenv.VaultKVMount).Get(t.Context(), "egress/ns1/sa1"); err != nil {
		t.Fatal(err)
	}
	put(t, "egress/ns2/sa2")
	next(t, events1, events.Rotation{Namespace: "ns2", ServiceAccount: "sa2"})

	if err := env.Vault.DeleteCredential(t.Context(), "egress/ns1/sa1"); err != nil {
		t.Fatal(err)
	}
	next(t, events1, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})

	waitFor(t, "3 events acknowledged", func() bool {
		return metric(t, run.reg, "credinject_audit_events_published_total") == 3
	})
	if got := lines(t, run.reg, "published"); got != 3 {
		t.Errorf("lines{published} = %v, want 3", got)
	}
	if got := lines(t, run.reg, "ignored"); got < 10 {
		t.Errorf("lines{ignored} = %v, want the request entries, reads and unwatched writes", got)
	}
	if got := lines(t, run.reg, "malformed"); got != 0 {
		t.Errorf("lines{malformed} = %v, want 0", got)
	}
	if got := metric(t, run.reg, "credinject_audit_socket_connections"); got != 1 {
		t.Errorf("socket connections = %v, want 1", got)
	}
	// Paths and operations are logged, secrets never.
	if logs := run.logs.String(); strings.Contains(logs, "sk-test-") || strings.Contains(logs, "hmac-sha256") {
		t.Errorf("the logs hold audit data:\n%s", logs)
	}
}

func TestRoutes(t *testing.T) {
	checkLeaks(t)
	run := startBridge(t, Config{Templates: []Template{
		{Path: DefaultPath},
		{Route: "openai", Path: "openai/{namespace}/{serviceaccount}"},
	}}, false)
	ch := subscribe(t, run.subject)
	enableSocketAudit(t, run.addr)

	put(t, "openai/ns1/sa1")
	next(t, ch, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1", Route: "openai"})
	put(t, "egress/ns1/sa1")
	next(t, ch, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})
}

func TestVaultRestart(t *testing.T) {
	checkLeaks(t)
	env := testenv.Get(t)
	run := startBridge(t, Config{}, false)
	ch := subscribe(t, run.subject)
	enableSocketAudit(t, run.addr)
	stopped := false
	t.Cleanup(func() {
		// Leave a running Vault to the next test even if this one failed
		// during the outage; runs before the device is disabled.
		if stopped {
			if err := env.Vault.Start(context.Background()); err != nil {
				t.Errorf("restart Vault: %v", err)
			}
		}
	})

	put(t, "egress/ns1/sa1")
	next(t, ch, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})

	env.Vault.Stop()
	stopped = true
	waitFor(t, "Vault's audit connection to close", func() bool {
		return metric(t, run.reg, "credinject_audit_socket_connections") == 0
	})
	if err := env.Vault.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	stopped = false
	// Vault dials the device again for the first request it audits.
	put(t, "egress/ns2/sa2")
	next(t, ch, events.Rotation{Namespace: "ns2", ServiceAccount: "sa2"})
	put(t, "egress/ns3/sa3")
	next(t, ch, events.Rotation{Namespace: "ns3", ServiceAccount: "sa3"})
	if got := metric(t, run.reg, "credinject_audit_socket_connections"); got != 1 {
		t.Errorf("socket connections = %v, want 1", got)
	}
}

func TestFileDevice(t *testing.T) {
	checkLeaks(t)
	path := filepath.Join(t.TempDir(), "vault-audit.log")
	run := startBridge(t, Config{Files: []string{path}}, true)
	ch := subscribe(t, run.subject)
	enableAudit(t, "file", map[string]string{"file_path": path})

	put(t, "egress/ns1/sa1")
	next(t, ch, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})

	// Lines that are not audit entries are counted and skipped.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write(append(append([]byte("not json\n{\"type\":1}\n"), bytes.Repeat([]byte("x"), MaxLineSize+1)...), '\n'))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	put(t, "egress/ns2/sa2")
	next(t, ch, events.Rotation{Namespace: "ns2", ServiceAccount: "sa2"})
	if got := lines(t, run.reg, "malformed"); got != 3 {
		t.Errorf("lines{malformed} = %v, want 3", got)
	}
	if got := lines(t, run.reg, "published"); got != 2 {
		t.Errorf("lines{published} = %v, want 2", got)
	}
}

// writeLines connects to the bridge as a socket device would.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestMalformedSocketLines(t *testing.T) {
	checkLeaks(t)
	run := startBridge(t, Config{}, false)
	ch := subscribe(t, run.subject)

	c1 := dial(t, run.addr)
	c2 := dial(t, run.addr)
	write(t, c1, []byte("garbage\n{\"type\":1}\n[]\n"))
	write(t, c1, bytes.Repeat([]byte("{"), MaxLineSize/2))
	write(t, c1, bytes.Repeat([]byte("{"), MaxLineSize/2+1))
	write(t, c1, []byte("}\n"))
	// The connection survives all of that.
	write(t, c1, append(line(t, "response", "update", "secret/data/egress/ns1/sa1", nil), '\n'))
	next(t, ch, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})
	// A second connection is served at the same time.
	write(t, c2, append(line(t, "response", "delete", "secret/metadata/egress/ns2/sa2", nil), '\n'))
	next(t, ch, events.Rotation{Namespace: "ns2", ServiceAccount: "sa2"})
	if got := lines(t, run.reg, "malformed"); got != 4 {
		t.Errorf("lines{malformed} = %v, want 4", got)
	}
	// A line cut by the end of its connection is still judged.
	write(t, c2, []byte(`{"type":"resp`))
	c2.Close()
	waitFor(t, "the cut line to be counted", func() bool { return lines(t, run.reg, "malformed") == 5 })
	if got := metric(t, run.reg, "credinject_audit_socket_connections"); got != 1 {
		t.Errorf("socket connections = %v, want 1", got)
	}
	if logs := run.logs.String(); strings.Contains(logs, "garbage") {
		t.Errorf("a malformed line's content was logged:\n%s", logs)
	}
}

func TestCoalesce(t *testing.T) {
	checkLeaks(t)
	run := startBridge(t, Config{Coalesce: 200 * time.Millisecond}, false)
	ch := subscribe(t, run.subject)
	c := dial(t, run.addr)
	same := append(line(t, "response", "update", "secret/data/egress/ns1/sa1", nil), '\n')
	write(t, c, bytes.Repeat(same, 3))
	next(t, ch, events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})
	write(t, c, append(line(t, "response", "update", "secret/data/egress/ns2/sa2", nil), '\n'))
	next(t, ch, events.Rotation{Namespace: "ns2", ServiceAccount: "sa2"})
	if got := metric(t, run.reg, "credinject_audit_events_coalesced_total"); got != 2 {
		t.Errorf("coalesced = %v, want 2", got)
	}
}

// While NATS is down, events wait in the buffer and go out once it is
// back. The test reads them from a JetStream stream that outlives the
// restart: a plain subscriber could reconnect after the bridge and miss
// them (core NATS stores nothing).
func TestNATSOutage(t *testing.T) {
	env := testenv.Get(t)
	ctx := t.Context()
	run := startBridge(t, Config{}, false)
	nc, err := nats.Connect(env.NATS.URL, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := "AUDITBRIDGE_" + strings.ToUpper(testenv.RandHex(4))
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{run.subject}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, name)
	})
	enableSocketAudit(t, run.addr)
	last := func(want events.Rotation) {
		t.Helper()
		var got events.Rotation
		waitFor(t, "event "+want.String()+" in the stream", func() bool {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			msg, err := stream.GetLastMsgForSubject(cctx, run.subject)
			if err != nil {
				return false
			}
			if got, _, err = events.Parse(msg.Data); err != nil {
				t.Fatalf("invalid event: %v", err)
			}
			return got == want
		})
	}
	put(t, "egress/ns1/sa1")
	last(events.Rotation{Namespace: "ns1", ServiceAccount: "sa1"})

	env.NATS.Stop()
	t.Cleanup(func() { _ = env.NATS.Start() })
	waitFor(t, "the bridge to notice", func() bool { return !run.b.Connected() })
	put(t, "egress/ns2/sa2")
	put(t, "egress/ns2/sa2")
	put(t, "egress/ns3/sa3")
	waitFor(t, "2 events buffered", func() bool {
		return metric(t, run.reg, "credinject_audit_events_pending") == 2
	})
	if got := metric(t, run.reg, "credinject_audit_nats_connected"); got != 0 {
		t.Errorf("nats_connected = %v during the outage", got)
	}
	if err := env.NATS.Start(); err != nil {
		t.Fatal(err)
	}
	last(events.Rotation{Namespace: "ns3", ServiceAccount: "sa3"})
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Errorf("%d events in the stream, want 3 (ns1 before the outage; ns2 once, coalesced, and ns3 after)", info.State.Msgs)
	}
	if got := metric(t, run.reg, "credinject_audit_events_pending"); got != 0 {
		t.Errorf("pending = %v after the outage", got)
	}
}

func TestRunStopsCleanly(t *testing.T) {
	checkLeaks(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	run := startBridge(t, Config{Files: []string{path}}, false)
	c := dial(t, run.addr)
	write(t, c, append(line(t, "response", "update", "secret/data/egress/ns1/sa1", nil), '\n'))
	waitFor(t, "the event to be published", func() bool {
		return metric(t, run.reg, "credinject_audit_events_published_total") == 1
	})
	if err := run.b.Run(t.Context()); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Run = %v, want ErrAlreadyRunning", err)
	}
	// Stopping closes Vault's connection (and the listener; checkLeaks
	// shows its accept loop has ended: dialling the port again would race
	// with whoever binds it next).
	run.stop()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the connection is still open after Run returned")
	}
}

// Startup with NATS unreachable works: Run keeps trying, and stops cleanly.
func TestRunWithoutNATS(t *testing.T) {
	checkLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + l.Addr().String()
	l.Close()
	run := startBridge(t, Config{NATSURL: url}, false)
	c := dial(t, run.addr)
	write(t, c, append(line(t, "response", "update", "secret/data/egress/ns1/sa1", nil), '\n'))
	waitFor(t, "the event to be buffered", func() bool {
		return metric(t, run.reg, "credinject_audit_events_pending") == 1
	})
	run.stop()
	if !strings.Contains(run.logs.String(), "stopping with events not published") {
		t.Errorf("the lost event is not logged:\n%s", run.logs.String())
	}
}

func TestNewInvalid(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tests := map[string]Config{
		"no input":     {},
		"empty file":   {Files: []string{""}},
		"bad template": {Listener: ln, Templates: []Template{{Path: "/abs"}}},
		"bad subject":  {Listener: ln, Subject: "credinject.*"},
		"long source":  {Listener: ln, Source: strings.Repeat("s", events.MaxSourceLength+1)},
	}
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("New = %v, want ErrInvalidConfig", err)
			}
		})
	}
	t.Run("metrics registered twice", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		if _, err := New(Config{Listener: ln, Registerer: reg}); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Config{Listener: ln, Registerer: reg}); err == nil {
			t.Error("no error")
		}
	})
}
