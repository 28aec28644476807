package checker

import (
	"context"
	"net/netip"
	"strconv"
	"strings"

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
	r := Request{Authorization: authorization, Host: host}
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
	// Responses are built once per cache entry and shared read-only.
	return d.Entry.Memo(okResponse).(*authv3.CheckResponse), nil
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
			authorization = string(kv.GetRawValue())
			if authorization == "" {
				authorization = kv.GetValue()
			}
		case strings.EqualFold(k, ":authority"):
			if host == "" {
				host = string(kv.GetRawValue())
				if host == "" {
					host = kv.GetValue()
				}
			}
		}
	}
	return authorization, host
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

func okResponse(e *cache.Entry) any {
	ok := &authv3.OkHttpResponse{
		Headers: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: e.Header, Value: e.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}
	if e.Header != headerAuthorization {
		// The workload's token must never reach the upstream.
		ok.HeadersToRemove = []string{headerAuthorization}
	}
	md, _ := structpb.NewStruct(map[string]any{"namespace": e.Identity.Namespace, "serviceaccount": e.Identity.ServiceAccount, "route": e.Route})
	return &authv3.CheckResponse{
		Status:          &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse:    &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: md,
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
