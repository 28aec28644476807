package checker

import (
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/authz"
)

// HTTP is the forward-auth endpoint (/check) for nginx auth_request, Traefik
// ForwardAuth, Caddy forward_auth and Envoy's HTTP ext_authz: the same
// decision as Check, as a status and headers.
type HTTP struct{ c *Checker }

// NewHTTP wraps c as a forward-auth handler.
func NewHTTP(c *Checker) *HTTP { return &HTTP{c: c} }

// ServeHTTP answers /check and /check/<path> for every method: Envoy's HTTP
// ext_authz keeps the original request's method and appends its path, so a
// PUT or DELETE through the gateway arrives here as a PUT or DELETE. The
// request body, if any, is not read. The original request's host is taken
// from X-Forwarded-Host (Traefik, Caddy, the nginx example), then
// X-Original-Host, then Host (Envoy sends the original one).
func (h *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := r.Header.Get("X-Forwarded-Host")
	if host == "" {
		host = r.Header.Get("X-Original-Host")
	}
	if host == "" {
		host = r.Host
	}
	ctx := r.Context()
	var span trace.Span
	if t := h.c.tracer; t != nil {
		// Canonical keys: a lookup of a lower-case name would allocate.
		th := traceHeaders{
			traceparent: first(r.Header["Traceparent"]), b3: first(r.Header["B3"]),
			b3TraceID: first(r.Header["X-B3-Traceid"]), b3Sampled: first(r.Header["X-B3-Sampled"]), b3Flags: first(r.Header["X-B3-Flags"]),
		}
		ctx, span = t.start(ctx, &th, propagation.HeaderCarrier(r.Header))
	}
	d := h.c.Decide(ctx, r.Header.Get("Authorization"), host)
	endCheck(span, &d)
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	if d.Reason != authz.ReasonNone {
		st := d.Reason.Status()
		hdr["X-Credinject-Reason"] = []string{string(d.Reason)}
		if st == http.StatusUnauthorized {
			hdr["Www-Authenticate"] = []string{"Bearer"}
		}
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(st)
		_, _ = w.Write([]byte(strconv.Itoa(st) + " " + string(d.Reason) + "\n"))
		return
	}
	hdr[http.CanonicalHeaderKey(d.Entry.Header)] = []string{d.Entry.Value}
	if d.Entry.Header != headerAuthorization {
		// Another header is injected: the workload's token must not go on.
		// Envoy's HTTP ext_authz removes the headers this one names.
		hdr["X-Envoy-Auth-Headers-To-Remove"] = []string{headerAuthorization}
	}
	hdr["X-Credinject-Namespace"] = []string{d.Identity.Namespace}
	hdr["X-Credinject-Serviceaccount"] = []string{d.Identity.ServiceAccount}
	w.WriteHeader(http.StatusOK)
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}
