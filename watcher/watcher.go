package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// Route is one credential per identity: where it lives in Vault and how it is
// injected. The default route has the empty name.
type Route struct {
	Name   string
	Path   string // "egress/{namespace}/{serviceaccount}"
	Header string // lower-case header name
	Value  string // "Bearer {api_key}"
}

// Store is the credential cache as the watcher sees it.
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

// Config configures a Watcher. It is copied by New.
type Config struct {
	// Vault is a client with the address and TLS settings; the watcher
	// clones it per identity and never gives it a token of its own.
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
	// Concurrency bounds concurrent Vault calls.
	Concurrency int
	// CallTimeout bounds one refresh of one identity.
	CallTimeout time.Duration
	Store       Store
	// Minter mints tokens for prefetched identities; nil disables prefetch.
	Minter     TokenMinter
	Clock      clock.WithTicker
	Jitter     func() float64 // in [-1, 1]
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Watcher keeps identities' credentials in the Store.
type Watcher struct {
	cfg     Config
	ops     *vaultOps
	routes  map[string]Route
	base    context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
	flight  singleflight.Group
	mu      sync.Mutex
	ids     map[string]*ident
	gauge   prometheus.Gauge
	refresh *prometheus.CounterVec
}

// New builds a Watcher. Its identities' goroutines run until Close.
func New(cfg Config) (*Watcher, error) {
	if cfg.Vault == nil || cfg.Store == nil || len(cfg.Routes) == 0 {
		return nil, errors.New("watcher: Vault, Store and at least one Route are required")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 5 * time.Minute
	}
	if cfg.DeniedTTL <= 0 {
		cfg.DeniedTTL = 10 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Jitter == nil {
		cfg.Jitter = func() float64 { return rand.Float64()*2 - 1 }
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_vault_requests_total",
		Help: "Vault calls made by the watcher, by operation (login, read, renew) and result (ok, denied, not_found, error).",
	}, []string{"op", "result"})
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "credinject_watcher_identities",
		Help: "Identities whose credentials the watcher keeps fresh.",
	})
	refresh := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_watcher_refreshes_total",
		Help: "Credential refreshes by trigger (miss, schedule, event, prefetch) and result (ok, denied, not_found, invalid, unavailable).",
	}, []string{"trigger", "result"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{calls, gauge, refresh} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("watcher: metrics: %w", err)
			}
		}
	}
	routes := make(map[string]Route, len(cfg.Routes))
	for _, r := range cfg.Routes {
		routes[r.Name] = r
	}
	base, stop := context.WithCancel(context.Background())
	return &Watcher{
		cfg: cfg, routes: routes, base: base, stop: stop, ids: map[string]*ident{},
		ops:   &vaultOps{base: cfg.Vault, authMount: cfg.AuthMount, role: cfg.Role, kvMount: cfg.KVMount, sem: make(chan struct{}, cfg.Concurrency), calls: calls},
		gauge: gauge, refresh: refresh,
	}, nil
}

// Close stops every identity's refresher and waits for them.
func (w *Watcher) Close() {
	w.stop()
	w.wg.Wait()
}

// ident is one identity the watcher owns.
type ident struct {
	key, ns, sa string
	prefetch    bool
	kick        chan struct{}
	cancel      context.CancelFunc

	mu      sync.Mutex
	saToken string
	saExp   time.Time
	vault   login
	routes  map[string]bool
	seq     uint64            // reads started
	applied map[string]uint64 // per route: seq of the read last stored
	running bool
}

// Len is the number of identities watched.
func (w *Watcher) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ids)
}

func (w *Watcher) identity(ns, sa string, create bool) *ident {
	key := ns + "/" + sa
	w.mu.Lock()
	defer w.mu.Unlock()
	id := w.ids[key]
	if id == nil && create {
		id = &ident{key: key, ns: ns, sa: sa, kick: make(chan struct{}, 1), routes: map[string]bool{}, applied: map[string]uint64{}}
		w.ids[key] = id
		w.gauge.Set(float64(len(w.ids)))
	}
	return id
}

// Forget stops watching namespace/serviceAccount and evicts its entries
// (a deleted ServiceAccount, or an identity Vault refused).
func (w *Watcher) Forget(namespace, serviceAccount string) {
	key := namespace + "/" + serviceAccount
	w.mu.Lock()
	id := w.ids[key]
	delete(w.ids, key)
	w.gauge.Set(float64(len(w.ids)))
	w.mu.Unlock()
	if id != nil && id.cancel != nil {
		id.cancel()
	}
	for name := range w.routes {
		w.cfg.Store.Delete(name, key)
	}
}

// offerToken keeps the newest valid service-account token of the identity,
// to log in again when its Vault token runs out.
func (id *ident) offerToken(token string, exp time.Time) {
	if token == "" {
		return
	}
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.saToken == "" || exp.IsZero() || exp.After(id.saExp) {
		id.saToken, id.saExp = token, exp
	}
}

// Credential is the checker's miss path: it returns the identity's entry for
// route, logging in with token (already validated by the checker) and reading
// Vault if needed. Concurrent misses for one identity and route share one
// Vault round trip. From then on the watcher keeps the entry fresh.
func (w *Watcher) Credential(ctx context.Context, route, namespace, serviceAccount, token string, tokenExpires time.Time) (*cache.Entry, error) {
	if _, ok := w.routes[route]; !ok {
		return nil, fmt.Errorf("watcher: unknown route %q", route)
	}
	key := namespace + "/" + serviceAccount
	ch := w.flight.DoChan(route+"\x00"+key, func() (any, error) {
		now := w.cfg.Clock.Now()
		if e, ok := w.cfg.Store.Get(route, key); ok && e.State(now) == cache.Fresh {
			return e, nil
		}
		id := w.identity(namespace, serviceAccount, true)
		id.offerToken(token, tokenExpires)
		id.mu.Lock()
		id.routes[route] = true
		id.mu.Unlock()
		fctx, cancel := context.WithTimeout(w.base, w.cfg.CallTimeout)
		defer cancel()
		e, err := w.refreshRoute(fctx, id, route, "miss")
		w.settle(id, err)
		return e, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*cache.Entry), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// settle starts the identity's refresher after a successful first read, or
// forgets an identity Vault refused or that has no token to log in with.
func (w *Watcher) settle(id *ident, err error) {
	switch {
	case errors.Is(err, ErrDenied):
		w.forgetLoop(id)
	case errors.Is(err, ErrNoToken):
		w.Forget(id.ns, id.sa)
	default:
		w.startLoop(id)
	}
}

// forgetLoop stops watching id but keeps its (negative) entries.
func (w *Watcher) forgetLoop(id *ident) {
	w.mu.Lock()
	if w.ids[id.key] == id {
		delete(w.ids, id.key)
		w.gauge.Set(float64(len(w.ids)))
	}
	w.mu.Unlock()
	if id.cancel != nil {
		id.cancel()
	}
}

func (w *Watcher) startLoop(id *ident) {
	id.mu.Lock()
	if id.running {
		id.mu.Unlock()
		return
	}
	id.running = true
	ctx, cancel := context.WithCancel(w.base)
	id.cancel = cancel
	id.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				w.cfg.Log.Error("panic in an identity's refresher; forgetting it", "identity", id.key, "panic", fmt.Sprint(p))
				w.Forget(id.ns, id.sa)
			}
		}()
		w.loop(ctx, id)
	}()
}

// loop refreshes id on schedule, on a kick, and with backoff after failures.
func (w *Watcher) loop(ctx context.Context, id *ident) {
	failures := 0
	wait := w.nextWait(id)
	for {
		var trigger string
		t := w.cfg.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
			trigger = "schedule"
		case <-id.kick:
			t.Stop()
			trigger = "event"
		}
		err := w.refreshAll(ctx, id, trigger)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrDenied):
			w.cfg.Log.Info("vault refused the identity; dropping its credentials", "identity", id.key)
			w.forgetLoop(id)
			return
		case errors.Is(err, ErrNoToken):
			w.cfg.Log.Info("no token left to log in with; forgetting the identity until its next request", "identity", id.key)
			w.Forget(id.ns, id.sa)
			return
		case errors.Is(err, ErrUnavailable):
			failures++
			max := w.cfg.Refresh / 2
			if max > 30*time.Second {
				max = 30 * time.Second
			}
			wait = Backoff(failures, 500*time.Millisecond, max, w.cfg.Jitter())
			w.cfg.Log.Warn("refresh failed; serving the cached credential meanwhile", "identity", id.key, "attempt", failures, "retryIn", wait, "error", err)
		default:
			failures = 0
			wait = w.nextWait(id)
		}
	}
}

func (w *Watcher) nextWait(id *ident) time.Duration {
	now := w.cfg.Clock.Now()
	id.mu.Lock()
	exp := id.vault.expires
	id.mu.Unlock()
	d := NextRefresh(now, w.cfg.Refresh, exp, w.cfg.Jitter()).Sub(now)
	if d < 100*time.Millisecond {
		d = 100 * time.Millisecond
	}
	return d
}

// refreshAll re-reads every watched route of id. It returns the most
// significant failure: denied, then no token, then unavailable.
func (w *Watcher) refreshAll(ctx context.Context, id *ident, trigger string) error {
	id.mu.Lock()
	routes := make([]string, 0, len(id.routes))
	for r := range id.routes {
		routes = append(routes, r)
	}
	id.mu.Unlock()
	if trigger == "schedule" {
		if _, err := w.vaultToken(ctx, id, relogin); err != nil && !errors.Is(err, ErrUnavailable) {
			return w.refuseAll(id, err)
		}
	}
	var worst error
	for _, r := range routes {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
		_, err := w.refreshRoute(cctx, id, r, trigger)
		cancel()
		switch {
		case err == nil, errors.Is(err, ErrNoCredential), errors.Is(err, ErrInvalidValue):
		case errors.Is(err, ErrDenied):
			return err
		case errors.Is(err, ErrNoToken):
			worst = err
		default:
			if worst == nil {
				worst = err
			}
		}
	}
	return worst
}

// tokenMode says how much a caller trusts the Vault token it holds.
type tokenMode int

const (
	// reuse the current token while it is valid (renewing it past half
	// life); log in only without one. The miss path.
	reuse tokenMode = iota
	// relogin when a service-account token is at hand: Vault re-checks the
	// role's bindings only at login (renewal does not), so a scheduled
	// refresh logs in again to make revocation take effect within one
	// refresh interval. Without a service-account token, reuse.
	relogin
	// force a login: Vault refused a read with the current token.
	force
)

// vaultToken returns a usable Vault token for id.
func (w *Watcher) vaultToken(ctx context.Context, id *ident, mode tokenMode) (string, error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	now := w.cfg.Clock.Now()
	v := id.vault
	valid := v.token != "" && now.Before(v.expires.Add(-5*time.Second))
	if mode == relogin && w.canLoginLocked(id, now) {
		mode = force
	}
	if mode != force && valid {
		if v.renewable && now.After(v.issued.Add(v.expires.Sub(v.issued)/2)) {
			exp, err := w.ops.renew(ctx, now, v.token)
			switch {
			case err == nil && exp.After(v.expires):
				id.vault.expires, id.vault.issued = exp, now
			case err == nil || errors.Is(err, ErrUnavailable):
				// At its max TTL, or Vault is away: keep it while it lasts.
			default:
				return w.loginLocked(ctx, id, now)
			}
		}
		return id.vault.token, nil
	}
	return w.loginLocked(ctx, id, now)
}

// canLoginLocked: a service-account token is held or can be minted.
func (w *Watcher) canLoginLocked(id *ident, now time.Time) bool {
	if id.saToken != "" && (id.saExp.IsZero() || now.Before(id.saExp.Add(-10*time.Second))) {
		return true
	}
	return id.prefetch && w.cfg.Minter != nil
}

func (w *Watcher) loginLocked(ctx context.Context, id *ident, now time.Time) (string, error) {
	jwt := id.saToken
	if jwt == "" || (!id.saExp.IsZero() && !now.Before(id.saExp.Add(-10*time.Second))) {
		jwt = ""
		if id.prefetch && w.cfg.Minter != nil {
			t, exp, err := w.cfg.Minter.Token(ctx, authz.NewIdentity(id.ns, id.sa))
			if err != nil {
				return "", fmt.Errorf("%w: token request: %v", ErrUnavailable, err)
			}
			id.saToken, id.saExp, jwt = t, exp, t
		}
	}
	if jwt == "" {
		return "", ErrNoToken
	}
	l, err := w.ops.login(ctx, now, jwt)
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			id.vault = login{}
		}
		return "", err
	}
	old := id.vault.token
	id.vault = l
	if old != "" {
		// One live Vault token per identity: Vault's storage stays flat.
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rctx, cancel := context.WithTimeout(w.base, 5*time.Second)
			defer cancel()
			w.ops.revoke(rctx, old)
		}()
	}
	return l.token, nil
}

// refreshRoute reads id's credential for route and stores the outcome: a
// fresh entry, a negative entry (denied, nothing there, not injectable), or,
// when Vault is unreachable, nothing (the cached entry keeps being served
// until it expires).
func (w *Watcher) refreshRoute(ctx context.Context, id *ident, route, trigger string) (*cache.Entry, error) {
	rt := w.routes[route]
	id.mu.Lock()
	id.seq++
	seq := id.seq
	id.mu.Unlock()

	s, err := w.read(ctx, id, rt)
	now := w.cfg.Clock.Now()
	var e *cache.Entry
	result := "ok"
	switch {
	case err == nil:
		val, rerr := Render(rt.Value, s.data)
		if rerr != nil {
			w.cfg.Log.Warn("credential is not injectable; denying", "identity", id.key, "route", route, "version", s.version, "error", rerr)
			e, err, result = w.negative(id, route, authz.ReasonInvalidCredential, now), rerr, "invalid"
			break
		}
		fresh, expires := lifetimes(now, w.cfg.Refresh, w.cfg.StaleGrace)
		e = &cache.Entry{Route: route, Identity: authz.NewIdentity(id.ns, id.sa), Header: rt.Header, Value: val, Version: s.version, ReadAt: now, FreshUntil: fresh, ExpiresAt: expires}
	case errors.Is(err, ErrDenied):
		// A refusal applies to the identity: stop serving every route.
		w.refresh.WithLabelValues(trigger, "denied").Inc()
		return w.denyAll(id, seq, now, route), err
	case errors.Is(err, ErrNoCredential):
		e, result = w.negative(id, route, authz.ReasonNoCredential, now), "not_found"
	default:
		w.refresh.WithLabelValues(trigger, "unavailable").Inc()
		return nil, err
	}
	w.refresh.WithLabelValues(trigger, result).Inc()
	w.store(id, route, seq, e)
	return e, err
}

// refuseAll records a refused login for every route of id.
func (w *Watcher) refuseAll(id *ident, err error) error {
	if !errors.Is(err, ErrDenied) {
		return err
	}
	id.mu.Lock()
	id.seq++
	seq := id.seq
	id.mu.Unlock()
	w.denyAll(id, seq, w.cfg.Clock.Now(), "")
	return err
}

// denyAll stores a vault_denied entry for every route of id and returns the
// one for route.
func (w *Watcher) denyAll(id *ident, seq uint64, now time.Time, route string) *cache.Entry {
	var mine *cache.Entry
	for name := range w.routes {
		e := w.negative(id, name, authz.ReasonVaultDenied, now)
		w.store(id, name, seq, e)
		if name == route {
			mine = e
		}
	}
	return mine
}

func (w *Watcher) negative(id *ident, route string, reason authz.Reason, now time.Time) *cache.Entry {
	exp := now.Add(w.cfg.DeniedTTL)
	return &cache.Entry{Route: route, Identity: authz.NewIdentity(id.ns, id.sa), Denied: reason, ReadAt: now, FreshUntil: exp, ExpiresAt: exp}
}

// store writes e unless a read that started later has already been stored,
// so an event-driven read is never overwritten by an older scheduled one.
func (w *Watcher) store(id *ident, route string, seq uint64, e *cache.Entry) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if seq < id.applied[route] {
		return
	}
	if e.Denied == authz.ReasonNone {
		// A read that finishes after its identity was forgotten (a deleted
		// ServiceAccount) must not bring its credential back.
		w.mu.Lock()
		current := w.ids[id.key] == id
		w.mu.Unlock()
		if !current {
			return
		}
	}
	if err := w.cfg.Store.Set(e); err != nil {
		w.cfg.Log.Error("credential cache refused an entry", "identity", id.key, "route", route, "error", err)
		return
	}
	id.applied[route] = seq
}

// read logs in if needed and reads the route's secret. A refused read is
// retried once after a fresh login: Vault answers 403 both for a policy that
// no longer allows the path and for a token it no longer knows.
func (w *Watcher) read(ctx context.Context, id *ident, rt Route) (secret, error) {
	tok, err := w.vaultToken(ctx, id, reuse)
	if err != nil {
		return secret{}, err
	}
	path := expandPath(rt.Path, id.ns, id.sa)
	s, err := w.ops.read(ctx, tok, path)
	if !errors.Is(err, errForbidden) {
		return s, err
	}
	tok, err = w.vaultToken(ctx, id, force)
	if err != nil {
		return secret{}, err
	}
	s, err = w.ops.read(ctx, tok, path)
	if errors.Is(err, errForbidden) {
		return secret{}, fmt.Errorf("%w: %v", ErrDenied, err)
	}
	return s, err
}

// Refresh re-reads, now, the credentials of the identities an event names:
// namespace and serviceAccount empty mean all; route empty means every route.
// It returns when the new values are in the cache.
func (w *Watcher) Refresh(ctx context.Context, namespace, serviceAccount, route string) error {
	var targets []*ident
	w.mu.Lock()
	for _, id := range w.ids {
		if (namespace == "" || id.ns == namespace) && (serviceAccount == "" || id.sa == serviceAccount) {
			targets = append(targets, id)
		}
	}
	w.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	sem := make(chan struct{}, w.cfg.Concurrency)
	for i, id := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
			defer cancel()
			var err error
			if route != "" {
				id.mu.Lock()
				watched := id.routes[route]
				id.mu.Unlock()
				if watched {
					_, err = w.refreshRoute(cctx, id, route, "event")
				}
			} else {
				err = w.refreshAll(cctx, id, "event")
			}
			if errors.Is(err, ErrDenied) {
				w.forgetLoop(id)
			}
			if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNoToken) {
				errs[i] = fmt.Errorf("%s: %w", id.key, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ResyncAll asks every identity's refresher to re-read now (after a missed
// event stream), without waiting.
func (w *Watcher) ResyncAll(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range w.ids {
		select {
		case id.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Prefetch makes the watcher own namespace/serviceAccount before any
// request: it mints a token for it, logs in to Vault as it, reads every
// route and starts its refresher.
func (w *Watcher) Prefetch(ctx context.Context, namespace, serviceAccount string) error {
	if w.cfg.Minter == nil {
		return errors.New("watcher: prefetch needs a token minter")
	}
	id := w.identity(namespace, serviceAccount, true)
	id.mu.Lock()
	id.prefetch = true
	for name := range w.routes {
		id.routes[name] = true
	}
	id.mu.Unlock()
	err := w.refreshAll(ctx, id, "prefetch")
	w.settle(id, err)
	return err
}
