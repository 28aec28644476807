package authz

import (
	"errors"
	"fmt"
	"strings"
)

// Limits of the Kubernetes names an Identity is made of.
const (
	MaxNamespaceLength      = 63  // a DNS-1123 label
	MaxServiceAccountLength = 253 // a DNS-1123 subdomain
	MaxRouteLength          = 253
)

// Identity is a workload identity: one Kubernetes ServiceAccount. Build it
// with NewIdentity or ParseIdentity so Key is set.
type Identity struct {
	Namespace      string
	ServiceAccount string
	// key is "namespace/serviceaccount", set by NewIdentity and
	// ParseIdentity only, so that it always names the two fields above.
	key string
}

// Key is "namespace/serviceaccount": the credential cache's, the
// informer's and the logs' name for the identity.
func (id Identity) Key() string { return id.key }

// NewIdentity returns the identity namespace/serviceAccount. It does not
// validate the names (tokens already vouched for them); see ParseIdentity.
func NewIdentity(namespace, serviceAccount string) Identity {
	return Identity{Namespace: namespace, ServiceAccount: serviceAccount, key: namespace + "/" + serviceAccount}
}

// ErrInvalidIdentity is wrapped by ParseIdentity's errors.
var ErrInvalidIdentity = errors.New("invalid identity")

// ParseIdentity parses "namespace/serviceaccount" (user input: a command
// line, an event) and checks both names' Kubernetes forms.
func ParseIdentity(key string) (Identity, error) {
	ns, sa, ok := strings.Cut(key, "/")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q is not namespace/serviceaccount", ErrInvalidIdentity, key)
	}
	if !IsDNSLabel(ns) {
		return Identity{}, fmt.Errorf("%w: namespace %q is not a DNS-1123 label", ErrInvalidIdentity, ns)
	}
	if !IsDNSSubdomain(sa) {
		return Identity{}, fmt.Errorf("%w: serviceaccount %q is not a DNS-1123 subdomain", ErrInvalidIdentity, sa)
	}
	return NewIdentity(ns, sa), nil
}

// String is the identity's Key.
func (id Identity) String() string { return id.key }

// IsDNSLabel reports whether s is a DNS-1123 label (a namespace name):
// lower-case alphanumerics and '-', at most 63 bytes.
func IsDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > MaxNamespaceLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isLowerAlnum(c):
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// IsDNSSubdomain reports whether s is a DNS-1123 subdomain (a
// ServiceAccount name): dot-separated labels, at most 253 bytes.
func IsDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > MaxServiceAccountLength {
		return false
	}
	for {
		label, rest, more := strings.Cut(s, ".")
		// A subdomain's labels have no length limit of their own beyond the
		// total (Kubernetes IsDNS1123Subdomain), so only check their shape.
		if len(label) == 0 || !isLowerAlnum(label[0]) || !isLowerAlnum(label[len(label)-1]) {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isLowerAlnum(c) && c != '-' {
				return false
			}
		}
		if !more {
			return true
		}
		s = rest
	}
}

// IsRouteName reports whether s is a route name:
// ^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$, at most 253 bytes. The configuration
// and rotation events use this one rule.
func IsRouteName(s string) bool {
	if len(s) == 0 || len(s) > MaxRouteLength || !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isLowerAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
