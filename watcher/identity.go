package watcher

import (
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// Trigger is what a request for credential work is for. Triggers are
// ordered, weakest first: requests for one (identity, route) that wait
// together merge into one read with the strongest trigger.
type Trigger uint8

// The triggers, weakest first.
const (
	// TriggerMiss: a request found no fresh entry. Its read is skipped when
	// the entry is fresh by the time the run starts (a run before it
	// answered the same question).
	TriggerMiss Trigger = iota + 1
	// TriggerSchedule: the identity's schedule (its credentials, or one
	// that expires, are due), or a retry after a failure.
	TriggerSchedule
	// TriggerPrefetch: the ServiceAccount informer: every route is read
	// and watched before any request.
	TriggerPrefetch
	// TriggerWildcard: an event for a namespace or every identity: plain
	// credentials are re-read; a valid lease or minted token is kept.
	TriggerWildcard
	// TriggerNamed: an event naming the identity, or a resync: every
	// covered credential is obtained anew (a lease read again, a token
	// minted again).
	TriggerNamed
)

// String is the trigger's label in credinject_watcher_refreshes_total, the
// lifecycle records and the refresh span: miss, schedule, prefetch or
// event (both kinds of event); "" for none. Extend, never rename.
func (t Trigger) String() string {
	switch t {
	case TriggerMiss:
		return "miss"
	case TriggerSchedule:
		return "schedule"
	case TriggerPrefetch:
		return "prefetch"
	case TriggerWildcard, TriggerNamed:
		return "event"
	}
	return ""
}

// identity is one identity the watcher keeps fresh and the one owner of
// everything the watcher holds for it: its session (Vault token), its
// routes' state (what a provider holds, such as a lease; what the audit
// trail heard; when a credential is due) and its schedule. Only the
// executor's run for the identity (refresh.go) changes them, and the
// executor never runs one identity twice at once, so they need no lock.
//
// mu, the identity's one lock, guards only what others hand over: the
// requests waiting for the next run (pending), the tokens a request offers
// (the session's sa) and whether the identity was let go (gone). It is
// never held across I/O.
//
// At 100,000 identities per replica every byte here counts, so the
// per-route state is a short slice (routes are few) rather than a map.
type identity struct {
	authz.Identity
	session session

	mu      sync.Mutex
	pending *pending // nil: nothing asked for
	gone    bool     // let go: its runs store nothing that serves
	cause   string   // why it was let go, for the forgotten record ("": none)

	rs   []routeState // run-owned
	loop loopState    // run-owned
	// sched is the identity's place on the timer heap, guarded by the
	// scheduler's lock.
	sched schedState
}

// routeState is what an identity knows of one route. Run-owned.
type routeState struct {
	name string
	// def is the route's definition this state was obtained with: when
	// the watcher's routes no longer hold it (the route was removed or
	// changed), the run drops the state.
	def *Route
	// watched: the route is refreshed for the identity (it was asked for,
	// or prefetched); a route only stored to (a refusal of every route)
	// is not.
	watched bool
	// held is what the audit trail last heard of the route (hasHeld: it
	// heard something).
	held    held
	hasHeld bool
	// due, when set, is when the route's credential must be refreshed
	// because it expires (a lease, an access token, an identity token).
	due time.Time
	// retry: the last read could not be made; the next turn reads it.
	retry bool
	// provider is what the route's provider keeps between fetches.
	provider Held
}

// pending is what was asked of an identity since its last run began.
type pending struct {
	asks []ask
	// token: check the Vault token (renew it, or log in again, when due)
	// before any read; the scheduled full refresh asks it.
	token bool
	// full: the run re-plans the identity's next full refresh (a
	// scheduled full refresh, a resync).
	full bool
	// due: a scheduled turn that is not a full refresh: read the routes
	// whose credential is due, or whose last read failed.
	due bool
	// reconcile: the routes changed; a prefetched identity reads the
	// routes added (every run drops the state of removed or changed
	// routes and reads the changed ones it watches).
	reconcile bool
	waiters   []waiter
}

// ask is one request for the credential of route (all: every watched
// route, covered by the scope's route when set).
type ask struct {
	route   string
	all     bool
	trigger Trigger
}

// waiter is a caller waiting for the run that answers it: route's entry
// (a miss), or the run's outcome (an event, a prefetch).
type waiter struct {
	route string
	ch    chan<- answer // buffered 1
	// outcome: the caller wants the run's outcome (an event, a prefetch,
	// a route change), not route's entry.
	outcome bool
	// span is the caller's span (a miss's Check span): the run's calls
	// for route are its children.
	span trace.Span
}

// answer is what a run tells a waiter.
type answer struct {
	entry *cache.Entry
	err   error
}

// loopState is what the identity's schedule carries from one run to the
// next. Run-owned.
type loopState struct {
	started  bool      // it has a schedule (after its first run)
	released bool      // let go, and its Vault token revoked
	failures int       // consecutive failed runs
	retryAt  time.Time // after a failure: when to try again
	fullAt   time.Time // when the next full refresh is due
}

func newIdentity(id authz.Identity, s *session) *identity {
	x := &identity{Identity: id, session: *s, sched: schedState{index: -1}}
	x.session.mu = &x.mu
	return x
}

// route is route's state, added if absent. Run-owned.
func (x *identity) route(name string) *routeState {
	for i := range x.rs {
		if x.rs[i].name == name {
			return &x.rs[i]
		}
	}
	x.rs = append(x.rs, routeState{name: name})
	return &x.rs[len(x.rs)-1]
}

// request adds p's asks to what the next run does and reports whether
// the identity still takes requests (false: it was let go).
func (x *identity) request(p pending) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.gone {
		return false
	}
	if x.pending == nil {
		x.pending = &pending{}
	}
	q := x.pending
	q.asks = append(q.asks, p.asks...)
	q.token = q.token || p.token
	q.full = q.full || p.full
	q.due = q.due || p.due
	q.reconcile = q.reconcile || p.reconcile
	q.waiters = append(q.waiters, p.waiters...)
	return true
}

// take hands the run what was asked (nil: nothing) and whether the
// identity was let go.
func (x *identity) take() (*pending, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.pending
	x.pending = nil
	return p, x.gone
}

// isGone reports whether x was let go.
func (x *identity) isGone() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.gone
}
