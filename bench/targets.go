package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// NoopValue is what the noop target injects for every request.
const NoopValue = "Bearer sk-noop-fixed-key"

// Noop is a bare ext_authz server: it allows every request and injects a
// fixed header, with a response built once. It is the ceiling of a gRPC
// Check on the machine at hand.
type Noop struct {
	authv3.UnimplementedAuthorizationServer
	resp *authv3.CheckResponse
}

// NewNoop builds the noop server.
func NewNoop() *Noop {
	return &Noop{resp: &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "authorization", Value: NoopValue},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
	}}
}

var _ authv3.AuthorizationServer = (*Noop)(nil)

// Check allows.
func (n *Noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return n.resp, nil
}

// Server is an ext_authz gRPC server listening on loopback.
type Server struct {
	Addr string
	srv  *grpc.Server
	done chan error
}

// Serve serves impl on a free loopback port until Stop.
func Serve(impl authv3.AuthorizationServer) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: listen: %w", err)
	}
	s := &Server{Addr: ln.Addr().String(), srv: grpc.NewServer(), done: make(chan error, 1)}
	authv3.RegisterAuthorizationServer(s.srv, impl)
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Stop stops the server and waits for it.
func (s *Server) Stop() error {
	s.srv.Stop()
	if err := <-s.done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Conns is a set of gRPC connections to one server, used round robin, as a
// gateway spreads its ext_authz calls over one HTTP/2 connection per worker
// thread. It implements authv3.AuthorizationClient.
type Conns struct {
	conns   []*grpc.ClientConn
	clients []authv3.AuthorizationClient
	next    atomic.Uint64
}

// Dial opens n connections to addr and starts connecting them.
func Dial(ctx context.Context, addr string, n int) (*Conns, error) {
	c := &Conns{}
	for range max(n, 1) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("bench: dial %s: %w", addr, err)
		}
		c.conns = append(c.conns, cc)
		c.clients = append(c.clients, authv3.NewAuthorizationClient(cc))
		// Each conn is its own HTTP/2 connection; connect it now, not
		// during the first measured request.
		cc.Connect()
	}
	return c, nil
}

var _ authv3.AuthorizationClient = (*Conns)(nil)

// Check sends req on the next connection.
func (c *Conns) Check(ctx context.Context, req *authv3.CheckRequest, opts ...grpc.CallOption) (*authv3.CheckResponse, error) {
	i := c.next.Add(1) % uint64(len(c.clients))
	return c.clients[i].Check(ctx, req, opts...)
}

// Close closes every connection.
func (c *Conns) Close() {
	for _, cc := range c.conns {
		_ = cc.Close()
	}
}
