package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// Route is one credential per identity: where it comes from and how it is
// injected. The default route has the empty name.
type Route struct {
	Name string
	// Source is how the credential is obtained (empty: SourceKV).
	Source Source
	// Path is the KV v2 path under the KV mount (kv,
	// oauth2-client-credentials) or the full Vault path (vault-read,
	// vault-identity-token), with {namespace} and {serviceaccount}.
	Path   string
	Header string // lower-case header name
	Value  string // "Bearer {api_key}"
	// TokenURL, Scopes and ClientAuth configure oauth2-client-credentials.
	TokenURL   string
	Scopes     []string
	ClientAuth ClientAuth
}

// Store is the credential cache as the watcher sees it
// (*cache.Credentials satisfies it).
type Store interface {
	Get(route, identity string) (*cache.Entry, bool)
	Set(e *cache.Entry) error
	Delete(route, identity string)
}

var _ Store = (*cache.Credentials)(nil)

// TokenMinter mints a short-lived token for a ServiceAccount (TokenRequest;
// kube.TokenRequester satisfies it).
type TokenMinter interface {
	Token(ctx context.Context, id authz.Identity) (token string, expires time.Time, err error)
}

// Config configures a Watcher. It is copied by New. Durations and
// Concurrency are required: their defaults live in internal/config.
type Config struct {
	// Vault is a client with the address and TLS settings (NewVaultClient);
	// the watcher clones it per call and never gives it a token of its own.
	Vault     *vaultapi.Client
	AuthMount string
	Role      string
	KVMount   string
	Routes    []Route
	// Refresh is the re-read interval; StaleGrace how long after its last
	// successful read a credential is served while Vault is unreachable;
	// DeniedTTL how long a refusal is cached.
	Refresh    time.Duration
	StaleGrace time.Duration
	DeniedTTL  time.Duration
	// RefreshWithEvents replaces Refresh while EventsConnected reports
	// rotation events arriving (prefetch.refreshWithEvents; 0: Refresh).
	RefreshWithEvents time.Duration
	// EventsConnected reports whether rotation events are being received
	// (nil: never). It is asked each time a schedule is computed, so it must
	// be cheap (events.Subscriber.Connected is an atomic load).
	EventsConnected func() bool
	// ReloginInterval is how long an identity's Vault token is renewed
	// before the watcher logs in again, so that Vault re-checks the role's
	// bindings (vault.reloginInterval; 0: the TTL Vault granted at login).
	ReloginInterval time.Duration
	// ReloginPhase draws, once per identity, how much sooner than
	// ReloginInterval after its first login it logs in again, as a share of
	// the interval in [0, 1) (0: at the full interval); later relogins
	// follow every full interval. Identities that log in together (a
	// prefetch, a replica's restart) so log in again at a flat rate over
	// one interval instead of all at once, never later than the interval
	// and no more often in the long run. nil: uniform (math/rand/v2).
	ReloginPhase func() float64
	// Concurrency bounds concurrent Vault calls.
	Concurrency int
	// CallTimeout bounds one refresh of one identity (default 10s).
	CallTimeout time.Duration
	Store       Store
	// TokenClient makes the OAuth2 token requests (nil: a client with a 10s
	// timeout).
	TokenClient *http.Client
	// Minter mints tokens for prefetched identities; nil disables prefetch.
	Minter TokenMinter
	Clock  clock.WithTicker
	// Jitter, in [-1, 1] (nil: uniform, math/rand/v2), spreads re-reads
	// and Vault token renewals by ±10 % and retries' backoff.
	Jitter     func() float64
	Log        *slog.Logger
	Registerer prometheus.Registerer
	// Auditor receives the lifecycle records (nil: none).
	Auditor Auditor
	// TracerProvider makes the refresh, Vault and token endpoint spans,
	// children of the Check span on a miss (nil: none).
	TracerProvider trace.TracerProvider
}

// Watcher keeps identities' credentials in the Store: one session per
// identity, one shared scheduler running every identity's refresher on a
// bounded pool of workers (Concurrency), one Provider per source. It
// satisfies the checker's CredentialSource and the events package's
// Refresher and Resyncer.
type Watcher struct {
	cfg       Config
	vault     vault
	providers map[Source]Provider
	routes    map[string]Route
	metrics   *metrics
	base      context.Context
	stop      context.CancelFunc
	wg        sync.WaitGroup
	flight    singleflight.Group
	tracer    trace.Tracer
	sched     *scheduler

	mu  sync.Mutex // guards ids
	ids map[string]*identity
}

// New builds a Watcher. Its scheduler's goroutines (a dispatcher and
// Concurrency workers) run until Close.
func New(cfg Config) (*Watcher, error) {
	if cfg.Vault == nil {
		return nil, errors.New("watcher: a Vault client is required")
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	if cfg.Concurrency <= 0 {
		return nil, fmt.Errorf("watcher: Concurrency must be positive, got %d", cfg.Concurrency)
	}
	v := &vaultClient{base: cfg.Vault, authMount: cfg.AuthMount, role: cfg.Role, sem: make(chan struct{}, cfg.Concurrency), calls: m.call, tracer: newTracer(cfg.TracerProvider)}
	return newWatcher(cfg, v, nil, m)
}

// providers builds one Provider per source over v.
func providers(cfg Config, v vault, m *metrics) map[Source]Provider {
	kv := kvProvider{vault: v, mount: cfg.KVMount}
	client := cfg.TokenClient
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	return map[Source]Provider{
		SourceKV:            kv,
		SourceVaultRead:     newLeaseProvider(v, cfg.Clock, cfg.Log.With("source", string(SourceVaultRead)), cfg.Auditor),
		SourceOAuth2:        oauth2Provider{kv: kv, client: client, clock: cfg.Clock, calls: m.tokenCall, tracer: newTracer(cfg.TracerProvider)},
		SourceIdentityToken: identityTokenProvider{vault: v, clock: cfg.Clock},
	}
}

// newWatcher builds a Watcher over any vault (tests pass fakes); ps
// overrides the providers of some sources.
func newWatcher(cfg Config, v vault, ps map[Source]Provider, m *metrics) (*Watcher, error) {
	if cfg.Store == nil || len(cfg.Routes) == 0 {
		return nil, errors.New("watcher: a Store and at least one Route are required")
	}
	if cfg.Refresh <= 0 || cfg.DeniedTTL <= 0 || cfg.StaleGrace < 0 || cfg.RefreshWithEvents < 0 || cfg.ReloginInterval < 0 {
		return nil, fmt.Errorf("watcher: Refresh (%v) and DeniedTTL (%v) must be positive, StaleGrace (%v), RefreshWithEvents (%v) and ReloginInterval (%v) not negative",
			cfg.Refresh, cfg.DeniedTTL, cfg.StaleGrace, cfg.RefreshWithEvents, cfg.ReloginInterval)
	}
	if cfg.RefreshWithEvents == 0 {
		cfg.RefreshWithEvents = cfg.Refresh
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Jitter == nil {
		cfg.Jitter = func() float64 { return rand.Float64()*2 - 1 }
	}
	if cfg.ReloginPhase == nil {
		cfg.ReloginPhase = rand.Float64
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Auditor == nil {
		cfg.Auditor = nopAuditor{}
	}
	all := providers(cfg, v, m)
	for src, p := range ps {
		all[src] = p
	}
	routes := make(map[string]Route, len(cfg.Routes))
	for _, r := range cfg.Routes {
		if r.Source == "" {
			r.Source = SourceKV
		}
		if all[r.Source] == nil {
			return nil, fmt.Errorf("watcher: route %q: unknown source %q", r.Name, r.Source)
		}
		if r.Source == SourceOAuth2 && r.TokenURL == "" {
			return nil, fmt.Errorf("watcher: route %q: %s needs a TokenURL", r.Name, r.Source)
		}
		routes[r.Name] = r
	}
	base, stop := context.WithCancel(context.Background())
	w := &Watcher{cfg: cfg, vault: v, providers: all, routes: routes, metrics: m, base: base, stop: stop, ids: map[string]*identity{},
		tracer: newTracer(cfg.TracerProvider)}
	w.sched = newScheduler(base, cfg.Clock, cfg.Concurrency, cfg.Log, w.refreshOnce, func(x *identity) { w.forget(x.Identity, "panic") })
	w.sched.Start(&w.wg)
	return w, nil
}

// Close stops every identity's refresher and waits for them.
func (w *Watcher) Close() {
	w.stop()
	w.sched.shutdown()
	w.wg.Wait()
}

// Len is the number of identities watched.
func (w *Watcher) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ids)
}

// readInterval is how long a credential read now stays fresh, and so two
// thirds of it the time to its next scheduled re-read: RefreshWithEvents
// while rotation events arrive, Refresh otherwise.
func (w *Watcher) readInterval() time.Duration {
	if w.cfg.EventsConnected != nil && w.cfg.EventsConnected() {
		return w.cfg.RefreshWithEvents
	}
	return w.cfg.Refresh
}

// lookup returns the watched identity for id, creating it.
func (w *Watcher) lookup(id authz.Identity) *identity {
	w.mu.Lock()
	defer w.mu.Unlock()
	if x := w.ids[id.Key]; x != nil {
		return x
	}
	x := newIdentity(id, newSession(id, w.vault, w.cfg.Minter, w.cfg.Clock, w.revokeLater, w.cfg.ReloginInterval,
		w.cfg.Jitter, w.cfg.ReloginPhase()))
	w.ids[id.Key] = x
	w.metrics.identities.Set(float64(len(w.ids)))
	return x
}

// current reports whether x is still the watched identity of its key.
func (w *Watcher) current(x *identity) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ids[x.Key] == x
}

// revokeLater revokes a superseded Vault token in the background.
func (w *Watcher) revokeLater(token string) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ctx, cancel := context.WithTimeout(w.base, 5*time.Second)
		defer cancel()
		_ = w.vault.RevokeSelf(ctx, token) // best effort; counted by the client
	}()
}

// Forget stops watching id and evicts its entries: its ServiceAccount was
// deleted (the Prefetcher calls it from the informer).
func (w *Watcher) Forget(id authz.Identity) { w.forget(id, "serviceaccount_deleted") }

// forget stops watching id and evicts its entries, for cause (the
// forgotten record's): serviceaccount_deleted, no_token (an identity left
// without a token to log in with) or panic.
func (w *Watcher) forget(id authz.Identity, cause string) {
	w.mu.Lock()
	x := w.ids[id.Key]
	delete(w.ids, id.Key)
	w.metrics.identities.Set(float64(len(w.ids)))
	w.mu.Unlock()
	if x != nil {
		w.sched.stop(x)
		w.release(x)
	}
	for name := range w.routes {
		w.cfg.Store.Delete(name, id.Key)
	}
	if x != nil {
		w.cfg.Auditor.Lifecycle(Lifecycle{Kind: Forgotten, Identity: id, Cause: cause})
	}
}

// release lets go of what x holds beyond the cache: the providers' state
// and its Vault token, whose revocation makes Vault revoke the leases read
// with it.
func (w *Watcher) release(x *identity) {
	for name, rt := range w.routes {
		if r, ok := w.providers[rt.Source].(Releaser); ok {
			r.Release(x.Identity, name)
		}
	}
	x.session.close()
}

// forgetLoop stops watching x but keeps its (negative) entries: an identity
// Vault refused stays refused until DeniedTTL.
func (w *Watcher) forgetLoop(x *identity) {
	w.mu.Lock()
	if w.ids[x.Key] == x {
		delete(w.ids, x.Key)
		w.metrics.identities.Set(float64(len(w.ids)))
	}
	w.mu.Unlock()
	w.sched.stop(x)
	w.release(x)
}

// OfferToken hands the watcher a service-account token of id that was just
// validated (the checker calls it when a token is first seen, on its token
// cache's miss path, never on a hit). A watched identity that cannot mint
// tokens (one first seen on a request, outside the prefetch namespaces)
// keeps the newest, so when its relogin is due it logs in again in the
// background with the token the kubelet rotated in, instead of being let go
// (no_token) and taking a miss on its next request. Identities not watched,
// and prefetched ones, ignore it. It does no I/O.
func (w *Watcher) OfferToken(id authz.Identity, token string, expires time.Time) {
	w.mu.Lock()
	x := w.ids[id.Key]
	w.mu.Unlock()
	if x != nil {
		x.session.offerNewer(token, expires)
	}
}

// Credential is the checker's miss path: it returns id's entry for route,
// logging in with token (already validated, valid until tokenExpires) and
// reading Vault if needed. Concurrent misses for one identity and route share
// one Vault round trip. From then on the watcher keeps the entry fresh.
//
// The entry may be negative (vault_denied, no_credential,
// invalid_credential); with no entry, the error is an *authz.Error
// (vault_unavailable when Vault or a token was missing).
func (w *Watcher) Credential(ctx context.Context, route string, id authz.Identity, token string, tokenExpires time.Time) (*cache.Entry, error) {
	if _, ok := w.routes[route]; !ok {
		return nil, authz.Denyf(authz.ReasonInternal, "watcher: unknown route %q", route)
	}
	ch := w.flight.DoChan(route+"\x00"+id.Key, func() (any, error) {
		if e, ok := w.cfg.Store.Get(route, id.Key); ok && e.State(w.cfg.Clock.Now()) == cache.Fresh {
			return e, nil
		}
		x := w.lookup(id)
		x.session.offer(token, tokenExpires)
		x.watch(route)
		fctx, cancel := context.WithTimeout(w.base, w.cfg.CallTimeout)
		defer cancel()
		// The flight outlives its first caller, not its trace: the calls
		// it makes are children of that caller's Check span.
		fctx = trace.ContextWithSpan(fctx, trace.SpanFromContext(ctx))
		e, err := w.refreshRoute(fctx, x, route, "miss")
		x.session.retire()
		w.settle(x, err)
		if e != nil {
			return e, nil
		}
		return nil, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*cache.Entry), nil
	case <-ctx.Done():
		return nil, authz.Deny(authz.ReasonVaultUnavailable, ctx.Err())
	}
}

// settle starts the identity's refresher after a successful first read, or
// forgets an identity Vault refused or that has no token to log in with.
func (w *Watcher) settle(x *identity, err error) {
	switch {
	case errors.Is(err, authz.ErrVaultDenied):
		w.forgetLoop(x)
	case errors.Is(err, errNoToken):
		w.forget(x.Identity, "no_token")
	default:
		w.startLoop(x)
	}
}

// Refresh re-reads, now, the credentials of the identities and routes scope
// names (a rotation event). It returns when the new values are in the cache;
// the error joins those of identities Vault could not be asked about.
//
// An event naming an identity re-reads each route it covers anew: a leased
// secret is read again (and the old lease revoked), an access token or
// identity token minted again. A wildcard (a namespace, or everything) only
// re-reads what a plain read refreshes: KV routes, and routes that hold no
// valid credential; a valid lease or minted token is kept (see eventRoutes),
// so that a wildcard never costs a revocation or a mint per identity.
func (w *Watcher) Refresh(ctx context.Context, scope authz.Scope) error {
	var targets []*identity
	w.mu.Lock()
	for _, x := range w.ids {
		if scope.Covers(x.Identity) {
			targets = append(targets, x)
		}
	}
	w.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	sem := make(chan struct{}, w.cfg.Concurrency)
	for i, x := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
			defer cancel()
			var err error
			if routes := w.eventRoutes(x, scope); len(routes) > 0 {
				err = w.refreshRoutes(cctx, x, routes, "event")
				x.session.retire()
			}
			if errors.Is(err, authz.ErrVaultDenied) {
				w.forgetLoop(x)
			}
			if errors.Is(err, authz.ErrVaultUnavailable) {
				errs[i] = fmt.Errorf("%s: %w", x.Key, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ResyncAll asks every identity's refresher to re-read now (after events may
// have been missed), without waiting.
func (w *Watcher) ResyncAll(context.Context) error {
	w.mu.Lock()
	xs := make([]*identity, 0, len(w.ids))
	for _, x := range w.ids {
		xs = append(xs, x)
	}
	w.mu.Unlock()
	for _, x := range xs {
		w.sched.resync(x)
	}
	return nil
}

// Prefetch makes the watcher own id before any request: it mints a token
// for it, logs in to Vault as it, reads every route and starts its
// refresher.
func (w *Watcher) Prefetch(ctx context.Context, id authz.Identity) error {
	if w.cfg.Minter == nil {
		return errors.New("watcher: prefetch needs a token minter")
	}
	x := w.lookup(id)
	x.session.setPrefetch()
	for name := range w.routes {
		x.watch(name)
	}
	err := w.refreshAll(ctx, x, "prefetch")
	w.settle(x, err)
	return err
}

// isRetryable: Vault or the API server could not be asked; try again later.
func isRetryable(err error) bool {
	return errors.Is(err, authz.ErrVaultUnavailable) && !errors.Is(err, errNoToken)
}
