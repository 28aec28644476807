package app

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/time/rate"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/kube"
)

// tokens is the token validation New builds (validator): the validator,
// its parts Run runs (nil when absent) and why tokens are or are not
// verified offline (logged at start, shown in /readyz).
type tokens struct {
	validator checker.Validator
	jwks      *checker.JWKSValidator
	bound     *kube.BoundObjects
	offline   string
}

// validator builds the token validator of kubernetes.tokenValidation.
//
// Both modes verify a token offline first, against the issuer's keys. jwks
// stops there, and revokes bound tokens through the bound-object informers
// (which need pods/secrets/nodes get,list,watch: checked here, a clear error
// if missing). tokenreview then asks the API server about tokens that passed;
// if the keys cannot be had it asks about every new token, within a budget.
// sas is the ServiceAccount informer (nil without Kubernetes).
func (a *App) validator(ctx context.Context, kc kubernetes.Interface, rc *rest.Config, sas *kube.ServiceAccounts) (t tokens, err error) {
	cfg := a.cfg.Kubernetes
	if cfg.TokenValidation == "tokenreview" {
		if kc == nil {
			return t, errors.New("kubernetes.tokenValidation tokenreview needs an API server")
		}
		online, err := checker.NewTokenReviewValidator(kc.AuthenticationV1().TokenReviews(), cfg.Audiences, a.reg)
		if err != nil {
			return t, err
		}
		online.WithTracerProvider(a.tracerProviderOrNil())
		v, err := a.jwksValidator(ctx, rc)
		if err != nil {
			t.offline = fmt.Sprintf("TokenReview for every new token, no offline verification (issuer keys unavailable: %v); never-confirmed identities share a budget of %v/s, burst %d", err, cfg.TokenReviewBudget.Rate, cfg.TokenReviewBudget.Burst)
			a.log.Warn("tokenreview mode without offline verification: the issuer's keys cannot be fetched, so every new token costs a TokenReview within a budget",
				"error", err, "rate", cfg.TokenReviewBudget.Rate, "burst", cfg.TokenReviewBudget.Burst)
			var known checker.ServiceAccounts
			if sas != nil {
				known = sas
			}
			t.validator, err = checker.Budgeted(online, checker.BudgetConfig{
				Rate: rate.Limit(cfg.TokenReviewBudget.Rate), Burst: cfg.TokenReviewBudget.Burst,
				ServiceAccounts: known, Clock: a.opts.Clock, Registerer: a.reg,
			})
			return t, err
		}
		t.jwks = v
		t.offline = "verified offline against the issuer's keys, then TokenReview"
		t.validator = checker.OfflineFirst(v, online)
		return t, nil
	}
	v, err := a.jwksValidator(ctx, rc)
	if err != nil {
		return t, err
	}
	t.jwks, t.validator = v, v
	if kc == nil {
		t.offline = "verified offline against fixed keys; no revocation of bound tokens (no API server)"
		return t, nil
	}
	if err := kube.CheckAccess(ctx, kc); err != nil {
		return t, fmt.Errorf("kubernetes.tokenValidation jwks: %w", err)
	}
	mc, err := metadata.NewForConfig(rc)
	if err != nil {
		return t, fmt.Errorf("kubernetes metadata client: %w", err)
	}
	if t.bound, err = kube.NewBoundObjects(mc, a.opts.Clock, a.log.With("component", "bound-objects")); err != nil {
		return t, err
	}
	t.offline = "verified offline against the issuer's keys; bound Pods, Secrets and Nodes followed by informers"
	return t, nil
}

// jwksValidator builds the offline validator: keys given in Options, from
// kubernetes.jwksFile, or from the API server (issuer discovered unless
// kubernetes.issuer says).
func (a *App) jwksValidator(ctx context.Context, rc *rest.Config) (*checker.JWKSValidator, error) {
	cfg := a.cfg.Kubernetes
	jc := checker.JWKSConfig{Issuer: cfg.Issuer, Audiences: cfg.Audiences, Keys: a.opts.JWKS, Clock: a.opts.Clock, Log: a.log.With("component", "jwks")}
	switch {
	case jc.Keys != nil:
	case cfg.JWKSFile != "":
		keys, err := checker.LoadJWKSFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("kubernetes.jwksFile: %w", err)
		}
		jc.Keys = keys
	case rc != nil:
		if err := jc.FromAPIServer(ctx, rc); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("kubernetes.tokenValidation jwks needs an API server or a key file")
	}
	if jc.Issuer == "" {
		return nil, errors.New("kubernetes.issuer is required with a fixed key set")
	}
	return checker.NewJWKSValidator(ctx, jc)
}
