package audit

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the audit trail's Prometheus metrics.
type metrics struct {
	records     map[string]prometheus.Counter
	dropped     prometheus.Counter
	writeErrors prometheus.Counter
}

// newMetrics builds the audit metrics and registers them on reg (nil: not
// registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	records := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_audit_records_total",
		Help: "Audit records written, by record kind (fetched, rotated, refused, lease_renewed, lease_revoked, forgotten, usage, denied, flush).",
	}, []string{"record"})
	dropped := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_audit_dropped_total",
		Help: "Decisions left out of the usage records because the interval already held audit.maxKeys keys.",
	})
	writeErrors := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_audit_write_errors_total",
		Help: "Audit records that could not be written to audit.output.",
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{records, dropped, writeErrors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("audit: metrics: %w", err)
			}
		}
	}
	m := &metrics{records: map[string]prometheus.Counter{}, dropped: dropped, writeErrors: writeErrors}
	for _, k := range Kinds {
		m.records[k] = records.WithLabelValues(k)
	}
	return m, nil
}
