// Package poll is the tests' one way to wait for a state that has no event
// to wait on (a metric, a connection state, a server's answer): check a
// condition every Interval until it holds or a deadline passes. Never a
// sleep. It imports nothing of ours, so any package's tests can use it.
package poll

import (
	"errors"
	"testing"
	"time"
)

// Interval is the pause between two checks.
const Interval = 10 * time.Millisecond

// Until calls cond until it returns nil; after timeout it fails tb naming
// what and cond's last error.
func Until(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	if err := until(timeout, cond); err != nil {
		tb.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
	}
}

// True is Until for a condition without an error.
func True(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if err := until(timeout, boolCond(cond)); err != nil {
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

var errFalse = errors.New("condition false")

func boolCond(cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errFalse
	}
}

// until checks cond at once, then every Interval; it returns cond's last
// error once timeout has passed.
func until(timeout time.Duration, cond func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-deadline.C:
			return err
		case <-tick.C:
		}
	}
}
