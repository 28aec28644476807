package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/credinject/credinject/internal/testenv"
)

// Behind-the-gateway targets: a workload's HTTP request goes through a real
// Envoy (deploy/envoy, as documented) to an echo upstream, which reports the
// authorization it received; the answer is checked for the caller's own key.
const (
	// GatewayNone: Envoy with no ext_authz filter (the gateway's own cost).
	GatewayNone = "envoy"
	// GatewayNoop: Envoy with gRPC ext_authz to the noop server, the least
	// any authorizer can cost behind Envoy.
	GatewayNoop = "envoy+noop"
	// GatewayGRPC: Envoy with gRPC ext_authz to credinject.
	GatewayGRPC = "envoy+credinject-grpc"
	// GatewayHTTP: Envoy with HTTP ext_authz (/check) to credinject.
	GatewayHTTP = "envoy+credinject-http"
	// GatewayReference: Envoy with gRPC ext_authz to the reference flow.
	GatewayReference = "envoy+reference"
)

// GatewayTargets are the behind-Envoy targets, in the order they run.
var GatewayTargets = []string{GatewayNone, GatewayNoop, GatewayGRPC, GatewayHTTP, GatewayReference}

// Headers the echo upstream answers with: what it received.
const (
	echoAuthorization = "X-Echo-Authorization"
	echoCount         = "X-Echo-Authorization-Count"
)

// requestBody is the workload's request body (the Check requests say 128
// bytes, so the gateway load says the same).
var requestBody = []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello from the credinject benchmark"}]}` + strings.Repeat(" ", 26))

// Echo is the upstream behind the gateway: it reads the request and answers
// 200 with the authorization header(s) it received, so the client can check
// that its own key (and only that) went upstream.
type Echo struct {
	Addr string
	srv  *http.Server
	done chan error
}

// StartEcho serves the echo upstream on a free loopback port.
func StartEcho() (*Echo, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: echo: %w", err)
	}
	e := &Echo{Addr: ln.Addr().String(), done: make(chan error, 1)}
	e.srv = &http.Server{Handler: http.HandlerFunc(echo), ReadHeaderTimeout: 10 * time.Second}
	go func() { e.done <- e.srv.Serve(ln) }()
	return e, nil
}

func echo(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	vs := r.Header.Values("Authorization")
	h := w.Header()
	h[echoCount] = []string{strconv.Itoa(len(vs))}
	if len(vs) > 0 {
		h[echoAuthorization] = []string{vs[0]}
	}
	h["Content-Length"] = []string{"3"}
	_, _ = io.WriteString(w, "ok\n")
}

// Stop stops the echo upstream.
func (e *Echo) Stop() error {
	_ = e.srv.Close()
	if err := <-e.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Gateway sends a workload's request through a gateway and checks, from the
// echo upstream's answer, what reached the upstream.
type Gateway struct {
	url    string
	client *http.Client
}

// NewGateway sends to the gateway at base (http://host:port) over at most
// conns kept-alive connections, as a client's connection pool does: in the
// open loop a request that finds none free waits for one, and its latency
// still runs from its intended send time.
func NewGateway(base string, conns int) *Gateway {
	tr := &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, IdleConnTimeout: time.Minute,
		DisableCompression: true, ForceAttemptHTTP2: false,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}
	return &Gateway{url: base + Path, client: &http.Client{Transport: tr}}
}

// Do sends id's request (POST api.openai.com/v1/chat/completions with its
// service-account token) and classifies the answer like Classify: "" when
// the upstream received exactly one authorization, equal to want.
func (g *Gateway) Do(ctx context.Context, id *Identity, want string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, Method, g.url, bytes.NewReader(requestBody))
	if err != nil {
		return "", err
	}
	req.Host = Host
	req.Header["Authorization"] = []string{"Bearer " + id.Token}
	req.Header["Content-Type"] = []string{"application/json"}
	req.Header["User-Agent"] = []string{"python-httpx/0.27.0"}
	resp, err := g.client.Do(req)
	if err != nil {
		return "http/error", err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		reason := "-"
		for _, name := range reasonHeaders {
			if v := resp.Header.Get(name); v != "" {
				reason = v
				break
			}
		}
		return strconv.Itoa(resp.StatusCode) + "/" + reason, nil
	}
	switch n := resp.Header.Get(echoCount); {
	case n == "":
		return "no_echo", nil
	case n == "0":
		return ErrMissingKey, nil
	case n != "1" || resp.Header.Get(echoAuthorization) != want:
		return ErrWrongKey, nil
	}
	return "", nil
}

// Close closes idle connections.
func (g *Gateway) Close() { g.client.CloseIdleConnections() }

// EnvoyFor renders deploy/envoy's bootstrap for a gateway target: the gRPC
// file for none/noop/credinject-grpc/reference (none without its ext_authz
// filter), the HTTP file for credinject-http. authz is the authorizer's
// host:port (unused for none); timeout replaces the files' 1 s ext_authz
// timeout (the reference's answers take seconds under load).
func EnvoyFor(target string, listenPort int, authz, upstream string, timeout time.Duration) (string, error) {
	file := "deploy/envoy/envoy-grpc.yaml"
	if target == GatewayHTTP {
		file = "deploy/envoy/envoy-http.yaml"
	}
	if target == GatewayNone {
		authz = "127.0.0.1:9" // a cluster nothing uses
	}
	ah, ap, err := net.SplitHostPort(authz)
	if err != nil {
		return "", err
	}
	uh, up, err := net.SplitHostPort(upstream)
	if err != nil {
		return "", err
	}
	conf, err := testenv.Render(file, map[string]string{
		"LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": strconv.Itoa(listenPort), "ADMIN_PORT": "0",
		"CREDINJECT_ADDRESS": ah, "CREDINJECT_PORT": ap, "UPSTREAM_ADDRESS": uh, "UPSTREAM_PORT": up,
	})
	if err != nil {
		return "", err
	}
	// The ext_authz timeout: the one "timeout: 1s" line of the filter
	// (grpc_service or http_service.server_uri), not connect_timeout.
	n := 0
	lines := strings.Split(conf, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) == "timeout: 1s" {
			lines[i] = strings.Replace(l, "1s", timeout.String(), 1)
			n++
		}
	}
	if n != 1 {
		return "", fmt.Errorf("bench: %s: want one ext_authz \"timeout: 1s\" line, found %d", file, n)
	}
	conf = strings.Join(lines, "\n")
	if target == GatewayNone {
		i := strings.Index(conf, "          - name: envoy.filters.http.ext_authz")
		j := strings.Index(conf, "          - name: envoy.filters.http.router")
		if i < 0 || j < i {
			return "", fmt.Errorf("bench: %s: cannot find the ext_authz filter to remove", file)
		}
		conf = conf[:i] + conf[j:]
	}
	return conf, nil
}

// startGateway starts the Envoy of a gateway target in dir.
func startGateway(ctx context.Context, dir, target, authz, upstream string, timeout time.Duration) (*testenv.Envoy, string, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return nil, "", err
	}
	conf, err := EnvoyFor(target, port, authz, upstream, timeout)
	if err != nil {
		return nil, "", err
	}
	e, err := testenv.StartEnvoy(ctx, filepath.Join(dir, strings.NewReplacer("+", "-").Replace(target)), conf)
	if err != nil {
		return nil, "", err
	}
	return e, fmt.Sprintf("http://127.0.0.1:%d", port), nil
}
