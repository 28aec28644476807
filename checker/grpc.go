package checker

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/trace"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// Header names of the decision.
const (
	HeaderReason          = "x-credinject-reason"
	HeaderWWWAuthenticate = "www-authenticate"
	headerAuthorization   = "authorization"
)

// GRPC is the envoy.service.auth.v3.Authorization server.
type GRPC struct {
	authv3.UnimplementedAuthorizationServer
	c       *Checker
	denied  map[authz.Reason]*authv3.CheckResponse
	proxies []netip.Prefix
	named   bool
}

// GRPCOptions say whose word on the mesh peer (source.principal) Check
// believes, when the checker takes identities from peers. The zero value
// believes nobody.
type GRPCOptions struct {
	// TrustedProxies (listen.trustedProxies): callers whose TCP peer
	// address is in one of these prefixes.
	TrustedProxies []netip.Prefix
	// NamedClients: the server requires client certificates naming one of
	// listen.tls.clientNames (the handshake refuses the others), so every
	// TLS caller is trusted.
	NamedClients bool
}

// NewGRPC wraps c as an ext_authz server that believes nobody's peer
// (NewGRPCWith(c, GRPCOptions{})).
func NewGRPC(c *Checker) *GRPC { return NewGRPCWith(c, GRPCOptions{}) }

// NewGRPCWith wraps c as an ext_authz server with opts.
func NewGRPCWith(c *Checker, opts GRPCOptions) *GRPC {
	g := &GRPC{c: c, denied: map[authz.Reason]*authv3.CheckResponse{}, proxies: opts.TrustedProxies, named: opts.NamedClients}
	for _, r := range append([]authz.Reason{authz.ReasonInternal}, authz.Reasons...) {
		g.denied[r] = deniedResponse(r)
	}
	return g
}

var _ authv3.AuthorizationServer = (*GRPC)(nil)

// Check answers one ext_authz request; with the peer source on, a trusted
// caller's attributes.source.principal names the mesh peer. It always returns a CheckResponse and
// a nil error: a transport error would let a gateway configured with
// failure_mode_allow through.
func (g *GRPC) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	authorization, host := requestHeaders(httpReq)
	var span trace.Span
	if t := g.c.tracer; t != nil {
		th, carrier := grpcTraceHeaders(httpReq)
		ctx, span = t.start(ctx, &th, carrier)
	}
	r := Request{Authorization: authorization, Host: host, Path: httpReq.GetPath(), attrs: httpReq}
	if g.c.peerOn {
		// A principal counts only from a trusted caller; from anyone else
		// it is ignored, as if absent.
		if p := req.GetAttributes().GetSource().GetPrincipal(); p != "" && trustedGRPC(ctx, g.proxies, g.named) {
			r.Peer = p
		}
	}
	d := g.c.DecideRequest(ctx, r)
	endCheck(span, &d)
	if d.Reason != authz.ReasonNone {
		resp, ok := g.denied[d.Reason]
		if !ok {
			resp = g.denied[authz.ReasonInternal]
		}
		return resp, nil
	}
	// Responses are built once per cache entry and shared read-only; a
	// signed one adds the request's signature to a copy.
	ok := d.Entry.Memo(prepare).(*prepared).ok
	if d.Signed.Authorization != "" {
		return signedResponse(ok, &d.Signed), nil
	}
	return ok, nil
}

// requestHeaders finds the token and the host. Envoy sends header names in
// lower case; other gRPC clients may not, so a missing lower-case key falls
// back to a case-insensitive scan (no allocation either way).
func requestHeaders(h *authv3.AttributeContext_HttpRequest) (authorization, host string) {
	if h == nil {
		return "", ""
	}
	host = h.GetHost()
	if hs := h.GetHeaders(); len(hs) > 0 {
		authorization = header(hs, headerAuthorization)
		if host == "" {
			host = header(hs, ":authority")
		}
		return authorization, host
	}
	// Envoy with encode_raw_headers sends a HeaderMap instead.
	for _, kv := range h.GetHeaderMap().GetHeaders() {
		switch k := kv.GetKey(); {
		case strings.EqualFold(k, headerAuthorization):
			authorization = headerValue(kv)
		case strings.EqualFold(k, ":authority"):
			if host == "" {
				host = headerValue(kv)
			}
		}
	}
	return authorization, host
}

// headerValue is a HeaderMap entry's value: raw_value, which Envoy sends
// with encode_raw_headers, else value.
func headerValue(kv *corev3.HeaderValue) string {
	if v := kv.GetRawValue(); len(v) > 0 {
		return string(v)
	}
	return kv.GetValue()
}

// setsAuthorization reports whether e's injection sets authorization (its
// header, one of Shapes.Headers, or the signature); otherwise the
// workload's own is removed, so its token never reaches the upstream.
func setsAuthorization(e *cache.Entry) bool {
	if e.Header == headerAuthorization {
		return true
	}
	sh := e.Shapes
	if sh == nil {
		return false
	}
	return sh.Sign != nil || slices.ContainsFunc(sh.Headers, func(f cache.Field) bool { return f.Name == headerAuthorization })
}

// header returns the value of the header named name (lower case) in any case.
func header(hs map[string]string, name string) string {
	if v, ok := hs[name]; ok {
		return v
	}
	for k, v := range hs {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// prepared is what every answer of a cache entry is built from, once (the
// entry's memo): the gRPC allow answer and, when the injection signs, the
// signer of its credential alone.
type prepared struct {
	ok     *authv3.CheckResponse
	signer *v4.Signer
}

// prepare builds e's prepared answers (Entry.Memo's build).
func prepare(e *cache.Entry) any {
	p := &prepared{ok: okResponse(e)}
	if sh := e.Shapes; sh != nil && sh.Sign != nil {
		p.signer = newSigner(sh.Sign)
	}
	return p
}

// okResponse is the allow answer for e: its headers set overwriting (the
// injection's first, then Shapes.Headers), the workload's authorization
// removed unless one of them (or signing) sets it, the query parameters,
// and the dynamic metadata: namespace, serviceaccount, route and the
// injection's metadata keys.
func okResponse(e *cache.Entry) *authv3.CheckResponse {
	ok := &authv3.OkHttpResponse{}
	add := func(name, value string) {
		ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: name, Value: value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	if e.Header != "" {
		add(e.Header, e.Value)
	}
	md := map[string]any{"namespace": e.Identity.Namespace, "serviceaccount": e.Identity.ServiceAccount, "route": e.Route}
	if sh := e.Shapes; sh != nil {
		for _, h := range sh.Headers {
			add(h.Name, h.Value)
		}
		for _, q := range sh.Query {
			ok.QueryParametersToSet = append(ok.QueryParametersToSet, &corev3.QueryParameter{Key: q.Name, Value: q.Value})
		}
		for _, m := range sh.Metadata {
			md[m.Name] = m.Value
		}
		if k := sh.Sign; k != nil && k.SessionToken == "" {
			// The workload's own token must not ride on a signed request.
			ok.HeadersToRemove = append(ok.HeadersToRemove, headerAmzSecurityToken)
		}
	}
	if !setsAuthorization(e) {
		// The workload's token must never reach the upstream.
		ok.HeadersToRemove = append(ok.HeadersToRemove, headerAuthorization)
	}
	st, _ := structpb.NewStruct(md)
	return &authv3.CheckResponse{
		Status:          &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse:    &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: st,
	}
}

// signedResponse is base with s's headers added: one request's answer.
// base is shared and never written.
func signedResponse(base *authv3.CheckResponse, s *Signed) *authv3.CheckResponse {
	b := base.GetOkResponse()
	hs := make([]*corev3.HeaderValueOption, len(b.GetHeaders()), len(b.GetHeaders())+4)
	copy(hs, b.GetHeaders())
	vals := [...]struct{ k, v string }{{headerAuthorization, s.Authorization}, {headerAmzDate, s.Date},
		{headerAmzContentSHA256, s.ContentSHA256}, {headerAmzSecurityToken, s.SecurityToken}}
	for _, kv := range vals {
		if kv.v != "" {
			hs = append(hs, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: kv.k, Value: kv.v},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
	}
	return &authv3.CheckResponse{
		Status: base.GetStatus(),
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: hs, HeadersToRemove: b.GetHeadersToRemove(), QueryParametersToSet: b.GetQueryParametersToSet(),
		}},
		DynamicMetadata: base.GetDynamicMetadata(),
	}
}

func deniedResponse(r authz.Reason) *authv3.CheckResponse {
	code := codes.PermissionDenied
	switch r.Status() {
	case 401:
		code = codes.Unauthenticated
	case 503, 500:
		code = codes.Unavailable
	}
	headers := []*corev3.HeaderValueOption{{
		Header:       &corev3.HeaderValue{Key: HeaderReason, Value: string(r)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}}
	if r.Status() == 401 {
		headers = append(headers, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: HeaderWWWAuthenticate, Value: "Bearer"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code), Message: string(r)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(r.Status())},
			Headers: headers,
			Body:    strconv.Itoa(r.Status()) + " " + string(r) + "\n",
		}},
	}
}
