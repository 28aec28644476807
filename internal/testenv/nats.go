package testenv

import (
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// NATS is an embedded NATS server (JetStream on) that can be stopped and
// started again on the same port.
type NATS struct {
	URL string

	mu   sync.Mutex
	port int
	dir  string
	srv  *natsserver.Server
}

// StartNATS starts an embedded NATS server on a free loopback port.
func StartNATS(dir string) (*NATS, error) {
	n := &NATS{port: -1, dir: dir}
	if err := n.Start(); err != nil {
		return nil, err
	}
	return n, nil
}

// Start (re)starts the server on its port.
func (n *NATS) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return nil
	}
	srv, err := natsserver.NewServer(&natsserver.Options{
		Host:      "127.0.0.1",
		Port:      n.port,
		NoLog:     true,
		NoSigs:    true,
		JetStream: true,
		StoreDir:  filepath.Join(n.dir, "jetstream"),
	})
	if err != nil {
		return fmt.Errorf("testenv: nats: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("testenv: nats did not become ready")
	}
	n.srv = srv
	if n.port == -1 {
		n.port = srv.Addr().(*net.TCPAddr).Port
	}
	n.URL = srv.ClientURL()
	return nil
}

// Stop shuts the server down (clients see a disconnect).
func (n *NATS) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}
