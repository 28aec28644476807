package tlsconfig

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// newMetrics builds the reload counter (by result: ok, error) and the
// certificate-expiry gauge read from notAfter, and registers both on reg
// (nil: not registered).
func newMetrics(reg prometheus.Registerer, notAfter func() float64) (*prometheus.CounterVec, error) {
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_tls_reloads_total",
		Help: "Certificate files found changed on disk, by result: ok (now served) or error (refused; the previous certificate is still served).",
	}, []string{"result"})
	reloads.WithLabelValues("ok")
	reloads.WithLabelValues("error")
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "credinject_tls_certificate_expiry_timestamp_seconds",
		Help: "Expiry (Unix time) of the serving certificate currently loaded.",
	}, notAfter)
	if reg == nil {
		return reloads, nil
	}
	for _, c := range []prometheus.Collector{reloads, expiry} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("tlsconfig: metrics: %w", err)
		}
	}
	return reloads, nil
}
