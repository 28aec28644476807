package watcher

import (
	"fmt"
	"strings"

	"github.com/credinject/credinject/authz"
)

// ErrInvalidValue marks a secret that cannot be injected as a header value:
// Render's errors wrap it, and it is authz.ErrInvalidCredential.
var ErrInvalidValue = authz.ErrInvalidCredential

// Render fills a template like "Bearer {api_key}" from the secret's fields and
// checks that the result is a legal HTTP header value. Errors never contain
// the secret.
func Render(tmpl string, data map[string]any) (string, error) {
	var b strings.Builder
	rest := tmpl
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			b.WriteString(rest)
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("%w: unbalanced template", ErrInvalidValue)
		}
		b.WriteString(rest[:i])
		field := rest[i+1 : i+j]
		v, ok := data[field]
		if !ok {
			return "", fmt.Errorf("%w: field %q is missing", ErrInvalidValue, field)
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%w: field %q is not a string", ErrInvalidValue, field)
		}
		if s == "" {
			return "", fmt.Errorf("%w: field %q is empty", ErrInvalidValue, field)
		}
		b.WriteString(s)
		rest = rest[i+j+1:]
	}
	out := b.String()
	if err := checkHeaderValue(out); err != nil {
		return "", err
	}
	return out, nil
}

// checkHeaderValue enforces RFC 9110 field-value: visible ASCII, obs-text,
// SP and HTAB inside, no CR, LF, NUL or other controls, no surrounding space.
func checkHeaderValue(v string) error {
	if v == "" {
		return fmt.Errorf("%w: empty", ErrInvalidValue)
	}
	if len(v) > 8<<10 {
		return fmt.Errorf("%w: longer than 8 KiB", ErrInvalidValue)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\t' || c == ' ' {
			if i == 0 || i == len(v)-1 {
				return fmt.Errorf("%w: leading or trailing whitespace", ErrInvalidValue)
			}
			continue
		}
		if c < 0x21 || c == 0x7f {
			return fmt.Errorf("%w: control character at byte %d", ErrInvalidValue, i)
		}
	}
	return nil
}
