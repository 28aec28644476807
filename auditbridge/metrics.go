package auditbridge

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/internal/panics"
)

// Reasons an event is dropped: the closed set of the reason label of
// credinject_audit_events_dropped_total.
const (
	// DropOverflow: the buffer was full (NATS down for long); the whole
	// buffer was replaced by one event for every identity.
	DropOverflow = "overflow"
	// DropInvalid: the event could not be encoded (cannot happen for
	// events ParseLine produced; counted rather than retried forever).
	DropInvalid = "invalid"
)

type metrics struct {
	lines       map[Verdict]prometheus.Counter
	published   prometheus.Counter
	coalesced   prometheus.Counter
	dropped     map[string]prometheus.Counter
	publishErrs prometheus.Counter
	pending     prometheus.Gauge
	connected   prometheus.Gauge
	conns       prometheus.Gauge
	// panics counts panics of the bridge's loops and connections
	// (component "auditbridge").
	panics *panics.Counter
}

// newMetrics registers the bridge's metrics on reg (nil: not registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	lines := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_audit_lines_total",
		Help: "Vault audit lines read, by result: published (a watched write, events queued), ignored (any other entry), malformed (skipped).",
	}, []string{"result"})
	published := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_audit_events_published_total",
		Help: "Rotation events the NATS server acknowledged.",
	})
	coalesced := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_audit_events_coalesced_total",
		Help: "Rotation events not sent because an identical or wider one was still waiting to be sent.",
	})
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_audit_events_dropped_total",
		Help: "Rotation events dropped, by reason (overflow: replaced by one event for every identity; invalid).",
	}, []string{"reason"})
	publishErrs := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_audit_publish_errors_total",
		Help: "Failed publish attempts (the event stays buffered and is retried).",
	})
	pending := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "credinject_audit_events_pending",
		Help: "Rotation events waiting to be published.",
	})
	connected := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "credinject_audit_nats_connected",
		Help: "1 while the NATS connection is up, 0 otherwise (events are buffered).",
	})
	conns := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "credinject_audit_socket_connections",
		Help: "Open connections from Vault socket audit devices.",
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{lines, published, coalesced, dropped, publishErrs, pending, connected, conns} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("auditbridge: register metrics: %w", err)
			}
		}
	}
	m := &metrics{
		lines:       map[Verdict]prometheus.Counter{},
		published:   published,
		coalesced:   coalesced,
		dropped:     map[string]prometheus.Counter{},
		publishErrs: publishErrs,
		pending:     pending,
		connected:   connected,
		conns:       conns,
	}
	for _, v := range []Verdict{Publish, Ignored, Malformed} {
		m.lines[v] = lines.WithLabelValues(v.String())
	}
	for _, r := range []string{DropOverflow, DropInvalid} {
		m.dropped[r] = dropped.WithLabelValues(r)
	}
	var err error
	if m.panics, err = panics.NewCounter(reg); err != nil {
		return nil, err
	}
	return m, nil
}
