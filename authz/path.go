package authz

import (
	"errors"
	"fmt"
	"strings"
)

// The placeholders of a Vault path template.
const (
	PlaceholderNamespace      = "{namespace}"
	PlaceholderServiceAccount = "{serviceaccount}"
)

// ErrPathTemplate is wrapped by CheckPathTemplate's errors.
var ErrPathTemplate = errors.New("invalid path template")

// ExpandPath fills the placeholders {namespace} and {serviceaccount} of a
// Vault path template with id's names. The template must have passed
// CheckPathTemplate: only then do two identities never expand alike.
func ExpandPath(tmpl string, id Identity) string {
	if !strings.Contains(tmpl, "{") {
		return tmpl
	}
	return strings.NewReplacer(PlaceholderNamespace, id.Namespace, PlaceholderServiceAccount, id.ServiceAccount).Replace(tmpl)
}

// CheckPathTemplate checks a Vault path template's placeholders: each is
// {namespace} or {serviceaccount}, braces are balanced, and each placeholder
// is bounded on both sides by the start or end of the template, '/', or a
// character no Kubernetes name contains (anything but a-z, 0-9, '-' and
// '.'; e.g. '_'). Two placeholders never touch.
//
// The rule makes expansion one-to-one, in this template and across
// templates: with a name character beside a placeholder,
// "creds/{namespace}-{serviceaccount}" expands team/a-app and team-a/app to
// the same path, and a Vault policy templated the same way lets both
// identities read it. Errors wrap ErrPathTemplate and name the placeholder
// and the character at fault.
func CheckPathTemplate(tmpl string) error {
	prevEnd := -1 // end of the previous placeholder
	for i := 0; i < len(tmpl); {
		switch tmpl[i] {
		case '}':
			return fmt.Errorf("%w: %q has a '}' without its '{'", ErrPathTemplate, tmpl)
		case '{':
		default:
			i++
			continue
		}
		n := strings.IndexAny(tmpl[i+1:], "{}")
		if n < 0 || tmpl[i+1+n] != '}' {
			return fmt.Errorf("%w: %q has a '{' without its '}'", ErrPathTemplate, tmpl)
		}
		end := i + n + 2
		ph := tmpl[i:end]
		if ph != PlaceholderNamespace && ph != PlaceholderServiceAccount {
			return fmt.Errorf("%w: %q: unknown placeholder %s (use %s, %s)", ErrPathTemplate, tmpl, ph, PlaceholderNamespace, PlaceholderServiceAccount)
		}
		if i == prevEnd {
			return fmt.Errorf("%w: %q: %s touches %s: two placeholders must be separated by '/' or a character no Kubernetes name contains (such as '_')",
				ErrPathTemplate, tmpl, tmpl[:i][strings.LastIndexByte(tmpl[:i], '{'):], ph)
		}
		if i > 0 && isNameChar(tmpl[i-1]) {
			return adjacent(tmpl, ph, "preceded", tmpl[i-1])
		}
		if end < len(tmpl) && isNameChar(tmpl[end]) {
			return adjacent(tmpl, ph, "followed", tmpl[end])
		}
		prevEnd = end
		i = end
	}
	return nil
}

func adjacent(tmpl, ph, side string, c byte) error {
	return fmt.Errorf("%w: %q: %s is %s by %q, a character Kubernetes names contain, so two identities could expand to the same path "+
		"(team/a-app and team-a/app); put '/' or a character no name contains (anything but a-z, 0-9, '-' and '.'; such as '_') on both sides of each placeholder",
		ErrPathTemplate, tmpl, ph, side, string(c))
}

// isNameChar reports whether c may occur in a namespace or ServiceAccount
// name (DNS-1123 labels and subdomains).
func isNameChar(c byte) bool { return isLowerAlnum(c) || c == '-' || c == '.' }
