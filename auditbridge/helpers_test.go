package auditbridge

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/internal/testenv/poll"
)

const waitTimeout = 20 * time.Second

// recv waits for one value from ch.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waitFor polls cond until it holds or a deadline passes; for states that
// have no event to wait on (a metric, a connection state).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.True(t, waitTimeout, what, cond)
}

// metric reads a counter or gauge; labels are name, value pairs.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func lines(t testing.TB, reg *prometheus.Registry, result string) float64 {
	return metric(t, reg, "credinject_audit_lines_total", "result", result)
}
