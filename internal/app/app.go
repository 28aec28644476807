// Package app wires credinject's parts from a configuration: the Kubernetes
// client and ServiceAccount informer, the token validator, the caches, the
// watcher, the NATS subscriber and the gRPC and HTTP servers. cmd/credinject
// calls it; so do the end-to-end tests and the benchmark harness, which run
// the real server in-process.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/audit"
	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/lograte"
	"github.com/credinject/credinject/internal/tlsconfig"
	"github.com/credinject/credinject/kube"
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
	// Dev is credinject dev, whose Vault on loopback is plaintext by
	// design: no warning about an http:// vault.address.
	Dev   bool
	Clock clock.WithTicker
	// ReloginPhase overrides the watcher's draw of how much sooner than
	// vault.reloginInterval each identity's first relogin comes, a share
	// of it in [0, 1) (watcher.Config.ReloginPhase; nil: uniform). Tests
	// that move a fake clock pass 0: the relogin at the full interval.
	ReloginPhase func() float64
	// Minter, with NoKubernetes, mints the tokens peer identities log in
	// to Vault with (credinject dev's issuer); with Kubernetes,
	// TokenRequest does.
	Minter watcher.TokenMinter
	// ConfigPath is the config file, reloaded when it changes (checked
	// every ReloadInterval, default 5s) and on SIGHUP; empty: no reload.
	ConfigPath     string
	ReloadInterval time.Duration
	// LeaseNamespace overrides where the policy status Lease lives
	// (default: $POD_NAMESPACE, the ServiceAccount's namespace); a
	// LeaseDuration > 0 overrides client-go's 15s (renew deadline 2/3 of
	// it, retry 1/5).
	LeaseNamespace string
	LeaseDuration  time.Duration
}

// App is a wired, listening credinject. New sets each field once, from
// what a builder returns; Run only reads them.
type App struct {
	opts     Options
	cfg      config.Config
	log      *slog.Logger
	reg      *prometheus.Registry
	servers  // the listeners and their servers (listen)
	checker  *checker.Checker
	creds    *cache.Credentials
	watcher  *watcher.Watcher
	sas      *kube.ServiceAccounts
	prefetch *watcher.Prefetcher
	jwks     *checker.JWKSValidator
	sub      *events.Subscriber
	vault    *vaultapi.Client
	ready    atomic.Bool
	bound    *kube.BoundObjects
	// offline says whether tokens are verified offline before anything
	// else, and why not (logged at start, shown in /readyz).
	offline string

	// Transport security: listen.tls.
	tls *tlsconfig.Reloader // nil: plaintext

	// The audit trail (audit.*): nil when off.
	audit      *audit.Log
	auditClose func() error

	// Operability: tracing.*.
	tracing *sdktrace.TracerProvider // nil: tracing off

	// routing applies route tables: policies and config reloads.
	routing *routing

	// reqLog is log behind the per-message limiter (lograte), for the
	// checker, the watcher and the audit trail, whose lines a request, a
	// forged token or a refused identity can cause.
	reqLog *slog.Logger
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
	// One budget per message, shared by the parts whose log lines a
	// request, a forged token or a refused identity can cause.
	limiter, lerr := lograte.New(lograte.Config{Clock: opts.Clock, Registerer: a.reg})
	if lerr != nil {
		return nil, lerr
	}
	a.reqLog = slog.New(limiter.Handler(opts.Log.Handler()))
	ok := false
	defer func() {
		if !ok {
			a.close()
		}
	}()

	var err error
	if a.tls, err = a.loadTLS(); err != nil {
		return nil, err
	}
	if a.audit, a.auditClose, err = a.auditTrail(); err != nil {
		return nil, err
	}
	if a.tracing, err = a.tracerProvider(); err != nil {
		return nil, err
	}
	kc, rc, err := a.kubernetes()
	if err != nil {
		return nil, err
	}
	if kc != nil {
		a.sas = kube.NewServiceAccounts(kc, 0)
	}
	if a.creds, err = a.credentialCache(); err != nil {
		return nil, err
	}
	if a.vault, err = a.vaultClient(); err != nil {
		return nil, err
	}
	if a.watcher, err = a.newWatcher(kc); err != nil {
		return nil, err
	}
	if a.sas != nil {
		if a.prefetch, err = watcher.NewPrefetcher(a.watcher, a.sas, cfg.Prefetch.Namespaces, cfg.Prefetch.Concurrency, a.log.With("component", "prefetch")); err != nil {
			return nil, err
		}
	}
	tv, err := a.validator(ctx, kc, rc, a.sas)
	if err != nil {
		return nil, err
	}
	a.jwks, a.bound, a.offline = tv.jwks, tv.bound, tv.offline
	if a.checker, err = a.newChecker(tv.validator); err != nil {
		return nil, err
	}
	if err := a.newRouting(kc, rc); err != nil {
		return nil, err
	}
	if cfg.Events.NatsURL != "" {
		natsOpts, err := events.Credentials{
			CredsFile: cfg.Events.CredsFile, NKeyFile: cfg.Events.NKeyFile, TokenFile: cfg.Events.TokenFile,
			CAFile: cfg.Events.CAFile, CertFile: cfg.Events.CertFile, KeyFile: cfg.Events.KeyFile,
		}.Options()
		if err != nil {
			return nil, fmt.Errorf("events.%w", err)
		}
		a.sub, err = events.NewSubscriber(events.SubscriberConfig{
			URL: cfg.Events.NatsURL, Subject: cfg.Events.Subject, MinInterval: cfg.Events.MinInterval,
			Refresher: a.watcher, Resyncer: a.watcher,
			Logger: a.log, Registerer: a.reg, Name: "credinject",
			Options: natsOpts,
		})
		if err != nil {
			return nil, err
		}
	}
	if a.servers, err = a.listen(); err != nil {
		return nil, err
	}
	ok = true
	return a, nil
}

// kubernetes builds the API server client and its configuration (nil, nil
// without Kubernetes).
func (a *App) kubernetes() (kubernetes.Interface, *rest.Config, error) {
	if a.opts.NoKubernetes {
		return nil, nil, nil
	}
	var rc *rest.Config
	if a.opts.RestConfig != nil {
		rc = rest.CopyConfig(a.opts.RestConfig)
	} else {
		var err error
		if rc, err = kube.RESTConfig(a.cfg.Kubernetes.Kubeconfig); err != nil {
			return nil, nil, fmt.Errorf("kubernetes: %w", err)
		}
	}
	rc.QPS, rc.Burst = a.cfg.Kubernetes.QPS, a.cfg.Kubernetes.Burst
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return kc, rc, nil
}

// credentialCache builds the credential cache (cache.capacity,
// cache.deniedCapacity) and registers its gauges.
func (a *App) credentialCache() (*cache.Credentials, error) {
	cfg := a.cfg
	creds, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: cfg.Cache.Capacity, DeniedCapacity: cfg.Cache.DeniedCapacity})
	if err != nil {
		return nil, err
	}
	a.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "credinject_cache_entries", Help: "Credentials in the credential cache (refusals apart: credinject_cache_denied_entries).",
	}, func() float64 { return float64(creds.Len()) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "credinject_cache_capacity", Help: "Entries the credential cache holds at most (cache.capacity); when full, a new identity's credential is not kept and each of its requests is a miss.",
	}, func() float64 { return float64(cfg.Cache.Capacity) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "credinject_cache_denied_entries", Help: "Refusals (vault_denied, no_credential, invalid_credential, token_endpoint_refused) cached for cache.deniedTTL, at most cache.deniedCapacity.",
	}, func() float64 { return float64(creds.DeniedLen()) }), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "credinject_cache_denied_evictions_total", Help: "Cached refusals evicted, the oldest first, because cache.deniedCapacity were held; each costs its identity's next request a miss.",
	}, func() float64 { return float64(creds.DeniedEvictions()) }))
	return creds, nil
}

// vaultClient builds the Vault client of vault.*.
func (a *App) vaultClient() (*vaultapi.Client, error) {
	v := a.cfg.Vault
	c, err := watcher.NewVaultClient(watcher.VaultClientConfig{
		Address: v.Address, Concurrency: v.Concurrency,
		CAFile: v.CAFile, ClientCertFile: v.ClientCertFile, ClientKeyFile: v.ClientKeyFile,
		TLSServerName: v.TLSServerName, Namespace: v.Namespace,
	})
	if err != nil {
		return nil, fmt.Errorf("vault (vault.caFile, vault.clientCertFile, vault.clientKeyFile or VAULT_* environment): %w", err)
	}
	return c, nil
}

// newWatcher builds the watcher on the cache and Vault client New built;
// every value of the configuration it takes is passed explicitly.
func (a *App) newWatcher(kc kubernetes.Interface) (*watcher.Watcher, error) {
	cfg := a.cfg
	// Prefetched identities and mesh peers present no token: the watcher
	// requests one for them (audience kubernetes.audiences, as Vault's role
	// expects).
	minter := a.opts.Minter
	if kc != nil && (len(cfg.Prefetch.Namespaces) > 0 || cfg.Identity.HasPeer()) {
		minter = kube.TokenRequester{Client: kc, Audiences: cfg.Kubernetes.Audiences, TTL: time.Hour}
	}
	if cfg.Identity.HasPeer() && minter == nil {
		return nil, errors.New("identity.sources: peer needs Kubernetes (TokenRequest) to log in to Vault as a peer")
	}
	return watcher.New(watcher.Config{
		Vault: a.vault, AuthMount: cfg.Vault.AuthMount, Role: cfg.Vault.Role, KVMount: cfg.Vault.KVMount,
		Routes:  watcherRoutes(cfg),
		Refresh: cfg.Prefetch.Refresh, StaleGrace: cfg.Prefetch.StaleGrace, DeniedTTL: cfg.Cache.DeniedTTL,
		RefreshWithEvents: cfg.Prefetch.RefreshWithEvents, ReloginInterval: cfg.Vault.ReloginInterval,
		ReloginPhase: a.opts.ReloginPhase,
		// The subscriber is built after the watcher; nil is never connected.
		EventsConnected: func() bool { return a.sub.Connected() },
		Concurrency:     cfg.Vault.Concurrency, Store: a.creds, Minter: minter,
		Clock: a.opts.Clock, Log: a.reqLog.With("component", "watcher"), Registerer: a.reg,
		Auditor:        a.auditor(),
		TracerProvider: a.tracerProviderOrNil(),
	})
}

// newChecker builds the router and the checker on validator and the parts
// New built before it.
func (a *App) newChecker(validator checker.Validator) (*checker.Checker, error) {
	cfg := a.cfg
	router, err := checker.NewRouter(checkerRoutes(cfg), cfg.HasDefaultRoute())
	if err != nil {
		return nil, err
	}
	var (
		sas    checker.ServiceAccounts
		lookup checker.ServiceAccountLookup
	)
	if a.sas != nil {
		// A valid token whose ServiceAccount the informer does not know
		// yet is confirmed with a GET, within the TokenReview budget's size.
		sas, lookup = a.sas, a.sas
	}
	var bound checker.BoundObjects
	if a.bound != nil {
		bound = checker.BoundObjectsFunc(func(k checker.BoundKind, key, uid string) bool { return a.bound.Exists(string(k), key, uid) })
	}
	return checker.New(checker.Config{
		Validator: validator, ServiceAccounts: sas, BoundObjects: bound, Credentials: a.creds,
		ServiceAccountLookup: lookup,
		LookupBudget:         checker.LookupBudget{Rate: rate.Limit(cfg.Kubernetes.TokenReviewBudget.Rate), Burst: cfg.Kubernetes.TokenReviewBudget.Burst},
		Source:               a.watcher, Router: router, Audiences: cfg.Kubernetes.Audiences,
		TokenCache:     checker.TokenCacheConfig{TTL: cfg.Cache.TokenTTL, NegativeTTL: cfg.Cache.TokenNegative},
		TokenCacheSize: cfg.Cache.Capacity, Registerer: a.reg, Log: a.reqLog.With("component", "checker"),
		Clock: a.opts.Clock, Recorder: a.recorder(),
		Tracing: checker.Tracing{TracerProvider: a.tracerProviderOrNil(), SamplingRatio: cfg.Tracing.SamplingRatio},
		Sources: identitySources(cfg.Identity), TrustDomain: cfg.Identity.Peer.TrustDomain, PeerLogins: a.watcher,
	})
}

// identitySources are identity.sources, validated by config.
func identitySources(c config.Identity) []authz.IdentitySource {
	var ss []authz.IdentitySource
	for _, s := range c.Sources {
		if src, ok := authz.ParseIdentitySource(s); ok {
			ss = append(ss, src)
		}
	}
	return ss
}

// watcherRoutes is every route the watcher reads, the default route (no
// name) first when it is on.
func watcherRoutes(cfg config.Config) []watcher.Route {
	var rs []watcher.Route
	for _, r := range cfg.AllRoutes() {
		wr := watcher.Route{Name: r.Name, Source: watcher.Source(r.Source), Path: r.Path, Header: r.Inject.Header, Value: r.Inject.Value,
			Shapes: watcherShapes(r.Inject)}
		if o := r.OAuth2; o != nil {
			wr.TokenURL, wr.Scopes, wr.ClientAuth = o.TokenURL, o.Scopes, watcher.ClientAuth(o.ClientAuth)
		}
		rs = append(rs, wr)
	}
	return rs
}

// watcherShapes is in's shapes beyond header and value as the watcher
// renders them; nil when it has none.
func watcherShapes(in config.Inject) *watcher.Shapes {
	if !in.HasShapes() {
		return nil
	}
	sh := &watcher.Shapes{}
	for _, h := range in.Headers {
		sh.Headers = append(sh.Headers, watcher.Template{Name: h.Name, Value: h.Value})
	}
	for _, q := range in.Query {
		sh.Query = append(sh.Query, watcher.Template{Name: q.Name, Value: q.Value})
	}
	for _, k := range in.MetadataKeys() {
		sh.Metadata = append(sh.Metadata, watcher.Template{Name: k, Value: in.Metadata[k]})
	}
	if b := in.Basic; b != nil {
		sh.Basic = &watcher.BasicTemplate{Username: b.Username, Password: b.Password}
	}
	if s := in.Sign; s != nil {
		sh.Sign = &watcher.SignSpec{Service: s.Service, Region: s.Region, UnsignedPayload: s.Payload == config.PayloadUnsigned}
	}
	return sh
}

// checkerRoutes is the routes with hosts; the default route is the router's
// hasDefault.
func checkerRoutes(cfg config.Config) []checker.Route {
	rs := make([]checker.Route, 0, len(cfg.Routes))
	for _, r := range cfg.AllRoutes() {
		if r.Name != "" {
			rs = append(rs, checker.Route{Name: r.Name, Hosts: r.Hosts})
		}
	}
	return rs
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
	a.servers.close()
	if a.auditClose != nil {
		a.auditClose()
	}
	a.shutdownTracing()
}

// tracerProviderOrNil is the provider for the parts' configs: a nil
// interface when tracing is off (never a typed nil).
func (a *App) tracerProviderOrNil() trace.TracerProvider {
	if a.tracing == nil {
		return nil
	}
	return a.tracing
}
