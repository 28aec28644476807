// Package panics turns a recovered panic into an error and counts it in
// credinject_panics_total{component}, so that one bad request, event or
// connection costs itself, not the process. It imports nothing of ours.
package panics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrPanic is wrapped by every error made of a panic.
var ErrPanic = errors.New("panic")

// Counter counts recovered panics by component. A nil *Counter counts
// nothing (the panic is still turned into an error).
type Counter struct {
	vec *prometheus.CounterVec
}

// NewCounter registers credinject_panics_total on reg, or reuses the one
// already there, so every part of a process built on one registry shares
// it. A nil reg gives a Counter registered nowhere.
func NewCounter(reg prometheus.Registerer) (*Counter, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_panics_total",
		Help: "Panics recovered, by component (check, events, auditbridge, a server's name): each cost its request, event, connection or server, not the process.",
	}, []string{"component"})
	if reg == nil {
		return &Counter{vec: vec}, nil
	}
	if err := reg.Register(vec); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, fmt.Errorf("panics: credinject_panics_total is registered as another kind of collector: %w", err)
		}
		vec = existing
	}
	return &Counter{vec: vec}, nil
}

// Recovered turns p, the value of a recover() called directly in a deferred
// function, into an error ("component: panic: p", wrapping ErrPanic) and
// counts it under component, which is a metric label: a fixed name, never a
// request's or a file's. It returns nil when p is nil (no panic), at no cost:
//
//	defer func() {
//		if err := panics.Recovered(c, "check", recover()); err != nil { … }
//	}()
func Recovered(c *Counter, component string, p any) error {
	if p == nil {
		return nil
	}
	if c != nil {
		c.vec.WithLabelValues(component).Inc()
	}
	return fmt.Errorf("%s: %w: %v", component, ErrPanic, p)
}

// Guard runs f and returns its error, or the error Recovered makes of its
// panic.
func Guard(c *Counter, component string, f func() error) (err error) {
	defer func() {
		if perr := Recovered(c, component, recover()); perr != nil {
			err = perr
		}
	}()
	return f()
}
