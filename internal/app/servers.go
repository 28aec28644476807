package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/panics"
	"github.com/credinject/credinject/internal/tlsconfig"
)

// listen builds the gRPC server (ext_authz, health, reflection) and the HTTP
// server (/check, /healthz, /readyz, /metrics) and binds both listeners,
// with TLS (and mTLS) when listen.tls says so, and the plaintext health
// listener when listen.health is set.
//
// Probes: with mutual TLS the kubelet cannot present a client certificate
// (httpGet probes have none, gRPC probes speak no TLS at all) and Prometheus
// would need one too. listen.health is therefore a separate plaintext port
// serving only /healthz, /readyz and /metrics, which carry no credential;
// /check and ext_authz never answer there.
//
// On error, whatever it had bound is closed.
func (a *App) listen() (s servers, err error) {
	cfg := a.cfg
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	gopts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(1 << 20),
	}
	if a.tls != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(a.tls.ServerConfig("h2"))))
	}
	s.grpcSrv = grpc.NewServer(gopts...)
	proxies, err := cfg.Listen.TrustedProxyPrefixes()
	if err != nil {
		return s, err
	}
	// A mesh peer (source.principal) counts only from listen.trustedProxies
	// or, with listen.tls.clientNames, any client (the handshake checked).
	authv3.RegisterAuthorizationServer(s.grpcSrv, checker.NewGRPCWith(a.checker,
		checker.GRPCOptions{TrustedProxies: proxies, NamedClients: a.tls != nil && a.tls.HasClientNames()}))
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	s.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.grpcSrv, s.health)
	reflection.Register(s.grpcSrv)

	// /check and /check/<any path> go to the checker before the mux,
	// which would clean (and redirect) the appended path. /check answers a
	// TLS client whose certificate names none of listen.tls.clientNames
	// with a 403 (gRPC fails its handshake), and believes forwarded host
	// headers only from listen.trustedProxies and named clients, judged
	// once per connection (ConnContext); the mesh peer's header
	// (identity.peer.header) likewise.
	opts := checker.HTTPOptions{TrustedProxies: proxies, PeerHeader: cfg.Identity.Peer.Header}
	if a.tls != nil {
		opts.Clients = a.tls
	}
	check := checker.NewHTTPWith(a.checker, opts)
	mux := http.NewServeMux()
	a.probes(mux)
	s.httpSrv = &http.Server{Handler: check.Mount(mux), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute, ConnContext: check.ConnContext}

	if s.grpcLn, err = net.Listen("tcp", cfg.Listen.GRPC); err != nil {
		return s, fmt.Errorf("listen.grpc: %w", err)
	}
	if cfg.Listen.HTTP == "" {
		s.httpSrv = nil // /check is off: gRPC ext_authz alone
	} else {
		if s.httpLn, err = net.Listen("tcp", cfg.Listen.HTTP); err != nil {
			return s, fmt.Errorf("listen.http: %w", err)
		}
		if a.tls != nil {
			s.httpLn = tls.NewListener(s.httpLn, a.tls.ServerConfigNamesLater("h2", "http/1.1"))
		}
	}
	if cfg.Listen.Health != "" {
		hmux := http.NewServeMux()
		a.probes(hmux)
		s.healthSrv = &http.Server{Handler: hmux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		if s.healthLn, err = net.Listen("tcp", cfg.Listen.Health); err != nil {
			return s, fmt.Errorf("listen.health: %w", err)
		}
	}
	if cfg.Debug.Listen != "" {
		s.debugSrv = &http.Server{Handler: debugMux(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		if s.debugLn, err = net.Listen("tcp", cfg.Debug.Listen); err != nil {
			return s, fmt.Errorf("debug.listen: %w", err)
		}
	}
	return s, nil
}

// servers are the gRPC, HTTP, health and debug servers and their bound
// listeners (health and debug nil when not configured).
type servers struct {
	grpcLn    net.Listener
	httpLn    net.Listener
	grpcSrv   *grpc.Server
	httpSrv   *http.Server
	health    *health.Server
	healthLn  net.Listener
	healthSrv *http.Server
	debugLn   net.Listener
	debugSrv  *http.Server
}

// close closes the listeners bound (Run's servers close them otherwise).
func (s servers) close() {
	for _, ln := range []net.Listener{s.grpcLn, s.httpLn, s.healthLn, s.debugLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// debugMux serves net/http/pprof's handlers under /debug/pprof/, on a mux
// of its own (not http.DefaultServeMux, which the package's init fills), so
// they answer on debug.listen only.
func debugMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// DebugAddr is the bound debug.listen address ("" without it).
func (a *App) DebugAddr() string {
	if a.debugLn == nil {
		return ""
	}
	return a.debugLn.Addr().String()
}

// probes adds /healthz, /readyz and /metrics to mux.
func (a *App) probes(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", a.readyz)
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
}

// loadTLS reads the listeners' certificate files (listen.tls), first thing
// at start: a missing or bad file is reported before anything is dialled.
// Nil without listen.tls.
func (a *App) loadTLS() (*tlsconfig.Reloader, error) {
	t := a.cfg.Listen.TLS
	if !t.Enabled() {
		return nil, nil
	}
	return tlsconfig.New(tlsconfig.Files{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile},
		tlsconfig.Options{Key: "listen.tls", Log: a.log.With("component", "tls"), Registerer: a.reg, ClientNames: t.ClientNames})
}

// GRPCAddr and HTTPAddr are the bound addresses (useful with port 0).
func (a *App) GRPCAddr() string { return a.grpcLn.Addr().String() }

// HTTPAddr is the bound HTTP address ("" with listen.http off).
func (a *App) HTTPAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

// HealthAddr is the bound plaintext health address ("" without
// listen.health).
func (a *App) HealthAddr() string {
	if a.healthLn == nil {
		return ""
	}
	return a.healthLn.Addr().String()
}

// TLS reports whether the gRPC and HTTP listeners serve TLS.
func (a *App) TLS() bool { return a.tls != nil }

// Registry is the metrics registry.
func (a *App) Registry() *prometheus.Registry { return a.reg }

// Ready reports readiness: listeners up, informer synced, first prefetch
// pass done.
func (a *App) Ready() bool { return a.ready.Load() }

func (a *App) readyz(w http.ResponseWriter, _ *http.Request) {
	var b strings.Builder
	ready := a.ready.Load()
	fmt.Fprintf(&b, "ready: %v\n", ready)
	if a.sas != nil {
		fmt.Fprintf(&b, "serviceaccounts: synced=%v\n", a.sas.HasSynced())
	}
	fmt.Fprintf(&b, "tokens: %s\n", a.offline)
	if w := a.vaultTransportWarning(); w != "" {
		fmt.Fprintf(&b, "vault: warning: %s\n", w)
	}
	if a.bound != nil {
		fmt.Fprintf(&b, "bound objects: %s\n", a.bound.Status())
	}
	if a.prefetch != nil {
		done, total, failed := a.prefetch.Progress()
		fmt.Fprintf(&b, "prefetch: done=%v identities=%d progress=%d/%d failed=%d\n", a.prefetch.Ready(), a.watcher.Len(), done, total, failed)
	}
	if a.sub != nil {
		fmt.Fprintf(&b, "events: %s", a.sub.Status())
		if err := a.sub.LastError(); err != nil {
			fmt.Fprintf(&b, " (last error: %v)", err)
		}
		b.WriteString("\n")
	} else {
		fmt.Fprintf(&b, "events: disabled\n")
	}
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write([]byte(b.String()))
}

// Run serves until ctx ends, then shuts down gracefully: it runs every
// component (runComponents) and then closes what New built.
func (a *App) Run(ctx context.Context) error {
	pc, err := panics.NewCounter(a.reg)
	if err != nil {
		return err
	}
	a.log.Info("credinject serving", "grpc", a.GRPCAddr(), "http", a.HTTPAddr(), "health", a.HealthAddr(), "debug", a.DebugAddr(), "tracing", a.tracing != nil,
		"tls", a.tls != nil, "mutualTLS", a.tls != nil && a.tls.MutualTLS(),
		"clientNames", len(a.cfg.Listen.TLS.ClientNames), "trustedProxies", a.cfg.Listen.TrustedProxies, "tokenValidation", a.cfg.Kubernetes.TokenValidation, "tokens", a.offline)
	err = runComponents(ctx, pc, a.components(), shutdownGrace)
	if a.audit != nil {
		// The servers have stopped: the last interval is complete.
		a.audit.Close()
	}
	a.close()
	return err
}

// shutdownGrace bounds the graceful stop of every server together; past
// it, gRPC streams are cut.
const shutdownGrace = 10 * time.Second

// component is one server or loop Run runs, under a fixed name (a metric
// label of credinject_panics_total and the prefix of its errors).
type component struct {
	name string
	// run blocks until ctx ends (a loop) or stop is called (a server).
	run func(ctx context.Context) error
	// stop, when set, makes run return; it is called once ctx ends, in
	// the list's order, with the shutdown deadline.
	stop func(ctx context.Context)
}

// components lists what Run runs: readiness first (it stops first, so
// probes fail before the servers drain), then the servers, then the loops.
func (a *App) components() []component {
	cs := []component{{name: "readiness", run: func(ctx context.Context) error { a.waitReady(ctx); return nil }, stop: func(context.Context) {
		a.ready.Store(false)
		a.health.Shutdown()
	}}}
	if a.httpSrv != nil {
		cs = append(cs, httpComponent("http", a.httpSrv, a.httpLn))
	}
	if a.healthSrv != nil {
		cs = append(cs, httpComponent("health", a.healthSrv, a.healthLn))
	}
	if a.debugSrv != nil {
		c := httpComponent("debug", a.debugSrv, a.debugLn)
		// A running CPU profile or trace would hold a graceful shutdown
		// for its whole duration.
		c.stop = func(context.Context) { _ = a.debugSrv.Close() }
		cs = append(cs, c)
	}
	cs = append(cs, component{name: "grpc",
		run: func(context.Context) error {
			if err := a.grpcSrv.Serve(a.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("grpc: %w", err)
			}
			return nil
		},
		stop: func(ctx context.Context) {
			stopped := make(chan struct{})
			go func() { a.grpcSrv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-ctx.Done():
				a.grpcSrv.Stop()
			}
		},
	})
	loop := func(name string, run func(context.Context)) component {
		return component{name: name, run: func(ctx context.Context) error { run(ctx); return nil }}
	}
	if a.sas != nil {
		cs = append(cs, loop("informer", a.sas.Run))
	}
	if a.bound != nil {
		cs = append(cs, loop("bound-objects", a.bound.Run))
	}
	if a.prefetch != nil {
		cs = append(cs, loop("prefetch", a.prefetch.Run))
	}
	if a.jwks != nil {
		cs = append(cs, loop("jwks", a.jwks.Run))
	}
	if a.sub != nil {
		// The subscriber itself asks the watcher to re-read everything
		// when the connection drops and when it comes back.
		cs = append(cs, component{name: "events", run: a.sub.Run})
	}
	if a.audit != nil {
		cs = append(cs, loop("audit", a.audit.Run))
	}
	// Policies and config reloads: the route table changes here.
	cs = append(cs, component{name: "routing", run: a.routing.run})
	return append(cs, loop("vault-probe", a.probeVault))
}

// httpComponent serves srv on ln until it is shut down.
func httpComponent(name string, srv *http.Server, ln net.Listener) component {
	return component{name: name,
		run: func(context.Context) error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		},
		stop: func(ctx context.Context) { _ = srv.Shutdown(ctx) },
	}
}

// runComponents runs each component in its own goroutine, a panic turned
// into its error (panics.Guard). When ctx ends or one returns an error, it
// calls every stop in order within grace and waits for all; the result is
// the first error.
func runComponents(ctx context.Context, pc *panics.Counter, cs []component, grace time.Duration) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range cs {
		g.Go(func() error { return panics.Guard(pc, c.name, func() error { return c.run(gctx) }) })
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
		defer cancel()
		var errs []error
		for _, c := range cs {
			if c.stop != nil {
				errs = append(errs, panics.Guard(pc, c.name, func() error { c.stop(sctx); return nil }))
			}
		}
		return errors.Join(errs...)
	})
	return g.Wait()
}

func (a *App) waitReady(ctx context.Context) {
	// Wall-clock polling of in-process state: the injected clock is for the
	// parts' logic, and tests freeze it.
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok := (a.sas == nil || a.sas.HasSynced()) && (a.bound == nil || a.bound.HasSynced()) && (a.prefetch == nil || a.prefetch.Ready()) &&
			(a.routing.controller == nil || a.routing.controller.Applied())
		if ok {
			a.ready.Store(true)
			a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			a.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
			a.log.Info("ready")
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
