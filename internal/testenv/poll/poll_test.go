package poll

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	var n atomic.Int32
	Until(t, 5*time.Second, "the third check", func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if got := n.Load(); got != 3 {
		t.Errorf("%d checks, want 3 (it stops at the first nil)", got)
	}
	True(t, time.Second, "true", func() bool { return true })
}

func TestUntilTimesOut(t *testing.T) {
	last := errors.New("still down")
	if err := until(30*time.Millisecond, func() error { return last }); err != last {
		t.Errorf("until = %v, want the condition's last error", err)
	}
	if err := until(30*time.Millisecond, boolCond(func() bool { return false })); err == nil {
		t.Error("a false condition did not time out")
	}
}
