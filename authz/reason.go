package authz

import (
	"errors"
	"fmt"
)

// Reason is a deny reason: a closed set of snake_case codes that appear in the
// x-credinject-reason header and as the metrics' reason label. The zero
// value, ReasonNone, is an allow.
type Reason string

// The closed set of reasons. Extend, never rename: gateways and dashboards
// match on them.
const (
	ReasonNone                  Reason = ""
	ReasonMissingToken          Reason = "missing_token"
	ReasonMalformedToken        Reason = "malformed_token"
	ReasonInvalidToken          Reason = "invalid_token"
	ReasonUnknownServiceAccount Reason = "unknown_serviceaccount"
	ReasonVaultDenied           Reason = "vault_denied"
	ReasonNoCredential          Reason = "no_credential"
	ReasonNoRoute               Reason = "no_route"
	ReasonInvalidCredential     Reason = "invalid_credential"
	ReasonVaultUnavailable      Reason = "vault_unavailable"
	// ReasonTokenReviewUnavailable: the token could not be checked, because
	// the API server's TokenReview or the issuer's JWKS could not be reached.
	ReasonTokenReviewUnavailable Reason = "tokenreview_unavailable"
	// ReasonTokenEndpointRefused: the OAuth2 token endpoint refused the
	// identity's client (unknown or revoked client, wrong secret, scope not
	// allowed); the identity has no credential there until that changes.
	ReasonTokenEndpointRefused Reason = "token_endpoint_refused"
	// ReasonTokenEndpointUnavailable: the OAuth2 token endpoint could not be
	// reached (or failed) and no still-valid access token was cached.
	ReasonTokenEndpointUnavailable Reason = "token_endpoint_unavailable"
	// ReasonClientNotAllowed: the caller of /check presented a client
	// certificate the client CA signed, but naming none of
	// listen.tls.clientNames: it is not the gateway, and gets nothing.
	ReasonClientNotAllowed Reason = "client_not_allowed"
	// ReasonInvalidPeer: a trusted caller vouched for a mesh peer whose
	// identity is not spiffe://<identity.peer.trustDomain>/ns/<namespace>/sa/<name>
	// with valid names (another trust domain, another shape), or sent a
	// peer header that cannot be read.
	ReasonInvalidPeer Reason = "invalid_peer"
	// ReasonSubjectNotAllowed: the route of the request's host and path
	// (a CredentialPolicy's) lists subjects, and the caller's identity is
	// none of them.
	ReasonSubjectNotAllowed Reason = "subject_not_allowed"
	// ReasonUnsignableRequest: the route signs requests (inject.sign) and
	// this one cannot be signed as the upstream will receive it: its body
	// is larger than the gateway sent (or was not sent), the gateway does
	// not describe the request (HTTP forward-auth), or its target cannot be
	// parsed. It is refused, never signed wrongly.
	ReasonUnsignableRequest Reason = "unsignable_request"
	ReasonInternal          Reason = "internal"
)

// Reasons lists every deny reason, in the order of the README.
var Reasons = []Reason{
	ReasonMissingToken, ReasonMalformedToken, ReasonInvalidToken, ReasonUnknownServiceAccount,
	ReasonVaultDenied, ReasonNoCredential, ReasonNoRoute, ReasonInvalidCredential,
	ReasonVaultUnavailable, ReasonTokenReviewUnavailable, ReasonTokenEndpointRefused,
	ReasonTokenEndpointUnavailable, ReasonClientNotAllowed, ReasonInvalidPeer, ReasonSubjectNotAllowed, ReasonUnsignableRequest,
	ReasonInternal,
}

// Known reports whether r is ReasonNone or one of Reasons.
func (r Reason) Known() bool {
	if r == ReasonNone {
		return true
	}
	for _, k := range Reasons {
		if r == k {
			return true
		}
	}
	return false
}

// Status is the HTTP status a reason maps to: 200 for ReasonNone, 401 for a
// missing or bad token, 403 for an identity without a credential, 503 when a
// dependency is down, 500 otherwise.
func (r Reason) Status() int {
	switch r {
	case ReasonNone:
		return 200
	case ReasonMissingToken, ReasonMalformedToken, ReasonInvalidToken, ReasonUnknownServiceAccount, ReasonInvalidPeer:
		return 401
	case ReasonVaultDenied, ReasonNoCredential, ReasonNoRoute, ReasonInvalidCredential, ReasonTokenEndpointRefused, ReasonClientNotAllowed,
		ReasonSubjectNotAllowed, ReasonUnsignableRequest:
		return 403
	case ReasonVaultUnavailable, ReasonTokenReviewUnavailable, ReasonTokenEndpointUnavailable:
		return 503
	default:
		return 500
	}
}

// Error is a deny: a decision's reason and its cause. Validators and the
// credential layer return it (or wrap it) so the checker answers precisely.
//
// errors.Is(err, &Error{Reason: r}) matches any *Error with reason r in err's
// chain; the Err… values below are such targets.
type Error struct {
	Reason Reason
	Err    error
}

// Targets for errors.Is, one per reason a caller tests for.
var (
	ErrVaultDenied       = &Error{Reason: ReasonVaultDenied}
	ErrNoCredential      = &Error{Reason: ReasonNoCredential}
	ErrInvalidCredential = &Error{Reason: ReasonInvalidCredential}
	ErrVaultUnavailable  = &Error{Reason: ReasonVaultUnavailable}

	ErrTokenEndpointRefused     = &Error{Reason: ReasonTokenEndpointRefused}
	ErrTokenEndpointUnavailable = &Error{Reason: ReasonTokenEndpointUnavailable}
)

func (e *Error) Error() string {
	if e.Err == nil {
		return string(e.Reason)
	}
	return fmt.Sprintf("%s: %v", e.Reason, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches a target *Error with the same reason and no cause.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Err == nil && t.Reason == e.Reason
}

// Deny returns an *Error with reason r and cause err (which may be nil).
func Deny(r Reason, err error) error { return &Error{Reason: r, Err: err} }

// Denyf is Deny with a formatted cause (use %w to keep a cause's chain).
func Denyf(r Reason, format string, a ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, a...)}
}

// ReasonOf returns the reason of the first *Error in err's chain:
// ReasonNone for nil, ReasonInternal for an error that carries no reason or
// a reason outside the closed set.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonNone
	}
	var e *Error
	if errors.As(err, &e) && e.Reason != ReasonNone && e.Reason.Known() {
		return e.Reason
	}
	return ReasonInternal
}
