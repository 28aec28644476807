package checker

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/internal/panics"
)

// metrics are the checker's Prometheus metrics. Counters for every
// (identity source, result, reason) are created up front so the hot path
// does no label lookup.
type metrics struct {
	// checks is indexed by authz.IdentitySource.
	checks    [2]map[authz.Reason]prometheus.Counter
	duration  prometheus.Observer
	stale     prometheus.Counter
	credHit   prometheus.Counter
	credMiss  prometheus.Counter
	tokenHit  prometheus.Counter
	tokenMiss prometheus.Counter
	// panics counts panics recovered in a check (component "check").
	panics *panics.Counter
}

// newMetrics builds the checker's metrics and registers them on reg (nil:
// not registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_check_total",
		Help: "Decisions made, by result (allow, deny), reason and identity_source (token, peer: where the identity came from, or was looked for).",
	}, []string{"result", "reason", "identity_source"})
	dur := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "credinject_check_duration_seconds",
		Help:    "Time to decide one check, from request to response.",
		Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1, 5},
	})
	stale := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credinject_stale_answers_total",
		Help: "Allows served from a credential past its refresh time, within staleGrace.",
	})
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_cache_hits_total", Help: "Cache hits by cache (credential, token).",
	}, []string{"cache"})
	misses := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_cache_misses_total", Help: "Cache misses by cache (credential, token).",
	}, []string{"cache"})
	if err := register(reg, checks, dur, stale, hits, misses); err != nil {
		return nil, err
	}
	pc, err := panics.NewCounter(reg)
	if err != nil {
		return nil, err
	}
	m := &metrics{
		panics:    pc,
		duration:  dur,
		stale:     stale,
		credHit:   hits.WithLabelValues("credential"),
		credMiss:  misses.WithLabelValues("credential"),
		tokenHit:  hits.WithLabelValues("token"),
		tokenMiss: misses.WithLabelValues("token"),
	}
	for _, src := range authz.IdentitySources {
		m.checks[src] = map[authz.Reason]prometheus.Counter{authz.ReasonNone: checks.WithLabelValues("allow", "", src.String())}
		for _, r := range authz.Reasons {
			m.checks[src][r] = checks.WithLabelValues("deny", string(r), src.String())
		}
	}
	return m, nil
}

// newTokenReviewMetrics builds the TokenReview validator's call counter and
// registers it on reg (nil: not registered).
func newTokenReviewMetrics(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_tokenreview_requests_total",
		Help: "Token validations sent to the API server (TokenReview), by result (ok, rejected, error).",
	}, []string{"result"})
	return calls, register(reg, calls)
}

// newBudgetMetrics builds the TokenReview budget's refusal counter and
// registers it on reg (nil: not registered).
func newBudgetMetrics(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	exhausted := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credinject_tokenreview_budget_exhausted_total",
		Help: "Tokens refused without a TokenReview because the budget was spent (tokenreview mode without issuer keys), by budget (unknown, seen).",
	}, []string{"budget"})
	return exhausted, register(reg, exhausted)
}

func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("checker: metrics: %w", err)
		}
	}
	return nil
}
