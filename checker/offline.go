package checker

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// OfflineFirst checks every token offline (signature and claims against the
// issuer's keys) before asking online, the API server's TokenReview. A
// forged, expired or misaddressed token is refused here and costs the API
// server nothing; a token that passes is confirmed by online, which alone
// knows about revocation. online's identity is the answer; the offline claims
// add the objects the token is bound to.
//
// Legacy Secret-based tokens (issuer LegacyIssuer) carry no expiry or
// audience: their signature is checked offline and the rest is left to
// online.
func OfflineFirst(offline *JWKSValidator, online Validator) Validator {
	return &offlineFirst{offline: offline, online: online}
}

type offlineFirst struct {
	offline *JWKSValidator
	online  Validator
}

func (o *offlineFirst) Validate(ctx context.Context, token string) (TokenInfo, error) {
	c, err := o.offline.verify(ctx, token)
	if err != nil {
		return TokenInfo{}, err
	}
	var bound []BoundRef
	if c.Issuer != LegacyIssuer {
		now := o.offline.cfg.Clock.Now()
		off, err := checkClaims(c, expected{Issuer: o.offline.cfg.Issuer, Audiences: o.offline.cfg.Audiences}, now)
		if err != nil {
			return TokenInfo{}, err
		}
		// A token past its exp on this clock is refused by the checker
		// whatever the API server says (ClockSkew is for the API server's
		// clock, not ours): asking would be a TokenReview for nothing.
		if !now.Before(off.Expires) {
			return TokenInfo{}, authz.Denyf(authz.ReasonInvalidToken, "token expired at %s", off.Expires.UTC().Format(time.RFC3339))
		}
		bound = off.Bound
	}
	ti, err := o.online.Validate(ctx, token)
	if err != nil {
		return TokenInfo{}, err
	}
	ti.Bound = bound
	return ti, nil
}

// BudgetConfig bounds the TokenReviews that never-verified tokens may cause
// when the issuer's keys cannot be had (tokenreview mode without JWKS).
type BudgetConfig struct {
	// Rate and Burst bound TokenReviews for tokens whose identity has never
	// been confirmed, all such identities together. Each identity the API
	// server has confirmed once gets a budget of its own of the same size,
	// so a flood of forged tokens naming unknown identities cannot take the
	// capacity that real workloads' new tokens need.
	Rate  rate.Limit
	Burst int
	// MaxIdentities bounds the confirmed identities, and the confirmed
	// tokens, remembered (default 100,000 each); beyond it new identities
	// share the unknown budget.
	MaxIdentities int
	// ServiceAccounts, if set, tells which identities exist: a token whose
	// (unverified) subject names a ServiceAccount the informer does not
	// know is charged to the never-confirmed budget, whatever its identity
	// earned (the informer may only lag behind a new ServiceAccount; after
	// the TokenReview the checker confirms it with the API server).
	ServiceAccounts ServiceAccounts
	Clock           clock.PassiveClock
	// Registerer receives credinject_tokenreview_budget_exhausted_total
	// (nil: not registered).
	Registerer prometheus.Registerer
}

// Budgeted is the fallback when tokens cannot be verified offline: online is
// asked only about tokens that are well-formed, unexpired and fit the budget
// of the identity they name (the never-confirmed budget when the informer
// does not know its ServiceAccount).
// A token over budget is refused with tokenreview_unavailable (503, not
// cached): the API server was not asked.
//
// A token the API server has confirmed before (its cached result expired)
// is asked about again outside any budget: the workloads already running
// keep working through a flood. What a flood can still delay is a new token
// of the identity the forgeries name.
func Budgeted(online Validator, cfg BudgetConfig) (Validator, error) {
	if cfg.MaxIdentities <= 0 {
		cfg.MaxIdentities = 100_000
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	exhausted, err := newBudgetMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &budgeted{online: online, cfg: cfg, unknown: rate.NewLimiter(cfg.Rate, cfg.Burst), hash: newHasher(nil),
		exhausted: exhausted, seen: map[string]*rate.Limiter{}, confirmed: map[cache.MAC]time.Time{}}, nil
}

type budgeted struct {
	online  Validator
	cfg     BudgetConfig
	unknown *rate.Limiter
	mu      sync.Mutex
	seen    map[string]*rate.Limiter
	hash    *hasher
	// exhausted counts refusals by budget.
	exhausted *prometheus.CounterVec
	// confirmed holds the MAC of each token the API server accepted, with
	// its expiry (never the token itself).
	confirmed map[cache.MAC]time.Time
}

func (b *budgeted) Validate(ctx context.Context, token string) (TokenInfo, error) {
	c, err := UnverifiedClaims(token)
	if err != nil {
		return TokenInfo{}, authz.Deny(authz.ReasonMalformedToken, err)
	}
	ns, name, err := ServiceAccountUser(c.Subject)
	if err != nil {
		return TokenInfo{}, authz.Denyf(authz.ReasonInvalidToken, "subject: %w", err)
	}
	now := b.cfg.Clock.Now()
	// No ClockSkew on exp: the checker refuses a token past its exp on
	// this clock whatever the API server says.
	if c.Expiry != 0 && !now.Before(time.Unix(c.Expiry, 0)) {
		return TokenInfo{}, authz.Denyf(authz.ReasonInvalidToken, "token expired")
	}
	key := authz.NewIdentity(ns, name).Key()
	var sum cache.MAC
	b.hash.mac(token, &sum)
	b.mu.Lock()
	_, confirmed := b.confirmed[sum]
	lim, seen := b.seen[key]
	b.mu.Unlock()
	if seen && b.cfg.ServiceAccounts != nil && !b.cfg.ServiceAccounts.Exists(key, "") {
		seen = false
	}
	if !confirmed {
		budget := "seen"
		if !seen {
			lim, budget = b.unknown, "unknown"
		}
		if !lim.AllowN(now, 1) {
			b.exhausted.WithLabelValues(budget).Inc()
			return TokenInfo{}, authz.Denyf(authz.ReasonTokenReviewUnavailable, "tokenreview budget of %s identities exhausted", budget)
		}
	}
	ti, err := b.online.Validate(ctx, token)
	if err != nil {
		if confirmed && authz.ReasonOf(err) != authz.ReasonTokenReviewUnavailable {
			b.mu.Lock()
			delete(b.confirmed, sum)
			b.mu.Unlock()
		}
		return ti, err
	}
	exp := ti.Expires
	if exp.IsZero() {
		exp = now.Add(time.Hour)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.seen[ti.Identity.Key()]; !ok && len(b.seen) < b.cfg.MaxIdentities {
		b.seen[ti.Identity.Key()] = rate.NewLimiter(b.cfg.Rate, b.cfg.Burst)
	}
	if len(b.confirmed) >= b.cfg.MaxIdentities {
		for k, e := range b.confirmed {
			if !now.Before(e) {
				delete(b.confirmed, k)
			}
		}
	}
	if len(b.confirmed) < b.cfg.MaxIdentities {
		b.confirmed[sum] = exp
	}
	return ti, nil
}
