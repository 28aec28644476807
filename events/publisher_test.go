package events

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

func TestPublishWireFormat(t *testing.T) {
	subject := uniqueSubject(t)
	nc, err := Connect(t.Context(), natsURL())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	want := Rotation{Namespace: "egress-test", ServiceAccount: "default"}
	if err := NewPublisher(nc, subject, "credinject/rotate").Publish(t.Context(), want); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	msg, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("NextMsg: %v", err)
	}
	if ct := msg.Header.Get("Content-Type"); ct != "application/cloudevents+json" {
		t.Errorf("Content-Type = %q", ct)
	}
	got, meta, err := Parse(msg.Data)
	if err != nil {
		t.Fatalf("Parse(%s): %v", msg.Data, err)
	}
	if got != want || meta.Source != "credinject/rotate" {
		t.Errorf("published %+v from %q, want %+v from credinject/rotate", got, meta.Source, want)
	}
}

func TestPublishDefaultSubject(t *testing.T) {
	nc, err := Connect(t.Context(), natsURL())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync(DefaultSubject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := NewPublisher(nc, "", "").Publish(t.Context(), Rotation{}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	msg, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("NextMsg: %v", err)
	}
	if _, meta, err := Parse(msg.Data); err != nil || meta.Source != DefaultSource {
		t.Errorf("Parse = %+v, %v; want source %q", meta, err, DefaultSource)
	}
}

func TestPublishErrors(t *testing.T) {
	nc, err := Connect(t.Context(), natsURL())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()

	tests := map[string]struct {
		p    *Publisher
		ctx  context.Context
		r    Rotation
		want error // nil: any error
	}{
		"no connection":        {p: NewPublisher(nil, "", ""), ctx: t.Context(), want: ErrNoConnection},
		"nil publisher":        {p: nil, ctx: t.Context(), want: ErrNoConnection},
		"invalid rotation":     {p: NewPublisher(nc, "", ""), ctx: t.Context(), r: Rotation{ServiceAccount: "x"}, want: ErrInvalidRotation},
		"wildcard subject":     {p: NewPublisher(nc, "credinject.*", ""), ctx: t.Context()},
		"cancelled context":    {p: NewPublisher(nc, "", ""), ctx: cancelled, want: context.Canceled},
		"subject with a space": {p: NewPublisher(nc, "a b", ""), ctx: t.Context()},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.p.Publish(tc.ctx, tc.r)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Publish = %v, want %v", err, tc.want)
			}
		})
	}

	nc.Close()
	if err := NewPublisher(nc, "", "").Publish(t.Context(), Rotation{}); err == nil {
		t.Error("Publish on a closed connection: no error")
	}
}

func TestConnectFailsFast(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "nats://" + l.Addr().String()
	l.Close()

	start := time.Now()
	if nc, err := Connect(t.Context(), down); err == nil {
		nc.Close()
		t.Fatal("Connect to a closed port: no error")
	}
	if d := time.Since(start); d > DefaultConnectTimeout {
		t.Errorf("Connect took %v", d)
	}

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Connect(cancelled, natsURL()); !errors.Is(err, context.Canceled) {
		t.Errorf("Connect with a cancelled context = %v", err)
	}
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()
	if _, err := Connect(expired, natsURL()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Connect with an expired context = %v", err)
	}
}

// A listener that accepts but never speaks NATS: Connect must give up by
// the context's deadline rather than hang.
func TestConnectHonoursDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		l.Close()
		for c := range accepted {
			c.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if nc, err := Connect(ctx, "nats://"+l.Addr().String()); err == nil {
		nc.Close()
		t.Fatal("Connect to a silent server: no error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Connect took %v with a 200ms deadline", d)
	}
}
