package checker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/authz"
)

// tokenReviews is the slice of client-go the TokenReview validator needs
// (authenticationv1.TokenReviewInterface satisfies it).
type tokenReviews interface {
	Create(ctx context.Context, tr *authnv1.TokenReview, opts metav1.CreateOptions) (*authnv1.TokenReview, error)
}

// attrTokenReviewResult is the TokenReview span's result: ok, rejected, error
// (as credinject_tokenreview_requests_total's label).
const attrTokenReviewResult = attribute.Key("credinject.tokenreview.result")

// TokenReviewValidator validates tokens with the Kubernetes TokenReview API.
type TokenReviewValidator struct {
	reviews   tokenReviews
	audiences []string
	observe   func(result string)
	tracer    trace.Tracer
}

// NewTokenReviewValidator builds a validator for the given audiences. It
// counts its calls by result (ok, rejected, error) in
// credinject_tokenreview_requests_total on reg (nil: not registered).
func NewTokenReviewValidator(reviews tokenReviews, audiences []string, reg prometheus.Registerer) (*TokenReviewValidator, error) {
	calls, err := newTokenReviewMetrics(reg)
	if err != nil {
		return nil, err
	}
	observe := func(result string) { calls.WithLabelValues(result).Inc() }
	return &TokenReviewValidator{reviews: reviews, audiences: slices.Clone(audiences), observe: observe, tracer: noop.Tracer{}}, nil
}

// WithTracerProvider makes a span (SpanTokenReview) per TokenReview call,
// a child of the caller's span (the Check's, on a token-cache miss), with
// the result and, when the token is valid, the identity. It returns v;
// call it before the validator is used.
func (v *TokenReviewValidator) WithTracerProvider(tp trace.TracerProvider) *TokenReviewValidator {
	if tp != nil {
		v.tracer = tp.Tracer("github.com/credinject/credinject/checker")
	}
	return v
}

var _ Validator = (*TokenReviewValidator)(nil)

// Validate asks the API server whether token is a valid service-account
// token for the configured audiences.
func (v *TokenReviewValidator) Validate(ctx context.Context, token string) (ti TokenInfo, err error) {
	ctx, span := v.tracer.Start(ctx, SpanTokenReview, trace.WithSpanKind(trace.SpanKindClient))
	defer func() {
		if span.IsRecording() {
			if err != nil {
				r := authz.ReasonOf(err)
				span.SetAttributes(AttrReason.String(string(r)))
				if r == authz.ReasonTokenReviewUnavailable {
					span.SetStatus(codes.Error, string(r))
				}
			} else {
				span.SetAttributes(AttrIdentity.String(ti.Identity.Key()))
			}
		}
		span.End()
	}()
	// The call's result goes to both the metric and the span.
	result := func(r string) {
		v.observe(r)
		span.SetAttributes(attrTokenReviewResult.String(r))
	}
	res, err := v.reviews.Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: v.audiences}}, metav1.CreateOptions{})
	if err != nil {
		result("error")
		return TokenInfo{}, authz.Deny(authz.ReasonTokenReviewUnavailable, fmt.Errorf("tokenreview: %w", err))
	}
	st := res.Status
	if !st.Authenticated {
		result("rejected")
		msg := st.Error
		if msg == "" {
			msg = "unauthenticated"
		}
		return TokenInfo{}, authz.Deny(authz.ReasonInvalidToken, errors.New("tokenreview: "+msg))
	}
	result("ok")
	if len(v.audiences) > 0 && !intersects(st.Audiences, v.audiences) {
		return TokenInfo{}, authz.Deny(authz.ReasonInvalidToken, errors.New("tokenreview: audience not accepted"))
	}
	ns, name, err := ServiceAccountUser(st.User.Username)
	if err != nil {
		return TokenInfo{}, authz.Deny(authz.ReasonInvalidToken, fmt.Errorf("tokenreview: username: %w", err))
	}
	var exp time.Time
	if c, err := UnverifiedClaims(token); err == nil && c.Expiry > 0 {
		// The API server has just vouched for this token; its exp bounds
		// how long the result may be cached.
		exp = time.Unix(c.Expiry, 0)
	}
	return NewTokenInfo(ns, name, st.User.UID, exp), nil
}

func intersects(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}
