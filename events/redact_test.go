package events

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/credinject/credinject/internal/testenv/logbuf"
)

// TestConnectErrorsNeverEchoCredentials: a NATS URL that does not parse is
// quoted whole by net/url's error; neither the publisher's nor the
// subscriber's error (nor the subscriber's log) carries its user
// information.
func TestConnectErrorsNeverEchoCredentials(t *testing.T) {
	const secret = "S3CR3T"
	for _, u := range []string{"nats://u:" + secret + "%zz@127.0.0.1:1", "nats://u:" + secret + " x@127.0.0.1:1", "nats://127.0.0.1:1,nats://" + secret + "%@127.0.0.1:2"} {
		_, err := Connect(t.Context(), u)
		if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "redacted@") {
			t.Errorf("Connect(%q): %v", u, err)
		}
		if nc, err := KeepConnected(u); err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "redacted@") {
			t.Errorf("KeepConnected(%q): %v", u, err)
			if nc != nil {
				nc.Close()
			}
		}
		logs := &logbuf.Buffer{}
		rec := newRecorder()
		s, err := NewSubscriber(SubscriberConfig{URL: u, Subject: "credinject.rotated", MinInterval: time.Second, Refresher: rec, Resyncer: rec,
			Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ReconnectWait: 10 * time.Millisecond})
		if err != nil {
			// Refused at construction: the error must not echo it either.
			if strings.Contains(err.Error(), secret) {
				t.Errorf("NewSubscriber(%q): %v", u, err)
			}
			continue
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		err = s.Run(ctx)
		cancel()
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("Run with %q: %v", u, err)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log has the secret:\n%s", logs.String())
		}
	}
}

// TestKeepConnectedKeepsTrying: a kept connection to a server that is not
// there yet is returned (not an error) and keeps reconnecting; the caller's
// options come after the shared ones.
func TestKeepConnectedKeepsTrying(t *testing.T) {
	nc, err := KeepConnected("nats://127.0.0.1:1", nats.Name("caller"), nats.ReconnectWait(time.Hour))
	if err != nil {
		t.Fatalf("KeepConnected to a closed port: %v", err)
	}
	defer nc.Close()
	o := nc.Opts
	if !o.RetryOnFailedConnect || o.MaxReconnect != -1 || !o.IgnoreAuthErrorAbort || o.PingInterval != 20*time.Second || o.MaxPingsOut != 3 {
		t.Errorf("shared options not applied: retry %v, max reconnects %d, ignore auth abort %v, ping %v/%d",
			o.RetryOnFailedConnect, o.MaxReconnect, o.IgnoreAuthErrorAbort, o.PingInterval, o.MaxPingsOut)
	}
	if o.Name != "caller" || o.ReconnectWait != time.Hour {
		t.Errorf("caller's options: name %q, reconnect wait %v", o.Name, o.ReconnectWait)
	}
	if nc.IsConnected() {
		t.Error("connected to a closed port")
	}
}
