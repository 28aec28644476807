package watcher

import (
	"context"
	"errors"
	"slices"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/internal/backoff"
)

// This file is one refresh, top to bottom: a request is recorded (enqueue),
// the executor runs the identity (run): it plans the reads (plan), checks
// the Vault token when a full refresh is due, reads each route (read),
// stores the outcome, revokes the Vault tokens it replaced, then either lets
// the identity go or schedules its next turn (settle), and answers the
// callers waiting. Errors are sorted once (classify); every step switches
// on the outcome.

// outcome is what an error means for the identity, ordered by weight: of a
// run's reads, the heaviest decides what happens next.
type outcome uint8

const (
	// outcomeOK: obtained, or nothing to do.
	outcomeOK outcome = iota
	// outcomeNoCredential: nothing usable for this route (nothing at the
	// path, a value that cannot be injected, a client the token endpoint
	// refused): a negative entry for the route, no failure of the identity.
	outcomeNoCredential
	// outcomeRetry: Vault or a token endpoint could not be asked: the
	// cached entry is served meanwhile, the run is retried with backoff.
	outcomeRetry
	// outcomeNoToken: no service-account token left to log in with: the
	// identity is let go until its next request.
	outcomeNoToken
	// outcomeRefused: Vault refused the identity: every route is denied
	// and the identity let go (its denials stay until DeniedTTL).
	outcomeRefused
)

// classify is the one place an error of the credential layer is sorted.
func classify(err error) outcome {
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, authz.ErrVaultDenied):
		return outcomeRefused
	case errors.Is(err, errNoToken):
		return outcomeNoToken
	case errors.Is(err, authz.ErrNoCredential), errors.Is(err, authz.ErrInvalidCredential),
		errors.Is(err, authz.ErrTokenEndpointRefused):
		return outcomeNoCredential
	}
	return outcomeRetry
}

// enqueue records p for x and queues x's run: the only way credential work
// starts. False: x was let go (the caller looks the identity up again).
func (w *Watcher) enqueue(x *identity, p pending) bool {
	if !x.request(p) {
		return false
	}
	w.sched.add(x)
	return true
}

// scheduled asks for x's scheduled turn (the scheduler's due callback).
func (w *Watcher) scheduled(x *identity, full bool) {
	if full {
		w.enqueue(x, pending{asks: []ask{{all: true, trigger: TriggerSchedule}}, token: true, full: true})
		return
	}
	w.enqueue(x, pending{due: true})
}

// want is one read a run makes: route, for trigger.
type want struct {
	route   string
	def     *Route
	trigger Trigger
}

// run is one run of x: everything asked of it since its last run began.
// The executor calls it on a worker, never twice at once for one identity.
func (w *Watcher) run(ctx context.Context, x *identity) {
	p, gone := x.take()
	if gone || p == nil {
		w.release(x)
		if p != nil {
			// Let go before this run: a refusal stays until DeniedTTL.
			w.answer(x, p.waiters, nil, errLetGo)
		}
		return
	}
	answers := map[string]answer{}
	answered := false
	defer func() {
		if !answered {
			// The run panicked (the scheduler recovers and counts it):
			// its callers get an answer now, not at their deadlines.
			w.answer(x, p.waiters, nil, errRunFailed)
		}
	}()
	reads := w.plan(ctx, x, p, answers)
	worst, worstErr := outcomeOK, error(nil)
	note := func(err error) outcome {
		o := classify(err)
		if o > worst {
			worst, worstErr = o, err
		}
		return o
	}
	if p.token {
		// Renew the Vault token, or log in again, if due: a refusal
		// applies to the identity before any read.
		cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
		_, err := x.session.Token(withScope(cctx, x.Key(), "", false), reuse)
		cancel()
		switch note(err) {
		case outcomeRefused:
			w.denyAll(x, "", TriggerSchedule)
		case outcomeRetry:
			worst, worstErr = outcomeOK, nil // the reads try again
		}
	}
	for _, r := range reads {
		if worst >= outcomeNoToken {
			break
		}
		cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
		if s := spanFor(p, r.route); s != nil {
			// A miss's run outlives its first caller, not its trace: the
			// calls it makes are children of that caller's Check span.
			cctx = trace.ContextWithSpan(cctx, s)
		}
		e, err := w.read(cctx, x, r)
		cancel()
		if classify(err) == outcomeRefused && loginOf(r.def) != (login{}) {
			// A route's own login was refused: that login's routes are
			// denied (read did), not the identity.
			err = nil
		}
		note(err)
		answers[r.route] = answer{entry: e, err: err}
	}
	// The one place replaced Vault tokens are revoked: after the reads
	// that replaced the credentials read with them.
	x.eachSession((*session).retire)
	if !x.isGone() {
		w.settle(x, worst, worstErr, p.full)
	}
	if x.isGone() {
		w.release(x)
	}
	if worst < outcomeRetry {
		worstErr = nil
	}
	answered = true
	w.answer(x, p.waiters, answers, worstErr)
}

// answer tells each caller waiting for a run its answer: its route's read,
// or, when the run did not read it, the entry a run before stored (or a
// refusal of every route did); the run's heaviest failure (err) to a caller
// that waits for the outcome.
func (w *Watcher) answer(x *identity, waiters []waiter, answers map[string]answer, err error) {
	for _, wt := range waiters {
		a, ok := answers[wt.route]
		switch {
		case wt.outcome:
			a = answer{err: err}
		case ok:
		default:
			if e, found := w.cfg.Store.Get(wt.route, x.Key()); found {
				a = answer{entry: e}
			} else if a.err = err; a.err == nil {
				a.err = errNoAnswer
			}
		}
		wt.ch <- a
	}
}

// spanFor is the span of p's first caller waiting for route, if any.
func spanFor(p *pending, route string) trace.Span {
	for _, wt := range p.waiters {
		if wt.route == route && wt.span != nil {
			return wt.span
		}
	}
	return nil
}

// plan decides the reads of a run from what was asked, strongest trigger
// per route: a miss's read is skipped when the entry is fresh again (a run
// before answered it; its answer is the entry), a wildcard's when the
// route holds a valid lease or minted token. It first drops the state of
// routes removed or changed since x last read them (their lease revoked,
// their entries evicted) and reads the changed ones again.
func (w *Watcher) plan(ctx context.Context, x *identity, p *pending, answers map[string]answer) []want {
	table := w.table()
	now := w.cfg.Clock.Now()
	triggers := map[string]Trigger{}
	ask := func(route string, t Trigger) {
		if t > triggers[route] {
			triggers[route] = t
		}
	}
	w.reconcile(ctx, x, table, ask)
	prefetch := false
	for _, a := range p.asks {
		if a.trigger == TriggerPrefetch {
			prefetch = true
		}
	}
	if prefetch {
		x.eachSession((*session).setPrefetch)
	}
	if prefetch || p.reconcile && x.session.prefetched() {
		for name, def := range table {
			rs := x.route(name)
			if !rs.watched {
				rs.watched, rs.def = true, def
				ask(name, TriggerPrefetch)
			}
		}
	}
	for _, a := range p.asks {
		if !a.all {
			if table[a.route] == nil {
				answers[a.route] = answer{err: authz.Denyf(authz.ReasonInternal, "watcher: unknown route %q", a.route)}
				continue
			}
			rs := x.route(a.route)
			rs.watched, rs.def = true, table[a.route]
			ask(a.route, a.trigger)
			continue
		}
		for _, rs := range x.rs {
			if rs.watched && (a.route == "" || a.route == rs.name) {
				ask(rs.name, a.trigger)
			}
		}
	}
	if p.due {
		for _, rs := range x.rs {
			if rs.watched && (rs.retry || !rs.due.IsZero() && !rs.due.After(now)) {
				ask(rs.name, TriggerSchedule)
			}
		}
	}
	var reads []want
	for _, rs := range x.rs {
		t, ok := triggers[rs.name]
		if !ok || rs.def == nil {
			continue
		}
		e, held := w.cfg.Store.Get(rs.name, x.Key())
		switch {
		case t == TriggerMiss && held && e.State(now) == cache.Fresh:
			answers[rs.name] = answer{entry: e}
			continue
		case t == TriggerWildcard && held && w.keptOnWildcard(&rs, e, now):
			continue
		}
		reads = append(reads, want{route: rs.name, def: rs.def, trigger: t})
	}
	return reads
}

// reconcile drops x's state of the routes removed or changed since it
// read them (their lease revoked, their entries evicted) and asks to read
// the changed ones it watches again.
func (w *Watcher) reconcile(ctx context.Context, x *identity, table map[string]*Route, ask func(string, Trigger)) {
	kept := x.rs[:0]
	for _, rs := range x.rs {
		cur := table[rs.name]
		if rs.def != nil && rs.def != cur {
			w.dropRoute(ctx, x, &rs)
			if cur != nil && rs.watched {
				ask(rs.name, TriggerSchedule) // changed: read anew
			}
		}
		if cur == nil {
			continue // removed
		}
		rs.def = cur
		kept = append(kept, rs)
	}
	clear(x.rs[len(kept):])
	x.rs = kept
}

// keptOnWildcard: the route holds a lease or a minted token that is valid
// at now: a wildcard event does not replace it (that would cost a
// revocation or a mint per identity); it keeps its own schedule, before it
// expires.
func (w *Watcher) keptOnWildcard(rs *routeState, e *cache.Entry, now time.Time) bool {
	switch rs.def.Source {
	case SourceKV:
		return false
	case SourceVaultRead:
		if rs.due.IsZero() {
			return false // no lease: a plain read
		}
	}
	return e.Denied == authz.ReasonNone && now.Before(e.ExpiresAt)
}

// read fetches x's credential for r and stores the outcome: a fresh entry,
// a negative entry (denied, nothing there, not injectable), or, when it
// could not be asked, nothing (the cached entry keeps being served until it
// expires, and the route is retried).
func (w *Watcher) read(ctx context.Context, x *identity, r want) (e *cache.Entry, err error) {
	rt, rs := *r.def, x.route(r.route)
	src := string(rt.Source)
	ctx, span := w.tracer.Start(withScope(ctx, x.Key(), r.route, true), SpanRefresh, trace.WithAttributes(
		attrIdentity.String(x.Key()), attrRoute.String(r.route), attrTrigger.String(r.trigger.String()), attrSource.String(src)))
	defer func() { endSpan(span, refreshResult(e, err)) }()
	l := loginOf(&rt)
	cred, err := w.set(l).providers[rt.Source].Fetch(ctx, Fetch{Tokens: w.sessionFor(x, l), Identity: x.Identity, Route: rt,
		Anew: r.trigger >= TriggerNamed, Held: &rs.provider})
	now := w.cfg.Clock.Now()
	o := origin{trigger: r.trigger, source: rt.Source, path: w.vaultPath(rt, x.Identity), lease: cred.LeaseID}
	var in Injection
	if err == nil {
		if in, err = RenderInjection(&rt, cred.Data); err != nil {
			w.cfg.Log.Warn("credential is not injectable; denying", "identity", x.Key(), "route", r.route, "version", cred.Version, "error", err)
		}
	}
	rs.retry = false
	result := "ok"
	switch outcomeOf := classify(err); outcomeOf {
	case outcomeOK:
		interval := w.readInterval()
		fresh, expires := credentialLifetimes(now, interval, w.cfg.StaleGrace, cred.Expires)
		e = &cache.Entry{Route: r.route, Identity: x.Identity, Header: in.Header, Value: in.Value, Shapes: in.Shapes, Version: cred.Version, ReadAt: now, FreshUntil: fresh, ExpiresAt: expires}
		rs.due = time.Time{}
		if !cred.Expires.IsZero() {
			rs.due = NextRefresh(now, interval, cred.Expires, w.cfg.Jitter())
		}
	case outcomeRefused:
		// A refusal applies to the identity's login: stop serving every
		// route that logs in alike.
		w.metrics.refreshes.WithLabelValues(r.trigger.String(), "denied", src).Inc()
		return w.denyLogin(x, r.route, r.trigger, loginOf(&rt)), err
	case outcomeNoCredential:
		reason := authz.ReasonOf(err)
		result = map[authz.Reason]string{authz.ReasonNoCredential: "not_found", authz.ReasonInvalidCredential: "invalid",
			authz.ReasonTokenEndpointRefused: "refused"}[reason]
		if reason == authz.ReasonTokenEndpointRefused {
			w.cfg.Log.Info("token endpoint refused the identity's client", "identity", x.Key(), "route", r.route, "error", err)
		}
		e = w.negative(x, r.route, reason, now)
		// A refusal follows the identity's schedule, not the expiry of
		// what it replaced.
		rs.due = time.Time{}
	default: // outcomeRetry, outcomeNoToken: keep what is cached
		rs.retry = true
		w.metrics.refreshes.WithLabelValues(r.trigger.String(), "unavailable", src).Inc()
		return nil, err
	}
	w.metrics.refreshes.WithLabelValues(r.trigger.String(), result, src).Inc()
	w.store(x, rs, e, o)
	return e, err
}

// denyAll stores a vault_denied entry for every route and returns the one
// for route.
func (w *Watcher) denyAll(x *identity, route string, t Trigger) *cache.Entry {
	return w.denyLogin(x, route, t, login{})
}

// denyLogin is denyAll for the routes that log in with l.
func (w *Watcher) denyLogin(x *identity, route string, t Trigger, l login) *cache.Entry {
	now := w.cfg.Clock.Now()
	var mine *cache.Entry
	for name, def := range w.table() {
		if loginOf(def) != l {
			continue
		}
		e := w.negative(x, name, authz.ReasonVaultDenied, now)
		rs := x.route(name)
		rs.def, rs.due, rs.retry = def, time.Time{}, false
		w.store(x, rs, e, origin{trigger: t, source: def.Source, path: w.vaultPath(*def, x.Identity)})
		if name == route {
			mine = e
		}
	}
	return mine
}

func (w *Watcher) negative(x *identity, route string, reason authz.Reason, now time.Time) *cache.Entry {
	exp := now.Add(w.cfg.DeniedTTL)
	return &cache.Entry{Route: route, Identity: x.Identity, Denied: reason, ReadAt: now, FreshUntil: exp, ExpiresAt: exp}
}

// store writes e, then the lifecycle record storing it means. Runs of one
// identity are never concurrent, so a read that started later always stores
// later; x.mu makes a forget and a store exclusive: a credential read for
// an identity let go meanwhile (a deleted ServiceAccount) is not stored.
func (w *Watcher) store(x *identity, rs *routeState, e *cache.Entry, o origin) {
	x.mu.Lock()
	if x.gone && e.Denied == authz.ReasonNone {
		x.mu.Unlock()
		return
	}
	err := w.cfg.Store.Set(e)
	x.mu.Unlock()
	if err != nil {
		w.cfg.Log.Error("credential cache refused an entry", "identity", x.Key(), "route", rs.name, "error", err)
		return
	}
	if ev, ok := x.lifecycle(rs, e, o); ok {
		w.cfg.Auditor.Lifecycle(ev)
	}
}

// settle is what a run's heaviest outcome means for x: let go (refused: its
// denials stay; no token: evicted), or its next turn: the retry after a
// failure, with backoff, or its schedule.
func (w *Watcher) settle(x *identity, worst outcome, err error, full bool) {
	now := w.cfg.Clock.Now()
	switch worst {
	case outcomeRefused:
		w.cfg.Log.Info("vault refused the identity; dropping its credentials", "identity", x.Key())
		w.leave(x, "", false)
		return
	case outcomeNoToken:
		w.cfg.Log.Info("no token left to log in with; forgetting the identity until its next request", "identity", x.Key())
		w.leave(x, "no_token", true)
		return
	case outcomeRetry:
		x.loop.failures++
		d := backoff.Delay(x.loop.failures, 500*time.Millisecond, min(w.cfg.Refresh/2, 30*time.Second), w.cfg.Jitter())
		x.loop.retryAt = now.Add(d)
		w.cfg.Log.Warn("refresh failed; serving the cached credential meanwhile", "identity", x.Key(), "attempt", x.loop.failures, "retryIn", d, "error", err)
	default:
		if !slices.ContainsFunc(x.rs, func(rs routeState) bool { return rs.retry }) {
			x.loop.failures = 0
		}
	}
	if full && worst != outcomeRetry || !x.loop.started {
		x.loop.fullAt = FullRefreshAt(now, w.readInterval(), x.session.Due(now), w.cfg.Jitter())
	}
	x.loop.started = true
	at, nextFull := w.nextTurn(x, now)
	w.sched.schedule(x, at, nextFull)
}

// nextTurn is when x's next turn is due and whether it is a full refresh:
// its schedule, a sooner expiring credential's refresh, or the retry after
// a failure; never sooner than 100 ms from now.
func (w *Watcher) nextTurn(x *identity, now time.Time) (time.Time, bool) {
	l := x.loop
	at, full := l.fullAt, true
	for _, rs := range x.rs {
		if rs.watched && !rs.due.IsZero() && rs.due.Before(at) {
			at, full = rs.due, false
		}
	}
	if l.failures > 0 {
		at, full = l.retryAt, !l.fullAt.After(l.retryAt)
	}
	if soonest := now.Add(100 * time.Millisecond); at.Before(soonest) {
		at = soonest
	}
	return at, full
}

// dropRoute ends what x holds for a route removed or changed since it was
// read: its lease is revoked now (the identity keeps its Vault token), its
// entry evicted, and what the audit trail heard forgotten.
func (w *Watcher) dropRoute(ctx context.Context, x *identity, rs *routeState) {
	if lp, ok := w.set(loginOf(rs.def)).providers[rs.def.Source].(*leaseProvider); ok {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
		lp.drop(withScope(cctx, x.Key(), rs.name, true), &rs.provider, x.Identity, rs.name, true)
		cancel()
	}
	w.cfg.Store.Delete(rs.name, x.Key())
	rs.def, rs.held, rs.hasHeld, rs.due, rs.retry = nil, held{}, false, time.Time{}, false
}

// release lets go of what x holds beyond the cache, once: its providers'
// state and its Vault token, whose revocation makes Vault revoke the leases
// read with it; then the forgotten record. Run-owned.
func (w *Watcher) release(x *identity) {
	if x.loop.released {
		return
	}
	x.loop.released = true
	for i := range x.rs {
		rs := &x.rs[i]
		if lp, ok := w.set(w.loginOfRoute(rs)).providers[SourceVaultRead].(*leaseProvider); ok && rs.provider.lease != nil {
			lp.drop(context.Background(), &rs.provider, x.Identity, rs.name, false)
		}
	}
	x.eachSession((*session).close)
	x.mu.Lock()
	cause := x.cause
	x.mu.Unlock()
	if cause != "" {
		w.cfg.Auditor.Lifecycle(Lifecycle{Kind: Forgotten, Identity: x.Identity, Cause: cause})
	}
}

// errNoAnswer: a run read nothing for a caller's route and holds nothing
// for it.
var errNoAnswer = authz.Deny(authz.ReasonVaultUnavailable, errors.New("watcher: no credential was read"))

// errRunFailed answers the callers of a run that panicked.
var errRunFailed = authz.Deny(authz.ReasonInternal, errors.New("watcher: the identity's run failed (a panic, counted in credinject_panics_total)"))

// errLetGo answers the callers of an identity let go before its run.
var errLetGo = authz.Deny(authz.ReasonVaultUnavailable, errors.New("watcher: the identity was let go"))

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
