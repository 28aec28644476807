package auditbridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/credinject/credinject/internal/backoff"
	"github.com/credinject/credinject/internal/panics"
)

// lineFunc receives the lines of one input; input names it for logs.
type lineFunc func(input string, line []byte, tooLong bool)

// socketServer accepts the connections of Vault socket audit devices. Vault
// keeps one connection per device and dials again after its own restart (or
// after a write fails), so it accepts any number of successive or parallel
// connections, one goroutine each.
type socketServer struct {
	clock  clock.WithTicker
	ln     net.Listener
	handle lineFunc
	log    *slog.Logger
	m      *metrics
}

// serve accepts until ctx is done or the listener fails for good, then
// closes the listener and every connection and waits for their goroutines.
func (s *socketServer) serve(ctx context.Context) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		done  bool
	)
	closeAll := func() {
		s.ln.Close()
		mu.Lock()
		done = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	stop := context.AfterFunc(ctx, closeAll)
	defer func() {
		stop()
		closeAll()
		wg.Wait()
	}()

	addr := s.ln.Addr().String()
	s.log.Info("auditbridge: listening for Vault's socket audit device", "addr", addr)
	failures := 0
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("auditbridge: listener %s closed: %w", addr, err)
			}
			// Out of file descriptors and the like: wait, do not spin.
			s.log.Warn("auditbridge: accept failed", "addr", addr, "err", err)
			failures++
			t := s.clock.NewTimer(backoff.Delay(failures, 5*time.Millisecond, time.Second, 0))
			select {
			case <-ctx.Done():
			case <-t.C():
			}
			t.Stop()
			continue
		}
		failures = 0
		mu.Lock()
		if done {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			s.read(c)
		})
	}
}

// read handles one connection until Vault closes it or serve closes it.
func (s *socketServer) read(c net.Conn) {
	remote := c.RemoteAddr().String()
	// Named after the listener, not the peer: Vault reconnects from a new
	// port every time.
	input := "socket " + s.ln.Addr().String()
	s.m.conns.Inc()
	defer s.m.conns.Dec()
	s.log.Info("auditbridge: audit device connected", "remote", remote)
	defer func() {
		// A bug must cost this connection (Vault dials again), not the
		// process.
		if err := panics.Recovered(s.m.panics, "auditbridge", recover()); err != nil {
			s.log.Error("auditbridge: panic reading an audit connection", "remote", remote, "err", err)
		}
	}()
	sp := newSplitter(MaxLineSize, func(line []byte, tooLong bool) { s.handle(input, line, tooLong) })
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		sp.feed(buf[:n])
		if err != nil {
			sp.flush()
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				s.log.Info("auditbridge: audit device disconnected", "remote", remote)
			} else {
				s.log.Warn("auditbridge: audit device connection failed", "remote", remote, "err", err)
			}
			return
		}
	}
}
