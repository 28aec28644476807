package policies

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/api/v1alpha1"
)

type controllerMetrics struct {
	policies     *prometheus.GaugeVec
	applies      *prometheus.CounterVec
	statusWrites *prometheus.CounterVec
	leader       prometheus.Gauge
}

func newControllerMetrics(reg prometheus.Registerer) (*controllerMetrics, error) {
	m := &controllerMetrics{
		policies: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "credinject_policies",
			Help: "CredentialPolicies by their Accepted reason (Accepted, Invalid, Conflicted, TargetNotFound), as of the last compile."}, []string{"reason"}),
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "credinject_policies_applies_total",
			Help: "Route tables compiled from policies and the config file and handed to the router and watcher, by result (ok, error)."}, []string{"result"}),
		statusWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "credinject_policies_status_writes_total",
			Help: "CredentialPolicy status updates written by this replica as leader, by result (ok, error)."}, []string{"result"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "credinject_policies_leader",
			Help: "1 while this replica holds the policy status Lease (writes status), else 0."}),
	}
	for _, r := range []string{v1alpha1.ReasonAccepted, v1alpha1.ReasonInvalid, v1alpha1.ReasonConflicted, v1alpha1.ReasonTargetNotFound} {
		m.policies.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error"} {
		m.applies.WithLabelValues(r)
		m.statusWrites.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.policies, m.applies, m.statusWrites, m.leader} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// count sets credinject_policies from t's conditions.
func (m *controllerMetrics) count(t Table) {
	n := map[string]int{}
	for _, c := range t.Conditions {
		n[c.Reason]++
	}
	for _, r := range []string{v1alpha1.ReasonAccepted, v1alpha1.ReasonInvalid, v1alpha1.ReasonConflicted, v1alpha1.ReasonTargetNotFound} {
		m.policies.WithLabelValues(r).Set(float64(n[r]))
	}
}
