package checker

import (
	"errors"
	"fmt"
	"strings"

	"github.com/credinject/credinject/authz"
)

// ErrNotServiceAccount is wrapped by ServiceAccountUser's errors.
var ErrNotServiceAccount = errors.New("not a service account")

// ServiceAccountUser splits a service account's user name (a token's sub, a
// TokenReview's username), "system:serviceaccount:NS:NAME", and checks both
// names as the API server names them: NS a DNS-1123 label, NAME a DNS-1123
// subdomain. A name of any other shape (upper case, a '/', a NUL, non-ASCII,
// too long) is refused: it would make an identity no ServiceAccount can
// have, and its key, Vault path and logs would carry it. The error wraps
// ErrNotServiceAccount and quotes at most 64 bytes of the offending name.
// Called on a token's validation only (a cache miss), never on a hit.
func ServiceAccountUser(user string) (ns, name string, err error) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", fmt.Errorf("%w: %s is not system:serviceaccount:<namespace>:<name>", ErrNotServiceAccount, quoteShort(user))
	}
	ns, name, ok = strings.Cut(rest, ":")
	switch {
	case !ok:
		return "", "", fmt.Errorf("%w: %s has no name", ErrNotServiceAccount, quoteShort(user))
	case !authz.IsDNSLabel(ns):
		return "", "", fmt.Errorf("%w: namespace %s is not a DNS-1123 label", ErrNotServiceAccount, quoteShort(ns))
	case !authz.IsDNSSubdomain(name):
		return "", "", fmt.Errorf("%w: name %s is not a DNS-1123 subdomain", ErrNotServiceAccount, quoteShort(name))
	}
	return ns, name, nil
}

// ParseServiceAccountUser is ServiceAccountUser without the reason.
func ParseServiceAccountUser(user string) (ns, name string, ok bool) {
	ns, name, err := ServiceAccountUser(user)
	return ns, name, err == nil
}

// quoteShort quotes s for an error message, cut to 64 bytes: the names
// come from tokens, which anyone can write.
func quoteShort(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q…", s[:64])
	}
	return fmt.Sprintf("%q", s)
}
