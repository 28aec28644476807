package watcher

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/internal/panics"
)

// metrics are the watcher's Prometheus metrics.
type metrics struct {
	calls      *prometheus.CounterVec
	identities prometheus.Gauge
	refreshes  *prometheus.CounterVec
	tokens     *prometheus.CounterVec
	panics     *panics.Counter // credinject_panics_total{component="watcher"}
}

// newMetrics builds the watcher's metrics and registers them on reg (nil:
// not registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credinject_vault_requests_total",
			Help: "Vault calls made by the watcher, by operation (login, read, renew, revoke, renew_lease, revoke_lease) and result (ok, denied, not_found, error).",
		}, []string{"op", "result"}),
		identities: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "credinject_watcher_identities",
			Help: "Identities whose credentials the watcher keeps fresh.",
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credinject_watcher_refreshes_total",
			Help: "Credential refreshes by trigger (miss, schedule, event, prefetch), result (ok, denied, not_found, invalid, refused, unavailable) and source (kv, vault-read, oauth2-client-credentials, vault-identity-token).",
		}, []string{"trigger", "result", "source"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credinject_token_endpoint_requests_total",
			Help: "OAuth2 token requests (client credentials) by result (ok, refused, error).",
		}, []string{"result"}),
	}
	var err error
	if m.panics, err = panics.NewCounter(reg); err != nil {
		return nil, fmt.Errorf("watcher: metrics: %w", err)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.calls, m.identities, m.refreshes, m.tokens} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("watcher: metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) call(op, result string) { m.calls.WithLabelValues(op, result).Inc() }

func (m *metrics) tokenCall(result string) { m.tokens.WithLabelValues(result).Inc() }
