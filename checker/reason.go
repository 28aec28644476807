package checker

import (
	"errors"
	"fmt"
)

// Reason is a deny reason: a closed set of snake_case codes that appear in the
// x-credinject-reason header and as the metrics' reason label.
type Reason string

// The closed set of reasons. Extend, never rename: gateways and dashboards
// match on them.
const (
	ReasonNone                   Reason = ""
	ReasonMissingToken           Reason = "missing_token"
	ReasonMalformedToken         Reason = "malformed_token"
	ReasonInvalidToken           Reason = "invalid_token"
	ReasonUnknownServiceAccount  Reason = "unknown_serviceaccount"
	ReasonVaultDenied            Reason = "vault_denied"
	ReasonNoCredential           Reason = "no_credential"
	ReasonNoRoute                Reason = "no_route"
	ReasonInvalidCredential      Reason = "invalid_credential"
	ReasonVaultUnavailable       Reason = "vault_unavailable"
	ReasonTokenReviewUnavailable Reason = "tokenreview_unavailable"
	ReasonInternal               Reason = "internal"
)

// Reasons lists every deny reason, in the order of the README.
var Reasons = []Reason{
	ReasonMissingToken, ReasonMalformedToken, ReasonInvalidToken, ReasonUnknownServiceAccount,
	ReasonVaultDenied, ReasonNoCredential, ReasonNoRoute, ReasonInvalidCredential,
	ReasonVaultUnavailable, ReasonTokenReviewUnavailable, ReasonInternal,
}

// Status is the HTTP status a reason maps to.
func (r Reason) Status() int {
	switch r {
	case ReasonNone:
		return 200
	case ReasonMissingToken, ReasonMalformedToken, ReasonInvalidToken, ReasonUnknownServiceAccount:
		return 401
	case ReasonVaultDenied, ReasonNoCredential, ReasonNoRoute, ReasonInvalidCredential:
		return 403
	case ReasonVaultUnavailable, ReasonTokenReviewUnavailable:
		return 503
	default:
		return 500
	}
}

// Error is a decision error carrying its reason. Sources and validators
// return it (or wrap it) so the checker can answer precisely.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return string(e.Reason)
	}
	return fmt.Sprintf("%s: %v", e.Reason, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Deny wraps err with a reason.
func Deny(r Reason, err error) error { return &Error{Reason: r, Err: err} }

// ReasonOf returns the reason carried by err, or ReasonInternal.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonNone
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInternal
}
