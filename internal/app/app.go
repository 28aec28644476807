// Package app wires credinject's parts from a configuration: the Kubernetes
// client and ServiceAccount informer, the token validator, the caches, the
// watcher, the NATS subscriber and the gRPC and HTTP servers. cmd/credinject
// calls it; so do the end-to-end tests and the benchmark harness, which run
// the real server in-process.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	jose "github.com/go-jose/go-jose/v4"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/watcher"
)

// Options are what the configuration file does not say.
type Options struct {
	Config config.Config
	Log    *slog.Logger
	// Registry receives the metrics (nil: a new one).
	Registry *prometheus.Registry
	// RestConfig overrides kubernetes.kubeconfig / in-cluster.
	RestConfig *rest.Config
	// JWKS, in jwks mode, is a fixed key set (credinject dev).
	JWKS *jose.JSONWebKeySet
	// NoKubernetes runs without an API server (jwks mode with fixed keys
	// only): no informer, no prefetch, no revocation by ServiceAccount.
	NoKubernetes bool
	Clock        clock.WithTicker
}

// App is a wired, listening credinject.
type App struct {
	opts     Options
	cfg      config.Config
	log      *slog.Logger
	reg      *prometheus.Registry
	grpcLn   net.Listener
	httpLn   net.Listener
	grpcSrv  *grpc.Server
	httpSrv  *http.Server
	health   *health.Server
	checker  *checker.Checker
	creds    *cache.Credentials
	watcher  *watcher.Watcher
	sas      *watcher.ServiceAccounts
	prefetch *watcher.Prefetcher
	jwks     *checker.JWKSValidator
	sub      *events.Subscriber
	vault    *vaultapi.Client
	ready    atomic.Bool
}

// New builds every part and binds the listeners; Run starts them.
func New(ctx context.Context, opts Options) (*App, error) {
	cfg := opts.Config
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
		opts.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	a := &App{opts: opts, cfg: cfg, log: opts.Log, reg: opts.Registry}
	ok := false
	defer func() {
		if !ok {
			a.close()
		}
	}()

	var kube kubernetes.Interface
	var rc *rest.Config
	if !opts.NoKubernetes {
		var err error
		rc, err = restConfig(opts)
		if err != nil {
			return nil, err
		}
		rc.QPS, rc.Burst = cfg.Kubernetes.QPS, cfg.Kubernetes.Burst
		if kube, err = kubernetes.NewForConfig(rc); err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		a.sas = watcher.NewServiceAccounts(kube, 0)
	}

	metrics := checker.NewMetrics(a.reg)
	validator, err := a.validator(ctx, kube, rc, metrics)
	if err != nil {
		return nil, err
	}

	a.creds, err = cache.NewCredentials(cache.CredentialsConfig{Capacity: cfg.Cache.Capacity})
	if err != nil {
		return nil, err
	}
	a.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "credinject_cache_entries", Help: "Entries in the credential cache.",
	}, func() float64 { return float64(a.creds.Len()) }))

	vcfg := vaultapi.DefaultConfig()
	vcfg.Address = cfg.Vault.Address
	vcfg.MaxRetries = 0
	vcfg.Timeout = 10 * time.Second
	if t, ok := vcfg.HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConnsPerHost = cfg.Vault.Concurrency
	}
	vc, err := vaultapi.NewClient(vcfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	vc.ClearToken() // never a token of its own, whatever VAULT_TOKEN says
	a.vault = vc

	var minter watcher.TokenMinter
	if kube != nil && len(cfg.Prefetch.Namespaces) > 0 {
		minter = watcher.KubeTokens{Client: kube, Audiences: cfg.Kubernetes.Audiences, TTL: time.Hour}
	}
	a.watcher, err = watcher.New(watcher.Config{
		Vault: vc, AuthMount: cfg.Vault.AuthMount, Role: cfg.Vault.Role, KVMount: cfg.Vault.KVMount,
		Routes:  watcherRoutes(cfg),
		Refresh: cfg.Prefetch.Refresh, StaleGrace: cfg.Prefetch.StaleGrace, DeniedTTL: cfg.Cache.DeniedTTL,
		Concurrency: cfg.Vault.Concurrency, Store: a.creds, Minter: minter,
		Clock: opts.Clock, Log: a.log.With("component", "watcher"), Registerer: a.reg,
	})
	if err != nil {
		return nil, err
	}
	if a.sas != nil {
		a.prefetch, err = watcher.NewPrefetcher(a.watcher, a.sas, cfg.Prefetch.Namespaces, cfg.Vault.Concurrency, a.log.With("component", "prefetch"))
		if err != nil {
			return nil, err
		}
	}

	router, err := checker.NewRouter(checkerRoutes(cfg), cfg.HasDefaultRoute())
	if err != nil {
		return nil, err
	}
	var sas checker.ServiceAccounts
	if a.sas != nil {
		sas = a.sas
	}
	a.checker, err = checker.New(checker.Config{
		Validator: validator, ServiceAccounts: sas, Credentials: a.creds,
		Source: source{w: a.watcher}, Router: router, Audiences: cfg.Kubernetes.Audiences,
		TokenCache:     checker.TokenCacheConfig{TTL: cfg.Cache.TokenTTL, NegativeTTL: cfg.Cache.TokenNegative},
		TokenCacheSize: cfg.Cache.Capacity, Metrics: metrics, Log: a.log.With("component", "checker"),
		Now: opts.Clock.Now,
	})
	if err != nil {
		return nil, err
	}

	if cfg.Events.NatsURL != "" {
		a.sub, err = events.NewSubscriber(events.SubscriberConfig{
			URL: cfg.Events.NatsURL, Subject: cfg.Events.Subject,
			Refresher: events.RefresherFunc(func(ctx context.Context, r events.Rotation) error {
				return a.watcher.Refresh(ctx, r.Namespace, r.ServiceAccount, r.Route)
			}),
			Resyncer:   events.ResyncerFunc(a.watcher.ResyncAll),
			Logger:     a.log,
			Registerer: a.reg,
			Name:       "credinject",
		})
		if err != nil {
			return nil, err
		}
	}

	a.grpcSrv = grpc.NewServer(
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(1<<20),
	)
	authv3.RegisterAuthorizationServer(a.grpcSrv, checker.NewGRPC(a.checker))
	a.health = health.NewServer()
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	a.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(a.grpcSrv, a.health)
	reflection.Register(a.grpcSrv)

	mux := http.NewServeMux()
	mux.Handle("/check", checker.NewHTTP(a.checker))
	mux.Handle("/check/", checker.NewHTTP(a.checker))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", a.readyz)
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	a.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}

	if a.grpcLn, err = net.Listen("tcp", cfg.Listen.GRPC); err != nil {
		return nil, fmt.Errorf("listen.grpc: %w", err)
	}
	if a.httpLn, err = net.Listen("tcp", cfg.Listen.HTTP); err != nil {
		return nil, fmt.Errorf("listen.http: %w", err)
	}
	ok = true
	return a, nil
}

func restConfig(opts Options) (*rest.Config, error) {
	if opts.RestConfig != nil {
		return rest.CopyConfig(opts.RestConfig), nil
	}
	if p := opts.Config.Kubernetes.Kubeconfig; p != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", p)
		if err != nil {
			return nil, fmt.Errorf("kubernetes.kubeconfig: %w", err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes: not in a cluster and kubernetes.kubeconfig is empty: %w", err)
	}
	return rc, nil
}

func (a *App) validator(ctx context.Context, kube kubernetes.Interface, rc *rest.Config, m *checker.Metrics) (checker.Validator, error) {
	cfg := a.cfg.Kubernetes
	if cfg.TokenValidation == "tokenreview" {
		if kube == nil {
			return nil, errors.New("kubernetes.tokenValidation tokenreview needs an API server")
		}
		return checker.NewTokenReviewValidator(kube.AuthenticationV1().TokenReviews(), cfg.Audiences,
			func(res string) { m.TokenCalls.WithLabelValues(res).Inc() }), nil
	}
	jc := checker.JWKSConfig{Issuer: cfg.Issuer, Audiences: cfg.Audiences, Keys: a.opts.JWKS, Now: a.opts.Clock.Now, Log: a.log.With("component", "jwks")}
	if jc.Keys == nil && cfg.JWKSFile != "" {
		b, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("kubernetes.jwksFile: %w", err)
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(b, &set); err != nil {
			return nil, fmt.Errorf("kubernetes.jwksFile: %w", err)
		}
		jc.Keys = &set
	}
	if jc.Keys == nil {
		if rc == nil {
			return nil, errors.New("kubernetes.tokenValidation jwks needs an API server or a key file")
		}
		hc, err := rest.HTTPClientFor(rc)
		if err != nil {
			return nil, fmt.Errorf("jwks client: %w", err)
		}
		host := strings.TrimSuffix(rc.Host, "/")
		if jc.Issuer == "" {
			if jc.Issuer, err = discoverIssuer(ctx, hc, host); err != nil {
				return nil, err
			}
		}
		jc.URL, jc.Client = host+"/openid/v1/jwks", hc
	}
	if jc.Issuer == "" {
		return nil, errors.New("kubernetes.issuer is required with a fixed key set")
	}
	v, err := checker.NewJWKSValidator(ctx, jc)
	if err != nil {
		return nil, err
	}
	a.jwks = v
	return v, nil
}

func discoverIssuer(ctx context.Context, hc *http.Client, host string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, host+"/.well-known/openid-configuration", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("issuer discovery: %w", err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("issuer discovery: status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || doc.Issuer == "" {
		return "", fmt.Errorf("issuer discovery: no issuer (%v)", err)
	}
	return doc.Issuer, nil
}

func watcherRoutes(cfg config.Config) []watcher.Route {
	var rs []watcher.Route
	if cfg.HasDefaultRoute() {
		rs = append(rs, watcher.Route{Name: "", Path: cfg.Vault.Path, Header: cfg.Inject.Header, Value: cfg.Inject.Value})
	}
	for _, r := range cfg.Routes {
		rs = append(rs, watcher.Route{Name: r.Name, Path: r.Path, Header: r.Inject.Header, Value: r.Inject.Value})
	}
	return rs
}

func checkerRoutes(cfg config.Config) []checker.Route {
	rs := make([]checker.Route, 0, len(cfg.Routes))
	for _, r := range cfg.Routes {
		rs = append(rs, checker.Route{Name: r.Name, Hosts: r.Hosts})
	}
	return rs
}

// GRPCAddr and HTTPAddr are the bound addresses (useful with port 0).
func (a *App) GRPCAddr() string { return a.grpcLn.Addr().String() }

// HTTPAddr is the bound HTTP address.
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

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
	if a.prefetch != nil {
		fmt.Fprintf(&b, "prefetch: done=%v identities=%d\n", a.prefetch.Ready(), a.watcher.Len())
	}
	if a.sub != nil {
		fmt.Fprintf(&b, "events: %s\n", a.sub.Status())
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
	goSafe := func(name string, f func() error) {
		g.Go(func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("%s: panic: %v", name, p)
				}
			}()
			return f()
		})
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
	if a.sas != nil {
		goSafe("informer", func() error { a.sas.Run(gctx); return nil })
	}
	if a.prefetch != nil {
		goSafe("prefetch", func() error { a.prefetch.Run(gctx); return nil })
	}
	if a.jwks != nil {
		goSafe("jwks", func() error { a.jwks.Run(gctx); return nil })
	}
	if a.sub != nil {
		goSafe("events", func() error { return a.sub.Run(gctx) })
	}
	goSafe("readiness", func() error { a.waitReady(gctx); return nil })
	goSafe("shutdown", func() error {
		<-gctx.Done()
		a.ready.Store(false)
		a.health.Shutdown()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = a.httpSrv.Shutdown(sctx)
		stopped := make(chan struct{})
		go func() { a.grpcSrv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-sctx.Done():
			a.grpcSrv.Stop()
		}
		return nil
	})
	a.log.Info("credinject serving", "grpc", a.GRPCAddr(), "http", a.HTTPAddr(), "tokenValidation", a.cfg.Kubernetes.TokenValidation)
	err := g.Wait()
	a.close()
	return err
}

func (a *App) waitReady(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok := (a.sas == nil || a.sas.HasSynced()) && (a.prefetch == nil || a.prefetch.Ready())
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

func (a *App) close() {
	if a.watcher != nil {
		a.watcher.Close()
	}
	if a.vault != nil {
		a.vault.CloneConfig().HttpClient.CloseIdleConnections()
	}
	if a.checker != nil {
		a.checker.Close()
	}
	if a.creds != nil {
		a.creds.Close()
	}
	if a.grpcLn != nil {
		a.grpcLn.Close()
	}
	if a.httpLn != nil {
		a.httpLn.Close()
	}
}

// source adapts the watcher to the checker's CredentialSource, mapping the
// watcher's errors to deny reasons.
type source struct{ w *watcher.Watcher }

func (s source) Credential(ctx context.Context, route string, id checker.Identity, token string) (*cache.Entry, error) {
	e, err := s.w.Credential(ctx, route, id.Namespace, id.ServiceAccount, token, id.Expires)
	if e != nil {
		return e, nil
	}
	switch {
	case err == nil:
		return nil, checker.Deny(checker.ReasonInternal, errors.New("no entry"))
	case errors.Is(err, watcher.ErrDenied):
		return nil, checker.Deny(checker.ReasonVaultDenied, err)
	case errors.Is(err, watcher.ErrNoCredential):
		return nil, checker.Deny(checker.ReasonNoCredential, err)
	case errors.Is(err, watcher.ErrInvalidValue):
		return nil, checker.Deny(checker.ReasonInvalidCredential, err)
	case errors.Is(err, watcher.ErrUnavailable), errors.Is(err, watcher.ErrNoToken):
		return nil, checker.Deny(checker.ReasonVaultUnavailable, err)
	default:
		return nil, checker.Deny(checker.ReasonInternal, err)
	}
}
