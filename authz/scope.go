package authz

import (
	"errors"
	"fmt"
	"log/slog"
	"unicode/utf8"
)

// Scope names a set of (identity, route) credentials, as a rotation event
// does. Empty fields widen it: Namespace and ServiceAccount empty mean every
// identity, ServiceAccount empty every service account of Namespace, Route
// empty every route. A ServiceAccount without a Namespace is invalid.
type Scope struct {
	Namespace      string
	ServiceAccount string
	Route          string
}

// ErrInvalidScope is wrapped by Scope.Validate's errors.
var ErrInvalidScope = errors.New("invalid rotation")

const maxQuoted = 64 // bytes of a bad value echoed in an error

// Validate reports whether s names Kubernetes objects and a route in the
// forms credinject accepts. Errors wrap ErrInvalidScope.
func (s Scope) Validate() error {
	if s.Namespace == "" && s.ServiceAccount != "" {
		return fmt.Errorf("%w: serviceAccount %s without a namespace", ErrInvalidScope, Quote(s.ServiceAccount))
	}
	if s.Namespace != "" && !IsDNSLabel(s.Namespace) {
		return fmt.Errorf("%w: namespace %s is not a DNS-1123 label (lower-case alphanumerics and '-', at most %d)",
			ErrInvalidScope, Quote(s.Namespace), MaxNamespaceLength)
	}
	if s.ServiceAccount != "" && !IsDNSSubdomain(s.ServiceAccount) {
		return fmt.Errorf("%w: serviceAccount %s is not a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', at most %d)",
			ErrInvalidScope, Quote(s.ServiceAccount), MaxServiceAccountLength)
	}
	if s.Route != "" && !IsRouteName(s.Route) {
		return fmt.Errorf("%w: route %s is not a route name (lower-case alphanumerics, '.', '_' and '-', at most %d)",
			ErrInvalidScope, Quote(s.Route), MaxRouteLength)
	}
	return nil
}

// Covers reports whether id falls within s (the route is the caller's
// business: see CoversRoute).
func (s Scope) Covers(id Identity) bool {
	switch {
	case s.Namespace == "":
		return true
	case s.Namespace != id.Namespace:
		return false
	default:
		return s.ServiceAccount == "" || s.ServiceAccount == id.ServiceAccount
	}
}

// CoversRoute reports whether route falls within s.
func (s Scope) CoversRoute(route string) bool { return s.Route == "" || s.Route == route }

// String renders s as namespace/serviceaccount with "*" for an empty field,
// followed by " route=NAME" when a route is set.
func (s Scope) String() string {
	out := "*"
	if s.Namespace != "" {
		sa := s.ServiceAccount
		if sa == "" {
			sa = "*"
		}
		out = s.Namespace + "/" + sa
	}
	if s.Route != "" {
		out += " route=" + s.Route
	}
	return out
}

// LogValue makes slog print a Scope as a group of its fields.
func (s Scope) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("namespace", s.Namespace),
		slog.String("serviceAccount", s.ServiceAccount),
		slog.String("route", s.Route),
	)
}

// Quote renders a bad value for an error message, cut to 64 bytes on a rune
// boundary, so a message never echoes more than a short prefix of input.
func Quote(s string) string {
	if len(s) <= maxQuoted {
		return fmt.Sprintf("%q", s)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:cut], len(s))
}
