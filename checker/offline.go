package checker

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
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
		off, err := checkClaims(c, expected{Issuer: o.offline.cfg.Issuer, Audiences: o.offline.cfg.Audiences}, o.offline.cfg.Clock.Now())
		if err != nil {
			return TokenInfo{}, err
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
	// MaxIdentities bounds the confirmed identities remembered (default
	// 100,000); beyond it new identities share the unknown budget.
	MaxIdentities int
	// ServiceAccounts, if set, refuses offline a token whose (unverified)
	// subject names no existing ServiceAccount.
	ServiceAccounts ServiceAccounts
	Clock           clock.PassiveClock
	// Registerer receives credinject_tokenreview_budget_exhausted_total
	// (nil: not registered).
	Registerer prometheus.Registerer
}

// Budgeted is the fallback when tokens cannot be verified offline: online is
// asked only about tokens that are well-formed, unexpired, name a
// service account that exists, and fit the budget of the identity they name.
// A token over budget is refused with tokenreview_unavailable (503, not
// cached): the API server was not asked.
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
	return &budgeted{online: online, cfg: cfg, unknown: rate.NewLimiter(cfg.Rate, cfg.Burst),
		exhausted: exhausted, seen: map[string]*rate.Limiter{}}, nil
}

type budgeted struct {
	online  Validator
	cfg     BudgetConfig
	unknown *rate.Limiter
	mu      sync.Mutex
	seen    map[string]*rate.Limiter
	// exhausted counts refusals by budget.
	exhausted *prometheus.CounterVec
}

func (b *budgeted) Validate(ctx context.Context, token string) (TokenInfo, error) {
	c, err := UnverifiedClaims(token)
	if err != nil {
		return TokenInfo{}, authz.Deny(authz.ReasonMalformedToken, err)
	}
	ns, name, ok := ParseServiceAccountUser(c.Subject)
	if !ok {
		return TokenInfo{}, authz.Denyf(authz.ReasonInvalidToken, "subject is not a service account")
	}
	now := b.cfg.Clock.Now()
	if c.Expiry != 0 && now.After(time.Unix(c.Expiry, 0).Add(ClockSkew)) {
		return TokenInfo{}, authz.Denyf(authz.ReasonInvalidToken, "token expired")
	}
	key := ns + "/" + name
	if b.cfg.ServiceAccounts != nil && !b.cfg.ServiceAccounts.Exists(key, "") {
		return TokenInfo{}, authz.Denyf(authz.ReasonUnknownServiceAccount, "no service account %s", key)
	}
	b.mu.Lock()
	lim, seen := b.seen[key]
	b.mu.Unlock()
	budget := "seen"
	if !seen {
		lim, budget = b.unknown, "unknown"
	}
	if !lim.AllowN(now, 1) {
		b.exhausted.WithLabelValues(budget).Inc()
		return TokenInfo{}, authz.Denyf(authz.ReasonTokenReviewUnavailable, "tokenreview budget of %s identities exhausted", budget)
	}
	ti, err := b.online.Validate(ctx, token)
	if err != nil || seen {
		return ti, err
	}
	b.mu.Lock()
	if _, ok := b.seen[ti.Identity.Key]; !ok && len(b.seen) < b.cfg.MaxIdentities {
		b.seen[ti.Identity.Key] = rate.NewLimiter(b.cfg.Rate, b.cfg.Burst)
	}
	b.mu.Unlock()
	return ti, nil
}
