package events

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/internal/panics"
)

// Reasons an event is dropped: the closed set of the reason label of
// credinject_events_dropped_total.
const (
	// DropMalformed: the message was not a valid rotation event (see Parse).
	DropMalformed = "malformed"
	// DropOversized: the message exceeded MaxEventSize.
	DropOversized = "oversized"
	// DropOverflow: the worker's queue was full; a full resync replaces it.
	DropOverflow = "overflow"
	// DropSlowConsumer: the NATS client discarded messages it could not
	// deliver in time; a full resync replaces them.
	DropSlowConsumer = "slow_consumer"
	// DropDuplicate: an event with the same source and id was received
	// within SubscriberConfig.DedupeWindow.
	DropDuplicate = "duplicate"
)

// Triggers of a full resync: the closed set of the trigger label of
// credinject_events_resyncs_total.
const (
	TriggerReconnect    = "reconnect"     // the connection came back
	TriggerLateConnect  = "late_connect"  // the first connection succeeded only after failing
	TriggerOverflow     = "overflow"      // an event was dropped for a full queue
	TriggerSlowConsumer = "slow_consumer" // the NATS client dropped messages
	TriggerDisconnect   = "disconnect"    // the connection dropped (once per drop, not at shutdown)
)

// triggers is every Trigger*, in the order a resync's log line names them.
var triggers = []string{TriggerDisconnect, TriggerReconnect, TriggerLateConnect, TriggerOverflow, TriggerSlowConsumer}

type metrics struct {
	received    prometheus.Counter
	coalesced   prometheus.Counter
	dropped     map[string]prometheus.Counter
	resyncs     map[string]prometheus.Counter
	refreshErrs prometheus.Counter
	resyncErrs  prometheus.Counter
	connected   prometheus.Gauge
	// panics counts panics of the Refresher or Resyncer (component "events").
	panics *panics.Counter
}

// newMetrics registers the subscriber's metrics on reg (nil: not registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	received := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_events_received_total",
		Help: "Valid rotation events received from NATS.",
	})
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_events_dropped_total",
		Help: "Rotation events dropped, by reason (malformed, oversized, overflow, slow_consumer, duplicate).",
	}, []string{"reason"})
	coalesced := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_events_coalesced_total",
		Help: "Valid rotation events served by a refresh made for another event (same scope within events.minInterval, or a wider scope).",
	})
	resyncs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_events_resyncs_total",
		Help: "Full resyncs requested because events may have been missed, by trigger.",
	}, []string{"trigger"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_events_refresh_errors_total",
		Help: "Refresh (op=refresh) and resync (op=resync) calls that failed.",
	}, []string{"op"})
	connected := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "credinject_events_connected",
		Help: "1 while the NATS connection is up, 0 otherwise (rotation then waits for the periodic refresh).",
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{received, coalesced, dropped, resyncs, errs, connected} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("events: register metrics: %w", err)
			}
		}
	}
	m := &metrics{
		received:    received,
		coalesced:   coalesced,
		dropped:     map[string]prometheus.Counter{},
		resyncs:     map[string]prometheus.Counter{},
		refreshErrs: errs.WithLabelValues("refresh"),
		resyncErrs:  errs.WithLabelValues("resync"),
		connected:   connected,
	}
	for _, r := range []string{DropMalformed, DropOversized, DropOverflow, DropSlowConsumer, DropDuplicate} {
		m.dropped[r] = dropped.WithLabelValues(r)
	}
	for _, t := range triggers {
		m.resyncs[t] = resyncs.WithLabelValues(t)
	}
	var err error
	if m.panics, err = panics.NewCounter(reg); err != nil {
		return nil, err
	}
	return m, nil
}

// dropReason maps a Parse error to its label.
func dropReason(err error) string {
	if errors.Is(err, ErrTooLarge) {
		return DropOversized
	}
	return DropMalformed
}
