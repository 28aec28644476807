package devstack

import (
	"fmt"
	"net"
	"strconv"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// NATS is an embedded NATS server (core NATS: credinject's rotation events
// need no JetStream).
type NATS struct {
	URL string
	srv *natsserver.Server
}

// StartNATS starts an embedded NATS server on addr (host:port; port 0 picks a
// free one).
func StartNATS(addr string) (*NATS, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("devstack: nats address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("devstack: nats address %q: %w", addr, err)
	}
	if port == 0 {
		port = natsserver.RANDOM_PORT // 0 would mean nats-server's default, 4222
	} else {
		// A busy port would only show as a 10 s readiness timeout.
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("devstack: nats: %w", err)
		}
		ln.Close()
	}
	srv, err := natsserver.NewServer(&natsserver.Options{
		Host:   host,
		Port:   port,
		NoLog:  true,
		NoSigs: true,
	})
	if err != nil {
		return nil, fmt.Errorf("devstack: nats: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("devstack: nats on %s did not become ready (port in use?)", addr)
	}
	return &NATS{URL: srv.ClientURL(), srv: srv}, nil
}

// Stop shuts the server down and waits for it.
func (n *NATS) Stop() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}
