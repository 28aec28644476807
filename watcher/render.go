package watcher

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// ErrInvalidValue marks a secret that cannot be injected as a header value:
// Render's errors wrap it, and it is authz.ErrInvalidCredential.
var ErrInvalidValue = authz.ErrInvalidCredential

// Render fills a template like "Bearer {api_key}" from the secret's fields and
// checks that the result is a legal HTTP header value. Errors never contain
// the secret.
func Render(tmpl string, data map[string]any) (string, error) {
	out, err := fill(tmpl, data)
	if err != nil {
		return "", err
	}
	if err := checkHeaderValue(out); err != nil {
		return "", err
	}
	return out, nil
}

// fill replaces each {field} of tmpl with the secret's field, a non-empty
// string.
func fill(tmpl string, data map[string]any) (string, error) {
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
	return b.String(), nil
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

// Shapes are the templates of a route's injection beyond its one header
// (Route.Header, Route.Value): config's inject.headers, basic, query,
// metadata and sign.
type Shapes struct {
	// Headers are set after Route.Header (names lower-case).
	Headers []Template
	// Basic renders authorization: Basic base64(username:password).
	Basic *BasicTemplate
	// Query parameters and Metadata keys, in the order they are answered.
	Query    []Template
	Metadata []Template
	// Sign signs each request with the secret's AWS credentials.
	Sign *SignSpec
}

// Template is a literal name and a value template ("{api_key}").
type Template struct {
	Name, Value string
}

// BasicTemplate is the username and password templates of Basic auth.
type BasicTemplate struct {
	Username, Password string
}

// SignSpec is how requests are signed: AWS Signature Version 4 in Service
// and Region, over the body's hash or UNSIGNED-PAYLOAD.
type SignSpec struct {
	Service, Region string
	UnsignedPayload bool
}

// The secret's fields inject.sign reads: access_key and secret_key, and
// security_token for temporary credentials (Vault's aws/creds and aws/sts
// answer with these names; security_token is null for an IAM user's keys).
const (
	FieldAccessKey     = "access_key"
	FieldSecretKey     = "secret_key"
	FieldSecurityToken = "security_token"
)

// Injection is a rendered injection: its first header and the rest.
type Injection struct {
	Header, Value string
	Shapes        *cache.Shapes
}

// RenderInjection renders every shape of rt from the secret's fields: the
// header (Route.Header and Route.Value), Basic, the other headers, query
// parameters, metadata and the signing credentials. The first header set
// becomes Injection.Header; Shapes is nil when nothing else is. Errors wrap
// ErrInvalidValue, name the shape and never contain the secret.
func RenderInjection(rt *Route, data map[string]any) (Injection, error) {
	var headers []cache.Field
	if rt.Header != "" {
		v, err := Render(rt.Value, data)
		if err != nil {
			return Injection{}, fmt.Errorf("header %s: %w", rt.Header, err)
		}
		headers = append(headers, cache.Field{Name: rt.Header, Value: v})
	}
	sh := rt.Shapes
	if sh == nil {
		sh = &Shapes{} // the header alone
	}
	if b := sh.Basic; b != nil {
		v, err := renderBasic(b, data)
		if err != nil {
			return Injection{}, err
		}
		headers = append(headers, cache.Field{Name: "authorization", Value: v})
	}
	more, err := renderAll("header", sh.Headers, data)
	if err != nil {
		return Injection{}, err
	}
	headers = append(headers, more...)
	var out cache.Shapes
	if out.Query, err = renderAll("query parameter", sh.Query, data); err != nil {
		return Injection{}, err
	}
	for i := range out.Query {
		// Envoy sets the value into the target as given: '&', '=', '#'
		// or a space in a secret must not make another parameter or a
		// broken request.
		out.Query[i].Value = url.QueryEscape(out.Query[i].Value)
	}
	if out.Metadata, err = renderAll("metadata key", sh.Metadata, data); err != nil {
		return Injection{}, err
	}
	if s := sh.Sign; s != nil {
		if out.Sign, err = signingKey(s, data); err != nil {
			return Injection{}, err
		}
	}
	var in Injection
	if len(headers) > 0 {
		in.Header, in.Value = headers[0].Name, headers[0].Value
	}
	if len(headers) > 1 {
		out.Headers = headers[1:]
	}
	if out.Headers != nil || out.Query != nil || out.Metadata != nil || out.Sign != nil {
		in.Shapes = &out
	}
	if in.Header == "" && in.Shapes == nil {
		return Injection{}, fmt.Errorf("%w: the route injects nothing", ErrInvalidValue)
	}
	return in, nil
}

func renderAll(what string, ts []Template, data map[string]any) ([]cache.Field, error) {
	if len(ts) == 0 {
		return nil, nil
	}
	out := make([]cache.Field, len(ts))
	for i, t := range ts {
		v, err := Render(t.Value, data)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, t.Name, err)
		}
		out[i] = cache.Field{Name: t.Name, Value: v}
	}
	return out, nil
}

// renderBasic is "Basic " and base64(username ":" password) (RFC 7617):
// the username may not contain ':', neither may contain a control
// character.
func renderBasic(b *BasicTemplate, data map[string]any) (string, error) {
	user, err := fill(b.Username, data)
	if err != nil {
		return "", fmt.Errorf("basic username: %w", err)
	}
	pass, err := fill(b.Password, data)
	if err != nil {
		return "", fmt.Errorf("basic password: %w", err)
	}
	switch {
	case user == "":
		return "", fmt.Errorf("%w: basic username is empty", ErrInvalidValue)
	case strings.Contains(user, ":"):
		return "", fmt.Errorf("%w: basic username contains ':'", ErrInvalidValue)
	case hasControl(user):
		return "", fmt.Errorf("%w: basic username has a control character", ErrInvalidValue)
	case hasControl(pass):
		return "", fmt.Errorf("%w: basic password has a control character", ErrInvalidValue)
	}
	v := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	if err := checkHeaderValue(v); err != nil {
		return "", fmt.Errorf("basic: %w", err) // over 8 KiB
	}
	return v, nil
}

// signingKey reads the AWS credentials from the secret: access_key and
// secret_key non-empty strings, security_token a string, null or absent.
func signingKey(s *SignSpec, data map[string]any) (*cache.SigV4, error) {
	k := &cache.SigV4{Service: s.Service, Region: s.Region, UnsignedPayload: s.UnsignedPayload}
	for _, f := range []struct {
		name     string
		dst      *string
		required bool
	}{{FieldAccessKey, &k.AccessKey, true}, {FieldSecretKey, &k.SecretKey, true}, {FieldSecurityToken, &k.SessionToken, false}} {
		v, ok := data[f.name]
		if !ok || v == nil {
			if f.required {
				return nil, fmt.Errorf("%w: sign: field %q is missing", ErrInvalidValue, f.name)
			}
			continue
		}
		str, ok := v.(string)
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: sign: field %q is not a string", ErrInvalidValue, f.name)
		case str == "" && f.required:
			return nil, fmt.Errorf("%w: sign: field %q is empty", ErrInvalidValue, f.name)
		case str != "" && checkHeaderValue(str) != nil, strings.ContainsAny(str, " \t"):
			return nil, fmt.Errorf("%w: sign: field %q has a space or control character", ErrInvalidValue, f.name)
		case f.name == FieldAccessKey && strings.ContainsAny(str, "/,="):
			// It is written into Credential=<key>/<scope>, the list's
			// separators would misplace the scope.
			return nil, fmt.Errorf("%w: sign: field %q has '/', ',' or '='", ErrInvalidValue, f.name)
		}
		*f.dst = str
	}
	return k, nil
}

// hasControl reports a byte below 0x20 or DEL.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
