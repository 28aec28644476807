package panics

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestGuard(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := NewCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	// A second part of the same process shares the counter.
	c2, err := NewCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	sentinel := errors.New("plain error")
	if err := Guard(c, "loop", func() error { return sentinel }); err != sentinel {
		t.Errorf("Guard passed %v, want the function's own error", err)
	}
	err = Guard(c, "loop", func() error { panic("boom") })
	if err == nil || err.Error() != "loop: panic: boom" || !errors.Is(err, ErrPanic) {
		t.Errorf("Guard of a panic = %v", err)
	}
	_ = Guard(c2, "events", func() error { var s []int; _ = s[len(s)]; return nil })
	if got := testutil.ToFloat64(c.vec.WithLabelValues("loop")); got != 1 {
		t.Errorf("loop panics = %v, want 1", got)
	}
	if got := testutil.ToFloat64(c.vec.WithLabelValues("events")); got != 1 {
		t.Errorf("events panics counted through the second Counter = %v, want 1", got)
	}
	// No registry, and a nil Counter: recovered, not counted.
	free, _ := NewCounter(nil)
	var none *Counter
	for _, c := range []*Counter{free, none} {
		if err := Guard(c, "x", func() error { panic(1) }); err == nil || !strings.Contains(err.Error(), "x: panic: 1") {
			t.Errorf("Guard = %v", err)
		}
	}
}

func TestRecoveredWithoutPanicAllocatesNothing(t *testing.T) {
	c, _ := NewCounter(nil)
	if n := testing.AllocsPerRun(100, func() {
		func() {
			defer func() {
				if err := Recovered(c, "check", recover()); err != nil {
					t.Error(err)
				}
			}()
		}()
	}); n != 0 {
		t.Errorf("%v allocations without a panic, want 0", n)
	}
}

func TestNewCounterRefusesAnotherKind(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "credinject_panics_total", Help: "x"}))
	if _, err := NewCounter(reg); err == nil {
		t.Error("a gauge of the same name: no error")
	}
}
