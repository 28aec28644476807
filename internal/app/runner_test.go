package app

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/credinject/credinject/internal/panics"
)

// TestRunComponents: every component runs; when one panics, its panic is
// the error (named, counted), and every stop is called in the list's order,
// so servers blocked in run return.
func TestRunComponents(t *testing.T) {
	reg := prometheus.NewRegistry()
	pc, err := panics.NewCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		stopped []string
	)
	server := func(name string) component {
		done := make(chan struct{})
		return component{name: name,
			run: func(context.Context) error { <-done; return nil },
			stop: func(context.Context) {
				mu.Lock()
				stopped = append(stopped, name)
				mu.Unlock()
				close(done)
			},
		}
	}
	started := make(chan struct{})
	cs := []component{
		server("first"),
		{name: "loop", run: func(ctx context.Context) error { <-ctx.Done(); return nil }},
		{name: "bad", run: func(context.Context) error { <-started; panic("boom") }},
		server("last"),
	}
	close(started)
	err = runComponents(t.Context(), pc, cs, time.Second)
	if err == nil || err.Error() != "bad: panic: boom" || !errors.Is(err, panics.ErrPanic) {
		t.Fatalf("runComponents = %v, want bad's panic", err)
	}
	if !slices.Equal(stopped, []string{"first", "last"}) {
		t.Errorf("stopped %v, want [first last]", stopped)
	}
	if n := testutil.CollectAndCount(reg, "credinject_panics_total"); n != 1 {
		t.Errorf("%d panic series, want 1", n)
	}

	// Ending ctx stops everything without an error.
	ctx, cancel := context.WithCancel(t.Context())
	stopped = nil
	done := make(chan error, 1)
	go func() { done <- runComponents(ctx, pc, []component{server("a"), server("b")}, time.Second) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("runComponents after cancel = %v", err)
	}
	if !slices.Equal(stopped, []string{"a", "b"}) {
		t.Errorf("stopped %v, want [a b]", stopped)
	}
}
