package checker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
)

// ServiceAccountLookup reads a ServiceAccount from the API server itself, past
// every cache (*kube.ServiceAccounts implements it with a GET). The checker
// asks it only when a token was valid but the ServiceAccounts informer does
// not know the token's ServiceAccount (or knows another uid): an informer
// that lags behind a ServiceAccount created a moment ago is not a refusal.
type ServiceAccountLookup interface {
	// LookupServiceAccount returns the uid of the ServiceAccount
	// namespace/name, or found false when there is none; err is a read that
	// failed (the answer is unknown).
	LookupServiceAccount(ctx context.Context, namespace, name string) (uid string, found bool, err error)
}

// LookupBudget is a token bucket bounding the live ServiceAccount reads, all
// ServiceAccounts together: Rate per second, Burst at once.
type LookupBudget struct {
	Rate  rate.Limit
	Burst int
}

// maxConfirmed bounds the ServiceAccounts remembered as confirmed; beyond
// it the memory starts again (it costs one read per ServiceAccount).
const maxConfirmed = 10_000

// notFoundShared is how long a read that found no ServiceAccount answers
// the callers that come after it, so a burst of a deleted ServiceAccount's
// tokens costs one read, not one per caller that missed the flight.
const notFoundShared = time.Second

// lookupResults are credinject_serviceaccount_lookups_total's results.
var lookupResults = []string{"found", "not_found", "error", "budget_exhausted"}

// saLookups asks the API server whether a ServiceAccount exists: one read per
// ServiceAccount at a time (concurrent askers share it), within a budget,
// and remembers what it confirmed until the informer counts a removal.
type saLookups struct {
	lookup   ServiceAccountLookup
	removals ServiceAccountRemovals // nil: nothing is remembered
	limiter  *rate.Limiter
	clock    clock.PassiveClock
	timeout  time.Duration
	flight   singleflight.Group
	results  map[string]prometheus.Counter

	mu sync.Mutex
	// confirmed maps the ServiceAccounts read while the informer had
	// counted confirmedAt removals to their uid: valid while the count
	// stays there, since a removal the informer sees after the read moves it.
	confirmed   map[string]string
	confirmedAt uint64
	// gone maps the ServiceAccounts a read found missing to when: callers
	// arriving within notFoundShared share that answer (the token cache
	// then holds each token's refusal for its negative TTL).
	gone map[string]time.Time
}

func newSALookups(lookup ServiceAccountLookup, removals ServiceAccountRemovals, budget LookupBudget, clk clock.PassiveClock, timeout time.Duration, reg prometheus.Registerer) (*saLookups, error) {
	if budget.Rate <= 0 || budget.Burst <= 0 {
		return nil, fmt.Errorf("checker: ServiceAccountLookup needs a positive budget (rate %v, burst %d)", budget.Rate, budget.Burst)
	}
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_serviceaccount_lookups_total",
		Help: "Live reads of a ServiceAccount from the API server for a valid token whose ServiceAccount the informer did not know yet, by result (found, not_found, error, budget_exhausted: not read).",
	}, []string{"result"})
	if err := register(reg, calls); err != nil {
		return nil, err
	}
	l := &saLookups{lookup: lookup, removals: removals, limiter: rate.NewLimiter(budget.Rate, budget.Burst),
		clock: clk, timeout: timeout, results: map[string]prometheus.Counter{}, confirmed: map[string]string{}, gone: map[string]time.Time{}}
	for _, r := range lookupResults {
		l.results[r] = calls.WithLabelValues(r)
	}
	return l, nil
}

// lookedUp is one read's answer, with the removal count read before it.
type lookedUp struct {
	uid      string
	found    bool
	gen      uint64
	recalled bool // an earlier read's answer, not this flight's
}

// confirm tells whether id's ServiceAccount exists with wantUID (any uid
// when empty), asking the API server unless it confirmed it since the informer's
// last removal. On success it returns the removal count the answer holds
// at: a caller may trust it while Removals still returns it. The reason is
// ReasonUnknownServiceAccount when the ServiceAccount is gone or replaced,
// ReasonTokenReviewUnavailable when the API server was not asked (budget
// spent) or did not answer; the error says why.
func (l *saLookups) confirm(ctx context.Context, id authz.Identity, wantUID string) (uint64, authz.Reason, error) {
	key := id.Key()
	if got, ok := l.recall(key); ok && (!got.found || wantUID == "" || got.uid == wantUID) {
		return l.answer(key, got, wantUID)
	}
	got, err := l.read(ctx, id, true)
	if err == nil && got.recalled && got.found && wantUID != "" && got.uid != wantUID {
		// A flight that began after another's answer reused it; this
		// caller holds another uid, so it asks the API server itself.
		got, err = l.read(ctx, id, false)
	}
	if err != nil {
		return 0, authz.ReasonOf(err), err
	}
	return l.answer(key, got, wantUID)
}

// answer turns a read (or a recalled one) into confirm's result.
func (l *saLookups) answer(key string, got lookedUp, wantUID string) (uint64, authz.Reason, error) {
	if !got.found {
		return 0, authz.ReasonUnknownServiceAccount, fmt.Errorf("serviceaccount %s: not found", key)
	}
	if wantUID != "" && got.uid != wantUID {
		return 0, authz.ReasonUnknownServiceAccount, fmt.Errorf("serviceaccount %s: replaced (another uid)", key)
	}
	return got.gen, authz.ReasonNone, nil
}

// recall returns what an earlier read answered and still holds: a found
// ServiceAccount while the informer's removal count has not moved, a
// missing one for notFoundShared.
func (l *saLookups) recall(key string) (lookedUp, bool) {
	var gen uint64
	if l.removals != nil {
		gen = l.removals.Removals()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if uid, ok := l.confirmed[key]; ok && l.removals != nil && l.confirmedAt == gen {
		return lookedUp{uid: uid, found: true, gen: gen, recalled: true}, true
	}
	if at, ok := l.gone[key]; ok && l.clock.Since(at) < notFoundShared {
		return lookedUp{recalled: true}, true
	}
	return lookedUp{}, false
}

// read asks the API server for id's ServiceAccount, one read per key at a
// time (callers share it); with reuse, a flight first takes an answer
// recalled since its callers looked (a flight that just ended).
func (l *saLookups) read(ctx context.Context, id authz.Identity, reuse bool) (lookedUp, error) {
	key, flight := id.Key(), id.Key()
	if !reuse {
		flight += "\x00fresh"
	}
	ch := l.flight.DoChan(flight, func() (any, error) {
		if reuse {
			if got, ok := l.recall(key); ok {
				return got, nil
			}
		}
		var got lookedUp
		// Read before the API server is: a removal the informer sees
		// after this read moves the count past what the answer holds at.
		if l.removals != nil {
			got.gen = l.removals.Removals()
		}
		if !l.limiter.AllowN(l.clock.Now(), 1) {
			l.results["budget_exhausted"].Inc()
			return nil, authz.Denyf(authz.ReasonTokenReviewUnavailable, "serviceaccount %s: not known to the informer yet, and the lookup budget is spent", key)
		}
		// The read outlives any one caller: detached, with its own timeout.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
		defer cancel()
		var err error
		got.uid, got.found, err = l.lookup.LookupServiceAccount(fctx, id.Namespace, id.ServiceAccount)
		if err != nil {
			l.results["error"].Inc()
			return nil, authz.Deny(authz.ReasonTokenReviewUnavailable, fmt.Errorf("serviceaccount %s: lookup: %w", key, err))
		}
		if !got.found {
			l.results["not_found"].Inc()
			l.remember(key, got)
			return got, nil
		}
		l.results["found"].Inc()
		l.remember(key, got)
		return got, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return lookedUp{}, r.Err
		}
		return r.Val.(lookedUp), nil
	case <-ctx.Done():
		return lookedUp{}, authz.Deny(authz.ReasonTokenReviewUnavailable, ctx.Err())
	}
}

// remember records a found ServiceAccount at the count its read holds at,
// forgetting every earlier one once the count has moved.
func (l *saLookups) remember(key string, got lookedUp) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !got.found {
		if len(l.gone) >= maxConfirmed {
			clear(l.gone)
		}
		l.gone[key] = l.clock.Now()
		return
	}
	delete(l.gone, key)
	if l.removals == nil {
		return
	}
	if cur := l.removals.Removals(); cur != l.confirmedAt || len(l.confirmed) >= maxConfirmed {
		clear(l.confirmed)
		l.confirmedAt = cur
	}
	if got.gen == l.confirmedAt {
		l.confirmed[key] = got.uid
	}
}
