package tlsconfig

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// newMetrics builds the reload counter (by result: ok, error), the refused
// client counter (by stage: handshake, request) and the certificate-expiry
// gauge read from notAfter, and registers them on reg (nil: not registered).
func newMetrics(reg prometheus.Registerer, notAfter func() float64) (reloads, refused *prometheus.CounterVec, err error) {
	reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_tls_reloads_total",
		Help: "Certificate files found changed on disk, by result: ok (now served) or error (refused; the previous certificate is still served).",
	}, []string{"result"})
	reloads.WithLabelValues("ok")
	reloads.WithLabelValues("error")
	refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_tls_client_refused_total",
		Help: "Client certificates signed by the client CA but naming none of listen.tls.clientNames, by stage: handshake (the connection failed; gRPC) or request (answered 403 client_not_allowed; HTTP), once per connection.",
	}, []string{"stage"})
	refused.WithLabelValues("handshake")
	refused.WithLabelValues("request")
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "credinject_tls_certificate_expiry_timestamp_seconds",
		Help: "Expiry (Unix time) of the serving certificate currently loaded.",
	}, notAfter)
	if reg == nil {
		return reloads, refused, nil
	}
	for _, c := range []prometheus.Collector{reloads, refused, expiry} {
		if err := reg.Register(c); err != nil {
			return nil, nil, fmt.Errorf("tlsconfig: metrics: %w", err)
		}
	}
	return reloads, refused, nil
}
