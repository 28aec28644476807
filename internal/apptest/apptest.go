// Package apptest runs a whole credinject (internal/app) in-process against
// the test bed, with a real gRPC client and the HTTP endpoint, for tests and
// benchmarks. The product binary never imports it.
package apptest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/poll"
)

// Running is a started credinject.
type Running struct {
	App     *app.App
	Config  config.Config
	Client  authv3.AuthorizationClient
	Conn    *grpc.ClientConn
	HTTPURL string
	// HTTPClient calls HTTPURL (it carries the client TLS configuration
	// when the listeners serve TLS).
	HTTPClient *http.Client
	Registry   *prometheus.Registry
}

// Config is the bed's default configuration: ports picked by the kernel,
// tokenreview mode, Vault and NATS of the bed.
func Config(env *testenv.Env) config.Config {
	c := config.Default()
	c.Listen = config.Listen{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0"}
	if env.Vault != nil {
		c.Vault.Address = env.Vault.Addr
	}
	if env.NATS != nil {
		c.Events.NatsURL = env.NATS.URL
	}
	return c
}

// Start runs credinject with cfg until the test ends and waits until it is
// ready.
func Start(tb testing.TB, env *testenv.Env, cfg config.Config) *Running {
	tb.Helper()
	return StartWith(tb, env, cfg, nil)
}

// Run starts credinject with cfg under ctx and waits until it is ready; done
// receives Run's result once ctx is cancelled. The caller owns the lifetime
// (for shutdown tests).
func Run(tb testing.TB, ctx context.Context, env *testenv.Env, cfg config.Config) (*Running, <-chan error) {
	tb.Helper()
	return start(tb, ctx, env, cfg, nil, nil)
}

// RunWith is Run with a hook to adjust the app's options (a logger the
// test reads).
func RunWith(tb testing.TB, ctx context.Context, env *testenv.Env, cfg config.Config, adjust func(*app.Options)) (*Running, <-chan error) {
	tb.Helper()
	return start(tb, ctx, env, cfg, adjust, nil)
}

// StartWith is Start with a hook to adjust the app's options (a fake clock).
func StartWith(tb testing.TB, env *testenv.Env, cfg config.Config, adjust func(*app.Options)) *Running {
	tb.Helper()
	return startUntilCleanup(tb, env, cfg, adjust, nil)
}

func startUntilCleanup(tb testing.TB, env *testenv.Env, cfg config.Config, adjust func(*app.Options), client *tls.Config) *Running {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, done := start(tb, ctx, env, cfg, adjust, client)
	tb.Cleanup(func() {
		r.Conn.Close()
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			tb.Errorf("app.Run: %v", err)
		}
	})
	return r
}

// StartTLS is Start for listeners that serve TLS (listen.tls): the gRPC
// connection and HTTPClient use client (its RootCAs, and its certificate for
// mutual TLS).
func StartTLS(tb testing.TB, env *testenv.Env, cfg config.Config, client *tls.Config) *Running {
	tb.Helper()
	return startUntilCleanup(tb, env, cfg, nil, client)
}

func start(tb testing.TB, ctx context.Context, env *testenv.Env, cfg config.Config, adjust func(*app.Options), client *tls.Config) (*Running, <-chan error) {
	tb.Helper()
	if err := cfg.Validate(); err != nil {
		tb.Fatalf("config: %v", err)
	}
	// Logs are off unless asked for: a debug handler would format every
	// decision even when discarded.
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("CREDINJECT_TEST_LOG") != "" {
		log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	reg := prometheus.NewRegistry()
	opts := app.Options{Config: cfg, Log: log, Registry: reg}
	if env.Kube != nil {
		opts.RestConfig = env.Kube.RestConfig()
	}
	if adjust != nil {
		adjust(&opts)
	}
	a, err := app.New(ctx, opts)
	if err != nil {
		tb.Fatalf("app: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	creds, scheme, hc := insecure.NewCredentials(), "http", http.DefaultClient
	if client != nil {
		creds, scheme = credentials.NewTLS(client), "https"
		hc = &http.Client{Transport: &http.Transport{TLSClientConfig: client.Clone(), ForceAttemptHTTP2: true}}
		tb.Cleanup(hc.CloseIdleConnections)
	}
	conn, err := grpc.NewClient(a.GRPCAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		tb.Fatal(err)
	}
	poll.True(tb, 60*time.Second, "credinject to become ready", func() bool {
		select {
		case err := <-done:
			tb.Fatalf("app stopped: %v", err)
		default:
		}
		return a.Ready()
	})
	return &Running{
		App: a, Config: cfg, Client: authv3.NewAuthorizationClient(conn), Conn: conn,
		HTTPURL: scheme + "://" + a.HTTPAddr(), HTTPClient: hc, Registry: reg,
	}, done
}

// Request builds a CheckRequest like Envoy's.
func Request(authz, host string) *authv3.CheckRequest {
	h := map[string]string{":authority": host, ":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "test"}
	if authz != "" {
		h["authorization"] = authz
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Host: host, Method: "POST", Path: "/v1/chat/completions", Headers: h, Protocol: "HTTP/1.1"},
	}}}
}

// Outcome is a response in one line: "allow <header>=<value>" or
// "deny <status> <reason>".
func Outcome(resp *authv3.CheckResponse) string {
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == 0 {
		s := "allow"
		for _, h := range ok.GetHeaders() {
			s += " " + h.GetHeader().GetKey() + "=" + h.GetHeader().GetValue()
		}
		return s
	}
	reason := ""
	for _, h := range resp.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == "x-credinject-reason" {
			reason = h.GetHeader().GetValue()
		}
	}
	return fmt.Sprintf("deny %d %s", resp.GetDeniedResponse().GetStatus().GetCode(), reason)
}

// Check calls ext_authz over gRPC and returns the outcome.
func (r *Running) Check(tb testing.TB, token, host string) string {
	tb.Helper()
	authz := ""
	if token != "" {
		authz = "Bearer " + token
	}
	return r.CheckHeader(tb, authz, host)
}

// CheckHeader is Check with a raw Authorization value.
func (r *Running) CheckHeader(tb testing.TB, authz, host string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := r.Client.Check(ctx, Request(authz, host))
	if err != nil {
		tb.Fatalf("Check: %v", err)
	}
	return Outcome(resp)
}

// HTTPCheck calls /check for host (as the request's Host, which decides
// the route for a caller that is not a trusted proxy) and returns
// "allow <Header>=<value>" or "deny <status> <reason>".
func (r *Running) HTTPCheck(tb testing.TB, authz, host, header string) string {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.HTTPURL+"/check", nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	req.Host = host
	resp, err := r.HTTPClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return "allow " + strings.ToLower(header) + "=" + resp.Header.Get(header)
	}
	out := fmt.Sprintf("deny %d %s", resp.StatusCode, resp.Header.Get("X-Credinject-Reason"))
	if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != "Bearer" {
		out += " (no WWW-Authenticate)"
	}
	return out
}

// Counter sums a counter's samples whose labels include all of want.
func (r *Running) Counter(tb testing.TB, name string, want map[string]string) float64 {
	tb.Helper()
	mfs, err := r.Registry.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, want) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func matches(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// Eventually polls cond until it holds or the timeout passes (poll.True).
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	poll.True(tb, timeout, what, cond)
}
