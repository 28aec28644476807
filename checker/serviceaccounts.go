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
		clock: clk, timeout: timeout, results: map[string]prometheus.Counter{}, confirmed: map[string]string{}}
	for _, r := range lookupResults {
		l.results[r] = calls.WithLabelValues(r)
	}
	return l, nil
}

// lookedUp is one read's answer, with the removal count read before it.
type lookedUp struct {
	uid   string
	found bool
	gen   uint64
}

// confirm tells whether id's ServiceAccount exists with wantUID (any uid
// when empty), asking the API server unless it confirmed it since the informer's
// last removal. On success it returns the removal count the answer holds
// at: a caller may trust it while Removals still returns it. The reason is
// ReasonUnknownServiceAccount when the ServiceAccount is gone or replaced,
// ReasonTokenReviewUnavailable when the API server was not asked (budget
// spent) or did not answer; the error says why.
func (l *saLookups) confirm(ctx context.Context, id authz.Identity, wantUID string) (uint64, authz.Reason, error) {
	key := id.Key
	if l.removals != nil {
		gen := l.removals.Removals()
		l.mu.Lock()
		uid, ok := l.confirmed[key]
		valid := ok && l.confirmedAt == gen
		l.mu.Unlock()
		if valid && (wantUID == "" || uid == wantUID) {
			return gen, authz.ReasonNone, nil
		}
	}
	ch := l.flight.DoChan(key, func() (any, error) {
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
			return got, nil
		}
		l.results["found"].Inc()
		l.remember(key, got)
		return got, nil
	})
	var got lookedUp
	select {
	case r := <-ch:
		if r.Err != nil {
			return 0, authz.ReasonOf(r.Err), r.Err
		}
		got = r.Val.(lookedUp)
	case <-ctx.Done():
		return 0, authz.ReasonTokenReviewUnavailable, ctx.Err()
	}
	if !got.found {
		return 0, authz.ReasonUnknownServiceAccount, fmt.Errorf("serviceaccount %s: not found", key)
	}
	if wantUID != "" && got.uid != wantUID {
		return 0, authz.ReasonUnknownServiceAccount, fmt.Errorf("serviceaccount %s: replaced (another uid)", key)
	}
	return got.gen, authz.ReasonNone, nil
}

// remember records a found ServiceAccount at the count its read holds at,
// forgetting every earlier one once the count has moved.
func (l *saLookups) remember(key string, got lookedUp) {
	if l.removals == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur := l.removals.Removals(); cur != l.confirmedAt || len(l.confirmed) >= maxConfirmed {
		clear(l.confirmed)
		l.confirmedAt = cur
	}
	if got.gen == l.confirmedAt {
		l.confirmed[key] = got.uid
	}
}
