package watcher

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/internal/backoff"
)

// identity is one identity the watcher keeps fresh: its session, the routes
// it was asked for and the order of their reads. Its schedule is kept by the
// watcher's scheduler (scheduler.go), not by a goroutine of its own: at
// 100,000 identities per replica every byte here counts, so the per-route
// state is a short slice (routes are few) rather than maps.
type identity struct {
	authz.Identity
	session *session

	mu  sync.Mutex // guards what follows; never held across I/O
	rs  []routeState
	seq uint64 // reads started

	loop loopState
	// sched is the identity's place in the scheduler, guarded by its lock.
	sched schedState
}

// routeState is what an identity knows of one watched route.
type routeState struct {
	name string
	// watched: the route is refreshed for the identity (it was asked for,
	// or prefetched); a route only stored to (a refusal of every route)
	// is not.
	watched bool
	applied uint64 // seq of the read last stored
	// held is what the audit trail last heard of the route (hasHeld: it
	// heard something).
	held    held
	hasHeld bool
	// due, when set, is when the route's credential must be refreshed
	// because it expires (a lease, an access token, an identity token).
	due time.Time
}

func newIdentity(id authz.Identity, s *session) *identity {
	return &identity{Identity: id, session: s, sched: schedState{index: -1}}
}

// routeLocked is route's state, added if absent. Called with id.mu held.
func (id *identity) routeLocked(route string) *routeState {
	for i := range id.rs {
		if id.rs[i].name == route {
			return &id.rs[i]
		}
	}
	id.rs = append(id.rs, routeState{name: route})
	return &id.rs[len(id.rs)-1]
}

// setDue records when route's credential must be refreshed: at, when it
// expires; with the identity's schedule when it does not.
func (id *identity) setDue(route string, expires, at time.Time) {
	id.mu.Lock()
	defer id.mu.Unlock()
	r := id.routeLocked(route)
	if expires.IsZero() {
		r.due = time.Time{}
		return
	}
	r.due = at
}

// earliestDue is the soonest refresh of an expiring credential.
func (id *identity) earliestDue() (time.Time, bool) {
	id.mu.Lock()
	defer id.mu.Unlock()
	var first time.Time
	for _, r := range id.rs {
		if !r.due.IsZero() && (first.IsZero() || r.due.Before(first)) {
			first = r.due
		}
	}
	return first, !first.IsZero()
}

// dueRoutes are the routes whose credential is due by now.
func (id *identity) dueRoutes(now time.Time) []string {
	id.mu.Lock()
	defer id.mu.Unlock()
	var rs []string
	for _, r := range id.rs {
		if r.watched && !r.due.IsZero() && !r.due.After(now) {
			rs = append(rs, r.name)
		}
	}
	return rs
}

// watch adds route to the routes refreshed for the identity.
func (id *identity) watch(route string) {
	id.mu.Lock()
	id.routeLocked(route).watched = true
	id.mu.Unlock()
}

func (id *identity) watched() []string {
	id.mu.Lock()
	defer id.mu.Unlock()
	rs := make([]string, 0, len(id.rs))
	for _, r := range id.rs {
		if r.watched {
			rs = append(rs, r.name)
		}
	}
	return rs
}

// expires: the credential last stored for route has an end of its own (a
// lease, a token), see setDue.
func (id *identity) expires(route string) bool {
	id.mu.Lock()
	defer id.mu.Unlock()
	for _, r := range id.rs {
		if r.name == route {
			return !r.due.IsZero()
		}
	}
	return false
}

// nextSeq numbers a read about to start.
func (id *identity) nextSeq() uint64 {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.seq++
	return id.seq
}

// startLoop puts id on the refresh schedule after a successful first read
// (once; later calls do nothing).
func (w *Watcher) startLoop(id *identity) {
	if !w.sched.claim(id) {
		return
	}
	id.mu.Lock()
	id.loop.fullAt = w.fullRefreshAt(id)
	id.mu.Unlock()
	at, full := w.nextTurn(id)
	w.sched.schedule(id, at, full)
}

// loopState is what an identity's refresher carries from one turn to the
// next, guarded by the identity's lock.
type loopState struct {
	failures int       // consecutive failed turns
	retryAt  time.Time // after a failure: when to try again
	fullAt   time.Time // when the next full refresh is due
}

// nextTurn is when id's refresher runs next and whether it refreshes in
// full: its schedule, a sooner expiring credential's refresh, or the retry
// after a failure; never sooner than 100 ms from now.
func (w *Watcher) nextTurn(id *identity) (time.Time, bool) {
	due, hasDue := id.earliestDue()
	id.mu.Lock()
	l := id.loop
	id.mu.Unlock()
	at, full := l.fullAt, true
	if hasDue && due.Before(at) {
		at, full = due, false
	}
	if l.failures > 0 {
		at, full = l.retryAt, !l.fullAt.After(l.retryAt)
	}
	if soonest := w.cfg.Clock.Now().Add(100 * time.Millisecond); at.Before(soonest) {
		at = soonest
	}
	return at, full
}

// refreshOnce is one turn of id's refresher, run by a scheduler worker when
// id is due (full: a new login, then every route; else only the routes
// whose credential expires) or asked to resync (trigger event). It stores
// the outcome, then schedules id's next turn (nextTurn), backing off after
// failures. An identity Vault refused, or left without a token to log in
// with, leaves the schedule.
func (w *Watcher) refreshOnce(ctx context.Context, id *identity, full bool, trigger string) {
	var err error
	if full {
		err = w.refreshAll(ctx, id, trigger)
	} else {
		err = w.refreshDue(ctx, id)
	}
	switch {
	case ctx.Err() != nil:
		return
	case errors.Is(err, authz.ErrVaultDenied):
		w.cfg.Log.Info("vault refused the identity; dropping its credentials", "identity", id.Key)
		w.forgetLoop(id)
		return
	case errors.Is(err, errNoToken):
		w.cfg.Log.Info("no token left to log in with; forgetting the identity until its next request", "identity", id.Key)
		w.forget(id.Identity, "no_token")
		return
	case unavailable(err):
		id.mu.Lock()
		id.loop.failures++
		n := id.loop.failures
		id.mu.Unlock()
		d := backoff.Delay(n, 500*time.Millisecond, min(w.cfg.Refresh/2, 30*time.Second), w.cfg.Jitter())
		id.mu.Lock()
		id.loop.retryAt = w.cfg.Clock.Now().Add(d)
		id.mu.Unlock()
		w.cfg.Log.Warn("refresh failed; serving the cached credential meanwhile", "identity", id.Key, "attempt", n, "retryIn", d, "error", err)
	default:
		var fullAt time.Time
		if full {
			fullAt = w.fullRefreshAt(id)
		}
		id.mu.Lock()
		id.loop.failures = 0
		if full {
			id.loop.fullAt = fullAt
		}
		id.mu.Unlock()
	}
	at, nextFull := w.nextTurn(id)
	w.sched.schedule(id, at, nextFull)
}

// unavailable: a dependency (Vault, a token endpoint) could not be asked.
func unavailable(err error) bool {
	return errors.Is(err, authz.ErrVaultUnavailable) || errors.Is(err, authz.ErrTokenEndpointUnavailable)
}

// fullRefreshAt is when id's next full refresh is due: its read schedule
// (faster while events are down), or sooner when its Vault token is due.
func (w *Watcher) fullRefreshAt(id *identity) time.Time {
	now := w.cfg.Clock.Now()
	return FullRefreshAt(now, w.readInterval(), id.session.Due(now), w.cfg.Jitter())
}

// refreshDue refreshes the routes of id whose credential is due (it expires
// before the next full refresh), with the current Vault token.
func (w *Watcher) refreshDue(ctx context.Context, id *identity) error {
	defer id.session.retire()
	var worst error
	for _, r := range id.dueRoutes(w.cfg.Clock.Now()) {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
		_, err := w.refreshRoute(cctx, id, r, "schedule")
		cancel()
		worst = worse(worst, err)
		if errors.Is(err, authz.ErrVaultDenied) {
			return err
		}
	}
	return worst
}

// worse keeps the most significant of two refresh failures: denied, then no
// token, then unavailable; a per-route refusal (nothing there, not
// injectable, refused by a token endpoint) is no failure of the identity.
func worse(worst, err error) error {
	switch {
	case err == nil, errors.Is(err, authz.ErrNoCredential), errors.Is(err, authz.ErrInvalidCredential),
		errors.Is(err, authz.ErrTokenEndpointRefused):
		return worst
	case errors.Is(err, authz.ErrVaultDenied), errors.Is(err, errNoToken):
		return err
	case worst == nil:
		return err
	}
	return worst
}

// refreshAll re-reads every watched route of id. It returns the most
// significant failure: denied, then no token, then unavailable.
func (w *Watcher) refreshAll(ctx context.Context, id *identity, trigger string) error {
	defer id.session.retire()
	routes := id.watched()
	if trigger == "schedule" {
		// Renew the Vault token, or log in again, if due: a refusal
		// applies to the identity before any read.
		_, err := id.session.Token(withScope(ctx, id.Key, "", false), reuse)
		if err != nil && (!errors.Is(err, authz.ErrVaultUnavailable) || errors.Is(err, errNoToken)) {
			if errors.Is(err, authz.ErrVaultDenied) {
				w.denyAll(id, id.nextSeq(), w.cfg.Clock.Now(), "", trigger)
			}
			return err
		}
	}
	return w.refreshRoutes(ctx, id, routes, trigger)
}

// refreshRoutes re-reads routes of id with its current Vault token and
// returns the most significant failure, as refreshAll.
func (w *Watcher) refreshRoutes(ctx context.Context, id *identity, routes []string, trigger string) error {
	var worst error
	for _, r := range routes {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
		_, err := w.refreshRoute(cctx, id, r, trigger)
		cancel()
		if errors.Is(err, authz.ErrVaultDenied) {
			return err
		}
		worst = worse(worst, err)
	}
	return worst
}

// eventRoutes are the watched routes of x that an event for scope re-reads:
// every route it covers when it names the identity; for a wildcard, every
// covered route except those that hold a valid credential a re-read would
// replace at a cost: a lease (vault-read; a value without a lease is re-read
// like KV) or a minted token (oauth2-client-credentials,
// vault-identity-token). Those keep their own schedule, before they expire.
func (w *Watcher) eventRoutes(x *identity, scope authz.Scope) []string {
	now := w.cfg.Clock.Now()
	var rs []string
	for _, r := range x.watched() {
		if !scope.CoversRoute(r) {
			continue
		}
		if scope.ServiceAccount == "" && w.keptOnWildcard(x, r, now) {
			continue
		}
		rs = append(rs, r)
	}
	return rs
}

// keptOnWildcard: x's credential for route is a lease or a minted token
// that is valid at now.
func (w *Watcher) keptOnWildcard(x *identity, route string, now time.Time) bool {
	switch w.routes[route].Source {
	case SourceKV:
		return false
	case SourceVaultRead:
		if !x.expires(route) {
			return false // no lease: a plain read
		}
	}
	e, ok := w.cfg.Store.Get(route, x.Key)
	return ok && e.Denied == authz.ReasonNone && now.Before(e.ExpiresAt)
}

// refreshRoute fetches id's credential for route and stores the outcome: a
// fresh entry, a negative entry (denied, nothing there, not injectable), or,
// when Vault is unreachable, nothing (the cached entry keeps being served
// until it expires).
func (w *Watcher) refreshRoute(ctx context.Context, id *identity, route, trigger string) (e *cache.Entry, err error) {
	rt := w.routes[route]
	src := string(rt.Source)
	ctx, span := w.tracer.Start(withScope(ctx, id.Key, route, true), SpanRefresh, trace.WithAttributes(
		attrIdentity.String(id.Key), attrRoute.String(route), attrTrigger.String(trigger), attrSource.String(src)))
	defer func() { endSpan(span, refreshResult(e, err)) }()
	seq := id.nextSeq()
	p := w.providers[rt.Source]
	if inv, ok := p.(Invalidator); ok && trigger == "event" {
		inv.Invalidate(id.Identity, route)
	}
	cred, err := p.Fetch(ctx, id.session, id.Identity, rt)
	now := w.cfg.Clock.Now()
	o := origin{trigger: trigger, source: rt.Source, path: w.vaultPath(rt, id.Identity), lease: cred.LeaseID}
	result := "ok"
	switch {
	case err == nil:
		val, rerr := Render(rt.Value, cred.Data)
		if rerr != nil {
			w.cfg.Log.Warn("credential is not injectable; denying", "identity", id.Key, "route", route, "version", cred.Version, "error", rerr)
			e, err, result = w.negative(id, route, authz.ReasonInvalidCredential, now), rerr, "invalid"
			break
		}
		interval := w.readInterval()
		fresh, expires := credentialLifetimes(now, interval, w.cfg.StaleGrace, cred.Expires)
		e = &cache.Entry{Route: route, Identity: id.Identity, Header: rt.Header, Value: val, Version: cred.Version, ReadAt: now, FreshUntil: fresh, ExpiresAt: expires}
		id.setDue(route, cred.Expires, NextRefresh(now, interval, cred.Expires, w.cfg.Jitter()))
	case errors.Is(err, authz.ErrVaultDenied):
		// A refusal applies to the identity: stop serving every route.
		w.metrics.refreshes.WithLabelValues(trigger, "denied", src).Inc()
		return w.denyAll(id, seq, now, route, trigger), err
	case errors.Is(err, authz.ErrNoCredential):
		e, result = w.negative(id, route, authz.ReasonNoCredential, now), "not_found"
	case errors.Is(err, authz.ErrInvalidCredential):
		e, result = w.negative(id, route, authz.ReasonInvalidCredential, now), "invalid"
	case errors.Is(err, authz.ErrTokenEndpointRefused):
		w.cfg.Log.Info("token endpoint refused the identity's client", "identity", id.Key, "route", route, "error", err)
		e, result = w.negative(id, route, authz.ReasonTokenEndpointRefused, now), "refused"
	default:
		w.metrics.refreshes.WithLabelValues(trigger, "unavailable", src).Inc()
		return nil, err
	}
	if e.Denied != authz.ReasonNone {
		// A refusal follows the identity's schedule, not the expiry of what
		// it replaced. (An outage, above, keeps it due for the backoff.)
		id.setDue(route, time.Time{}, time.Time{})
	}
	w.metrics.refreshes.WithLabelValues(trigger, result, src).Inc()
	w.storeFrom(id, route, seq, e, o)
	return e, err
}

// denyAll stores a vault_denied entry for every route of id and returns the
// one for route.
func (w *Watcher) denyAll(id *identity, seq uint64, now time.Time, route, trigger string) *cache.Entry {
	var mine *cache.Entry
	for name, rt := range w.routes {
		e := w.negative(id, name, authz.ReasonVaultDenied, now)
		w.storeFrom(id, name, seq, e, origin{trigger: trigger, source: rt.Source, path: w.vaultPath(rt, id.Identity)})
		if name == route {
			mine = e
		}
	}
	return mine
}

func (w *Watcher) negative(id *identity, route string, reason authz.Reason, now time.Time) *cache.Entry {
	exp := now.Add(w.cfg.DeniedTTL)
	return &cache.Entry{Route: route, Identity: id.Identity, Denied: reason, ReadAt: now, FreshUntil: exp, ExpiresAt: exp}
}

// store writes e unless a read that started later has already been stored,
// so an event-driven read is never overwritten by an older scheduled one.
// The identity's lock is held across the cache write (memory only) so two
// stores of one route cannot pass each other.
func (w *Watcher) store(id *identity, route string, seq uint64, e *cache.Entry) {
	w.storeFrom(id, route, seq, e, origin{})
}

// storeFrom is store, then the lifecycle record that storing e means
// (written after the identity's lock is released).
func (w *Watcher) storeFrom(id *identity, route string, seq uint64, e *cache.Entry, o origin) {
	if ev, ok := w.storeLocked(id, route, seq, e, o); ok {
		w.cfg.Auditor.Lifecycle(ev)
	}
}

func (w *Watcher) storeLocked(id *identity, route string, seq uint64, e *cache.Entry, o origin) (Lifecycle, bool) {
	id.mu.Lock()
	defer id.mu.Unlock()
	rs := id.routeLocked(route)
	if seq < rs.applied {
		return Lifecycle{}, false
	}
	// A read that finishes after its identity was forgotten (a deleted
	// ServiceAccount) must not bring its credential back.
	if e.Denied == authz.ReasonNone && !w.current(id) {
		return Lifecycle{}, false
	}
	if err := w.cfg.Store.Set(e); err != nil {
		w.cfg.Log.Error("credential cache refused an entry", "identity", id.Key, "route", route, "error", err)
		return Lifecycle{}, false
	}
	rs.applied = seq
	return id.lifecycle(rs, e, o)
}

// refreshResult is a refresh span's result: the entry's state (ok, or its
// deny reason) or, without one, unavailable.
func refreshResult(e *cache.Entry, err error) string {
	switch {
	case e != nil && e.Denied == authz.ReasonNone:
		return "ok"
	case e != nil:
		return string(e.Denied)
	case err == nil:
		return "ok"
	}
	return "unavailable"
}
