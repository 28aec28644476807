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
func (a *App) listen() error {
	cfg := a.cfg
	gopts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(1 << 20),
	}
	if a.tls != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(a.tls.ServerConfig("h2"))))
	}
	a.grpcSrv = grpc.NewServer(gopts...)
	authv3.RegisterAuthorizationServer(a.grpcSrv, checker.NewGRPC(a.checker))
	a.health = health.NewServer()
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	a.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(a.grpcSrv, a.health)
	reflection.Register(a.grpcSrv)

	// /check and /check/<any path> go to the checker before the mux,
	// which would clean (and redirect) the appended path. /check answers a
	// TLS client whose certificate names none of listen.tls.clientNames
	// with a 403 (gRPC fails its handshake), and believes forwarded host
	// headers only from listen.trustedProxies and named clients, judged
	// once per connection (ConnContext).
	proxies, err := cfg.Listen.TrustedProxyPrefixes()
	if err != nil {
		return err
	}
	opts := checker.HTTPOptions{TrustedProxies: proxies}
	if a.tls != nil {
		opts.Clients = a.tls
	}
	check := checker.NewHTTPWith(a.checker, opts)
	mux := http.NewServeMux()
	a.probes(mux)
	a.httpSrv = &http.Server{Handler: check.Mount(mux), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute, ConnContext: check.ConnContext}

	if a.grpcLn, err = net.Listen("tcp", cfg.Listen.GRPC); err != nil {
		return fmt.Errorf("listen.grpc: %w", err)
	}
	if a.httpLn, err = net.Listen("tcp", cfg.Listen.HTTP); err != nil {
		return fmt.Errorf("listen.http: %w", err)
	}
	if a.tls != nil {
		a.httpLn = tls.NewListener(a.httpLn, a.tls.ServerConfigNamesLater("h2", "http/1.1"))
	}
	if cfg.Listen.Health != "" {
		hmux := http.NewServeMux()
		a.probes(hmux)
		a.healthSrv = &http.Server{Handler: hmux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		if a.healthLn, err = net.Listen("tcp", cfg.Listen.Health); err != nil {
			return fmt.Errorf("listen.health: %w", err)
		}
	}
	if cfg.Debug.Listen != "" {
		a.debugSrv = &http.Server{Handler: debugMux(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		if a.debugLn, err = net.Listen("tcp", cfg.Debug.Listen); err != nil {
			return fmt.Errorf("debug.listen: %w", err)
		}
	}
	return nil
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
func (a *App) loadTLS() error {
	t := a.cfg.Listen.TLS
	if !t.Enabled() {
		return nil
	}
	var err error
	a.tls, err = tlsconfig.New(tlsconfig.Files{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile},
		tlsconfig.Options{Key: "listen.tls", Log: a.log.With("component", "tls"), Registerer: a.reg, ClientNames: t.ClientNames})
	return err
}

// GRPCAddr and HTTPAddr are the bound addresses (useful with port 0).
func (a *App) GRPCAddr() string { return a.grpcLn.Addr().String() }

// HTTPAddr is the bound HTTP address.
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

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

// Run serves until ctx ends, then shuts down gracefully.
func (a *App) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	pc, err := panics.NewCounter(a.reg)
	if err != nil {
		return err
	}
	goSafe := func(name string, f func() error) {
		g.Go(func() error { return panics.Guard(pc, name, f) })
	}
	goSafe("grpc", func() error {
		if err := a.grpcSrv.Serve(a.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc: %w", err)
		}
		return nil
	})
	goSafe("http", func() error {
		if err := a.httpSrv.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	if a.healthSrv != nil {
		goSafe("health", func() error {
			if err := a.healthSrv.Serve(a.healthLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("health: %w", err)
			}
			return nil
		})
	}
	if a.debugSrv != nil {
		goSafe("debug", func() error {
			if err := a.debugSrv.Serve(a.debugLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("debug: %w", err)
			}
			return nil
		})
	}
	if a.sas != nil {
		goSafe("informer", func() error { a.sas.Run(gctx); return nil })
	}
	if a.bound != nil {
		goSafe("bound objects", func() error { a.bound.Run(gctx); return nil })
	}
	if a.prefetch != nil {
		goSafe("prefetch", func() error { a.prefetch.Run(gctx); return nil })
	}
	if a.jwks != nil {
		goSafe("jwks", func() error { a.jwks.Run(gctx); return nil })
	}
	if a.sub != nil {
		// The subscriber itself asks the watcher to re-read everything
		// when the connection drops and when it comes back.
		goSafe("events", func() error { return a.sub.Run(gctx) })
	}
	if a.audit != nil {
		goSafe("audit", func() error { a.audit.Run(gctx); return nil })
	}
	goSafe("readiness", func() error { a.waitReady(gctx); return nil })
	goSafe("vault-probe", func() error { a.probeVault(gctx); return nil })
	goSafe("shutdown", func() error {
		<-gctx.Done()
		a.ready.Store(false)
		a.health.Shutdown()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = a.httpSrv.Shutdown(sctx)
		if a.healthSrv != nil {
			_ = a.healthSrv.Shutdown(sctx)
		}
		if a.debugSrv != nil {
			// A running CPU profile or trace would hold a graceful
			// shutdown for its whole duration.
			_ = a.debugSrv.Close()
		}
		stopped := make(chan struct{})
		go func() { a.grpcSrv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-sctx.Done():
			a.grpcSrv.Stop()
		}
		return nil
	})
	a.log.Info("credinject serving", "grpc", a.GRPCAddr(), "http", a.HTTPAddr(), "health", a.HealthAddr(), "debug", a.DebugAddr(), "tracing", a.tracing != nil,
		"tls", a.tls != nil, "mutualTLS", a.tls != nil && a.tls.MutualTLS(),
		"clientNames", len(a.cfg.Listen.TLS.ClientNames), "trustedProxies", a.cfg.Listen.TrustedProxies, "tokenValidation", a.cfg.Kubernetes.TokenValidation, "tokens", a.offline)
	err = g.Wait()
	if a.audit != nil {
		// The servers have stopped: the last interval is complete.
		a.audit.Close()
	}
	a.close()
	return err
}

func (a *App) waitReady(ctx context.Context) {
	// Wall-clock polling of in-process state: the injected clock is for the
	// parts' logic, and tests freeze it.
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok := (a.sas == nil || a.sas.HasSynced()) && (a.bound == nil || a.bound.HasSynced()) && (a.prefetch == nil || a.prefetch.Ready())
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
