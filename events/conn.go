package events

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/credinject/credinject/internal/redact"
)

// KeepConnected opens a connection to url that is kept for the life of a
// process (the subscriber, the audit bridge): the first connection is
// retried like a reconnect, reconnects never stop, refused credentials
// (rotated, not yet authorised) keep it trying instead of closing it for
// good, and a silently dead connection is noticed within about a minute
// (a ping every 20 s, 3 unanswered). opts follow and may override:
// credentials and TLS (Credentials.Options), the connection's name, its
// reconnect pacing and its handlers. The error names url with its user
// information redacted, and never quotes a password (redact.Error).
func KeepConnected(url string, opts ...nats.Option) (*nats.Conn, error) {
	all := append([]nats.Option{
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.PingInterval(20 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.IgnoreAuthErrorAbort(),
	}, slices.Clone(opts)...)
	nc, err := nats.Connect(url, all...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redact.URLs(url), redact.Error(err))
	}
	return nc, nil
}

// Connect opens a connection for a short-lived caller such as `credinject
// rotate`: it fails fast (within ctx's deadline, at most
// DefaultConnectTimeout) instead of retrying, and a cancelled ctx aborts the
// dial. opts add credentials or TLS. The caller closes the connection.
func Connect(ctx context.Context, url string, opts ...nats.Option) (*nats.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("events: connect: %w", err)
	}
	timeout := DefaultConnectTimeout
	if dl, ok := ctx.Deadline(); ok {
		if timeout = min(timeout, time.Until(dl)); timeout <= 0 {
			return nil, fmt.Errorf("events: connect: %w", context.DeadlineExceeded)
		}
	}
	d := &ctxDialer{ctx: ctx, timeout: timeout}
	all := append(slices.Clone(opts),
		nats.Name(DefaultConnectionName+"-publisher"),
		nats.Timeout(timeout),
		nats.SetCustomDialer(d),
		nats.RetryOnFailedConnect(false),
		nats.MaxReconnects(3),
	)
	nc, err := nats.Connect(url, all...)
	d.release()
	if err != nil {
		return nil, fmt.Errorf("events: connect to %s: %w", redact.URLs(url), redact.Error(err))
	}
	return nc, nil
}

// ctxDialer ties the first dial to the caller's context; once Connect has
// returned, later reconnects dial on their own (the caller's context is
// often a short timeout that ends right after Connect).
type ctxDialer struct {
	mu      sync.Mutex
	ctx     context.Context
	timeout time.Duration
}

func (d *ctxDialer) Dial(network, address string) (net.Conn, error) {
	d.mu.Lock()
	ctx, timeout := d.ctx, d.timeout
	d.mu.Unlock()
	nd := net.Dialer{Timeout: timeout}
	return nd.DialContext(ctx, network, address)
}

func (d *ctxDialer) release() {
	d.mu.Lock()
	d.ctx = context.Background()
	d.timeout = DefaultConnectTimeout
	d.mu.Unlock()
}
