package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
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
	Header string // lower-case header name; "" when only Shapes inject
	Value  string // "Bearer {api_key}"
	// Shapes are the injection's other forms; nil when it is the header.
	Shapes *Shapes
	// TokenURL, Scopes and ClientAuth configure oauth2-client-credentials.
	TokenURL   string
	Scopes     []string
	ClientAuth ClientAuth
	// Vault overrides the watcher's Vault settings for this route.
	Vault VaultOverride
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
	// Routes are the first routes (none: every request is no_route
	// until ReplaceRoutes gives some).
	Routes []Route
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

// Watcher keeps identities' credentials in the Store: one identity value
// owns each identity's session, routes' state and schedule; one executor
// (scheduler.go) runs every piece of credential work on a bounded pool of
// workers (Concurrency); one Provider per source. It satisfies the
// checker's CredentialSource and the events package's Refresher and
// Resyncer.
type Watcher struct {
	cfg       Config
	vault     vault
	providers map[Source]Provider
	// routes is the route table: name -> definition. A definition is
	// never changed in place: SetRoutes swaps in a new table, and a run
	// compares the pointers it read with against it.
	routes  atomic.Pointer[map[string]*Route]
	metrics *metrics
	base    context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
	tracer  trace.Tracer
	sched   *scheduler
	// newVault makes the Vault client of a route's own login (nil: every
	// login uses vault, as the tests' fakes do); logins keeps them.
	newVault func(login) vault
	logins   logins

	mu  sync.Mutex // guards ids; never held with another lock
	ids map[string]*identity
}

// New builds a Watcher. Its executor's goroutines (a dispatcher and
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
	v := &vaultClient{base: cfg.Vault, authMount: cfg.AuthMount, role: cfg.Role, calls: m.call, tracer: newTracer(cfg.TracerProvider)}
	w, err := newWatcher(cfg, v, nil, m)
	if err != nil {
		return nil, err
	}
	w.newVault = func(l login) vault {
		c := *v
		if l.role != "" {
			c.role = l.role
		}
		if l.authMount != "" {
			c.authMount = l.authMount
		}
		if l.namespace != "" {
			if base, err := cfg.Vault.Clone(); err == nil {
				base.SetNamespace(l.namespace)
				c.base = base
			}
		}
		return &c
	}
	return w, nil
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
	if cfg.Store == nil {
		return nil, errors.New("watcher: a Store is required")
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
	base, stop := context.WithCancel(context.Background())
	w := &Watcher{cfg: cfg, vault: v, providers: all, metrics: m, base: base, stop: stop, ids: map[string]*identity{},
		tracer: newTracer(cfg.TracerProvider)}
	table, err := w.buildTable(cfg.Routes)
	if err != nil {
		stop()
		return nil, err
	}
	w.routes.Store(&table)
	w.sched = newScheduler(base, cfg.Clock, cfg.Concurrency, cfg.Log, m.panics, w.run, w.scheduled,
		func(x *identity) { w.leave(x, "panic", true); w.sched.add(x) })
	w.sched.Start(&w.wg)
	return w, nil
}

// buildTable checks routes and makes their table, keeping the current
// table's definition of a route that did not change (so its state is
// kept).
func (w *Watcher) buildTable(routes []Route) (map[string]*Route, error) {
	var cur map[string]*Route
	if p := w.routes.Load(); p != nil {
		cur = *p
	}
	table := make(map[string]*Route, len(routes))
	for _, r := range routes {
		if r.Source == "" {
			r.Source = SourceKV
		}
		if w.providers[r.Source] == nil {
			return nil, fmt.Errorf("watcher: route %q: unknown source %q", r.Name, r.Source)
		}
		if r.Source == SourceOAuth2 && r.TokenURL == "" {
			return nil, fmt.Errorf("watcher: route %q: %s needs a TokenURL", r.Name, r.Source)
		}
		if _, dup := table[r.Name]; dup {
			return nil, fmt.Errorf("watcher: route %q: defined twice", r.Name)
		}
		if old := cur[r.Name]; old != nil && reflect.DeepEqual(*old, r) {
			table[r.Name] = old
			continue
		}
		table[r.Name] = &r
	}
	return table, nil
}

// table is the current route table; never changed in place.
func (w *Watcher) table() map[string]*Route { return *w.routes.Load() }

// SetRoutes replaces the route set at run time, as ordinary work of the
// executor: every identity's next run drops what it holds for a route
// removed or changed (the lease revoked, the entry evicted), reads a
// changed route again if it was watched, and a prefetched identity reads
// the routes added. It returns when every identity has run (or ctx ends);
// the error joins those of identities Vault could not be asked about.
func (w *Watcher) SetRoutes(ctx context.Context, routes []Route) error {
	if len(routes) == 0 {
		return errors.New("watcher: at least one Route is required")
	}
	wait, err := w.ReplaceRoutes(routes)
	if err != nil {
		return err
	}
	return wait(ctx)
}

// ReplaceRoutes is SetRoutes in two steps (an empty set is allowed: every
// request is then no_route): it checks routes and makes them
// the route table at once (a miss on a route added is served from now on;
// a miss on a route removed is no_route), and returns wait, which asks
// every identity to reconcile and returns when each has run (or ctx ends).
func (w *Watcher) ReplaceRoutes(routes []Route) (wait func(ctx context.Context) error, err error) {
	table, err := w.buildTable(routes)
	if err != nil {
		return nil, err
	}
	w.routes.Store(&table)
	return func(ctx context.Context) error {
		return w.ask(ctx, w.all(), func(*identity) pending { return pending{reconcile: true} })
	}, nil
}

// Close stops the executor and waits for it.
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
	if x := w.ids[id.Key()]; x != nil {
		return x
	}
	x := newIdentity(id, newSession(id, w.vault, w.cfg.Minter, w.cfg.Clock, w.revokeToken, w.cfg.ReloginInterval,
		w.cfg.Jitter, w.cfg.ReloginPhase()))
	w.ids[id.Key()] = x
	w.metrics.identities.Set(float64(len(w.ids)))
	return x
}

// all is every watched identity.
func (w *Watcher) all() []*identity {
	w.mu.Lock()
	defer w.mu.Unlock()
	xs := make([]*identity, 0, len(w.ids))
	for _, x := range w.ids {
		xs = append(xs, x)
	}
	return xs
}

// revokeToken revokes a superseded Vault token (a run's retire).
func (w *Watcher) revokeToken(token string) {
	ctx, cancel := context.WithTimeout(w.base, 5*time.Second)
	defer cancel()
	_ = w.vault.RevokeSelf(ctx, token) // best effort; counted by the client
}

// Forget stops watching id and evicts its entries: its ServiceAccount was
// deleted (the Prefetcher calls it from the informer). It returns once its
// run has released what it held (its Vault token revoked), or after
// CallTimeout.
func (w *Watcher) Forget(id authz.Identity) {
	w.mu.Lock()
	x := w.ids[id.Key()]
	w.mu.Unlock()
	if x == nil {
		for name := range w.table() {
			w.cfg.Store.Delete(name, id.Key())
		}
		return
	}
	ch := make(chan answer, 1)
	x.request(pending{waiters: []waiter{{outcome: true, ch: ch}}})
	w.leave(x, "serviceaccount_deleted", true)
	w.sched.add(x)
	t := w.cfg.Clock.NewTimer(w.cfg.CallTimeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C():
	case <-w.base.Done():
	}
}

// leave stops watching x: off the registry and the schedule, its run in
// flight cancelled, its entries evicted (evict) or kept (a refusal stays
// until DeniedTTL). Its run then releases what it holds beyond the cache
// (release), writes the forgotten record for cause (none without one) and
// answers the callers waiting.
func (w *Watcher) leave(x *identity, cause string, evict bool) {
	w.mu.Lock()
	if w.ids[x.Key()] == x {
		delete(w.ids, x.Key())
		w.metrics.identities.Set(float64(len(w.ids)))
	}
	w.mu.Unlock()
	x.mu.Lock()
	if !x.gone {
		x.gone, x.cause = true, cause
	}
	x.mu.Unlock()
	w.sched.stop(x)
	if evict {
		for name := range w.table() {
			w.cfg.Store.Delete(name, x.Key())
		}
	}
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
	x := w.ids[id.Key()]
	w.mu.Unlock()
	if x != nil {
		x.eachSession(func(s *session) { s.offerNewer(token, expires) })
	}
}

// Credential is the checker's miss path: it returns id's entry for route,
// logging in with token (already validated, valid until tokenExpires) and
// reading Vault if needed. It asks the executor and waits for the answer:
// concurrent misses for one identity share its run, and one that waited
// behind a run that stored a fresh entry is answered from it. From then on
// the watcher keeps the entry fresh.
//
// The entry may be negative (vault_denied, no_credential,
// invalid_credential); with no entry, the error is an *authz.Error
// (vault_unavailable when Vault or a token was missing).
func (w *Watcher) Credential(ctx context.Context, route string, id authz.Identity, token string, tokenExpires time.Time) (*cache.Entry, error) {
	if w.table()[route] == nil {
		// Removed by a route change the router had not yet followed.
		return nil, authz.Denyf(authz.ReasonNoRoute, "watcher: unknown route %q", route)
	}
	ch := make(chan answer, 1)
	p := pending{asks: []ask{{route: route, trigger: TriggerMiss}}, waiters: []waiter{{route: route, ch: ch, span: trace.SpanFromContext(ctx)}}}
	for {
		x := w.lookup(id)
		x.eachSession(func(s *session) { s.offer(token, tokenExpires) })
		if w.enqueue(x, p) {
			break
		}
	}
	select {
	case a := <-ch:
		if a.entry != nil {
			return a.entry, nil
		}
		return nil, a.err
	case <-ctx.Done():
		return nil, authz.Deny(authz.ReasonVaultUnavailable, ctx.Err())
	}
}

// ask records build(x) for every identity of xs and waits until each has
// run, or ctx ends; the error joins those of identities Vault (or a token
// endpoint) could not be asked about, or left without a token.
func (w *Watcher) ask(ctx context.Context, xs []*identity, build func(*identity) pending) error {
	type call struct {
		x  *identity
		ch chan answer
	}
	calls := make([]call, 0, len(xs))
	for _, x := range xs {
		p := build(x)
		if p.asks == nil && !p.reconcile {
			continue
		}
		ch := make(chan answer, 1)
		p.waiters = []waiter{{outcome: true, ch: ch}}
		if w.enqueue(x, p) {
			calls = append(calls, call{x, ch})
		}
	}
	var errs []error
	for _, c := range calls {
		select {
		case a := <-c.ch:
			switch classify(a.err) {
			case outcomeRetry, outcomeNoToken:
				errs = append(errs, fmt.Errorf("%s: %w", c.x.Key(), a.err))
			case outcomeOK, outcomeNoCredential, outcomeRefused:
				// Answered: a refusal is stored, and the identity let go.
			}
		case <-ctx.Done():
			return errors.Join(append(errs, authz.Deny(authz.ReasonVaultUnavailable, ctx.Err()))...)
		}
	}
	return errors.Join(errs...)
}

// Refresh re-reads, now, the credentials of the identities and routes scope
// names (a rotation event). It returns when the new values are in the cache;
// the error joins those of identities that could not be asked about.
//
// An event naming an identity re-reads each route it covers anew: a leased
// secret is read again (and the old lease revoked), an access token or
// identity token minted again. A wildcard (a namespace, or everything) only
// re-reads what a plain read refreshes: KV routes, and routes that hold no
// valid credential; a valid lease or minted token is kept (see
// keptOnWildcard), so that a wildcard never costs a revocation or a mint per
// identity.
func (w *Watcher) Refresh(ctx context.Context, scope authz.Scope) error {
	return w.RefreshBatch(ctx, []authz.Scope{scope})
}

// RefreshBatch is Refresh for several scopes at once (events coalesced
// together): an identity covered by more than one is read once, each route
// with the strongest trigger of the scopes covering it (an event naming
// the identity beats a wildcard).
func (w *Watcher) RefreshBatch(ctx context.Context, scopes []authz.Scope) error {
	return w.ask(ctx, w.all(), func(x *identity) pending {
		var p pending
		for _, s := range scopes {
			if !s.Covers(x.Identity) {
				continue
			}
			t := TriggerWildcard
			if s.ServiceAccount != "" {
				t = TriggerNamed
			}
			p.asks = append(p.asks, ask{route: s.Route, all: true, trigger: t})
		}
		return p
	})
}

// ResyncAll asks every identity to re-read everything now, anew (after
// events may have been missed), without waiting; its schedule counts from
// then.
func (w *Watcher) ResyncAll(context.Context) error {
	for _, x := range w.all() {
		w.enqueue(x, pending{asks: []ask{{all: true, trigger: TriggerNamed}}, full: true})
	}
	return nil
}

// Prefetch makes the watcher own id before any request: it mints a token
// for it, logs in to Vault as it and reads every route, then keeps them
// fresh. It returns when that first run is done: the error is its
// heaviest failure (refused, no token, unavailable); an identity that
// could not be asked is retried with backoff by the executor.
func (w *Watcher) Prefetch(ctx context.Context, id authz.Identity) error {
	if w.cfg.Minter == nil {
		return errors.New("watcher: prefetch needs a token minter")
	}
	for {
		x := w.lookup(id)
		ch := make(chan answer, 1)
		if !w.enqueue(x, pending{asks: []ask{{all: true, trigger: TriggerPrefetch}}, waiters: []waiter{{outcome: true, ch: ch}}}) {
			continue
		}
		select {
		case a := <-ch:
			return a.err
		case <-ctx.Done():
			return authz.Deny(authz.ReasonVaultUnavailable, ctx.Err())
		}
	}
}
