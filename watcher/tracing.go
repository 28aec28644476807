package watcher

import (
	"context"
	"net/url"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/credinject/credinject/authz"
)

// Span names and attribute keys of the watcher's spans. Extend, never
// rename. The identity, route and result keys are authz's, shared with the
// checker, so a trace query finds an identity's Check and its Vault calls
// alike.
const (
	// SpanRefresh is one read of one (identity, route): its Vault token
	// (login, renewal) and its provider's calls are its children.
	SpanRefresh = "credinject.refresh"
	// SpanVaultPrefix + the operation (login, read, renew, revoke,
	// renew_lease, revoke_lease) names a Vault call's span.
	SpanVaultPrefix = "vault."
	// SpanTokenEndpoint is one OAuth2 token request (client credentials).
	SpanTokenEndpoint = "credinject.oauth2.token"

	attrIdentity    = attribute.Key(authz.TraceAttrIdentity)
	attrRoute       = attribute.Key(authz.TraceAttrRoute)
	attrTrigger     = attribute.Key("credinject.trigger")
	attrSource      = attribute.Key("credinject.source")
	attrResult      = attribute.Key(authz.TraceAttrResult)
	attrVaultOp     = attribute.Key("vault.operation")
	attrVaultPath   = attribute.Key("vault.path")
	attrServerAddr  = attribute.Key("server.address")
	tracerName      = "github.com/credinject/credinject/watcher"
	resultUnhandled = "error"
)

// newTracer is tp's tracer for the watcher (a no-op one for nil).
func newTracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return noop.Tracer{}
	}
	return tp.Tracer(tracerName)
}

// spanScope is the (identity, route) a call is made for: the Vault client
// and the token endpoint do not know it, so it travels in the context to
// their spans.
type spanScope struct {
	identity, route string
	routed          bool
}

type scopeKey struct{}

// withScope records identity (and route, when routed) for the spans made
// under ctx.
func withScope(ctx context.Context, identity, route string, routed bool) context.Context {
	return context.WithValue(ctx, scopeKey{}, spanScope{identity: identity, route: route, routed: routed})
}

// scopeAttrs are the identity and route attributes of ctx's scope.
func scopeAttrs(ctx context.Context, attrs []attribute.KeyValue) []attribute.KeyValue {
	s, ok := ctx.Value(scopeKey{}).(spanScope)
	if !ok {
		return attrs
	}
	attrs = append(attrs, attrIdentity.String(s.identity))
	if s.routed {
		attrs = append(attrs, attrRoute.String(s.route))
	}
	return attrs
}

// endSpan records result on span, marks an error result as the span's
// status (the result only: error texts may quote a request), and ends it.
func endSpan(span trace.Span, result string) {
	span.SetAttributes(attrResult.String(result))
	if result == resultUnhandled || result == "unavailable" {
		span.SetStatus(codes.Error, result)
	}
	span.End()
}

// hostOf is the host:port of a URL, for a span (never its query).
func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}
