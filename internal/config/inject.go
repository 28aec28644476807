package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// Inject is how a route's credential reaches the upstream, each value a
// template of the secret's fields ("Bearer {api_key}"). Its shapes combine:
//   - Header and Value: one header (the form every source defaults to);
//   - Headers: more headers, set together;
//   - Basic: Authorization: Basic base64(username:password);
//   - Query: query parameters (gRPC ext_authz only);
//   - Metadata: keys of the CheckResponse's dynamic metadata (gRPC only);
//   - Sign: an AWS Signature Version 4 over each request (gRPC only).
//
// Every header is set overwriting; the workload's Authorization is removed
// unless one of them (or Basic, or Sign) sets it.
type Inject struct {
	Header   string            `yaml:"header"`
	Value    string            `yaml:"value"`
	Headers  []NameValue       `yaml:"headers"`
	Query    []NameValue       `yaml:"query"`
	Basic    *Basic            `yaml:"basic"`
	Metadata map[string]string `yaml:"metadata"`
	Sign     *Sign             `yaml:"sign"`
}

// NameValue is a header or query parameter: a literal name and a value
// template.
type NameValue struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

// Basic renders Authorization: Basic base64(username ":" password)
// (RFC 7617) from two templates; the rendered username may not contain ':'.
type Basic struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// Sign signs each request with the identity's AWS credentials: the secret's
// fields access_key, secret_key and, for temporary credentials,
// security_token (Vault's aws/creds and aws/sts answer with them).
type Sign struct {
	// Type is the signature: aws-sigv4.
	Type string `yaml:"type"`
	// Service and Region are the signing scope ("s3", "bedrock";
	// "us-east-1").
	Service string `yaml:"service"`
	Region  string `yaml:"region"`
	// Payload is what the signature says of the body: body (default; its
	// SHA-256, so the gateway must send the whole body, Envoy's
	// with_request_body) or unsigned (UNSIGNED-PAYLOAD, for services that
	// accept it, such as S3).
	Payload string `yaml:"payload"`
}

// The values of inject.sign.type and inject.sign.payload.
const (
	SignAWSSigV4        = "aws-sigv4"
	PayloadBody         = "body"
	PayloadUnsigned     = "unsigned"
	maxShapeEntries     = 16
	maxTemplateLen      = 4 << 10
	headerAuthorization = "authorization"
)

var (
	queryName    = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,128}$`)
	metadataKey  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
	signingScope = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

	// reservedHeaders are headers an injection may not set: the
	// connection's own (RFC 9110 §7.6.1), the message framing, the host the
	// request is routed by, and credinject's decision headers.
	reservedHeaders = map[string]bool{
		"host": true, "connection": true, "keep-alive": true, "proxy-connection": true, "te": true,
		"transfer-encoding": true, "upgrade": true, "content-length": true,
		"x-credinject-reason": true, "x-envoy-auth-headers-to-remove": true,
		"x-credinject-namespace": true, "x-credinject-serviceaccount": true,
	}
	// signedHeaders are the headers inject.sign sets.
	signedHeaders = []string{headerAuthorization, "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}
	// reservedMetadata are the dynamic metadata keys credinject always sets.
	reservedMetadata = map[string]bool{"namespace": true, "serviceaccount": true, "route": true}
)

// isZero reports whether no shape is written.
func (in Inject) isZero() bool {
	return in.Header == "" && in.Value == "" && !in.HasShapes()
}

// HasShapes reports whether a shape other than header and value is
// written.
func (in Inject) HasShapes() bool {
	return len(in.Headers) > 0 || len(in.Query) > 0 || in.Basic != nil || len(in.Metadata) > 0 || in.Sign != nil
}

// GRPCOnly names the written shapes HTTP forward-auth cannot carry (query,
// metadata, sign), in that order.
func (in Inject) GRPCOnly() []string {
	var out []string
	if len(in.Query) > 0 {
		out = append(out, "query")
	}
	if len(in.Metadata) > 0 {
		out = append(out, "metadata")
	}
	if in.Sign != nil {
		out = append(out, "sign")
	}
	return out
}

// lowered is a copy with header names in lower case and the sign payload
// defaulted (body); the slices and pointers are copied, so completing a
// route never writes into another's.
func (in Inject) lowered() Inject {
	in.Header = asciiLower(in.Header)
	if in.Headers != nil {
		hs := make([]NameValue, len(in.Headers))
		for i, h := range in.Headers {
			hs[i] = NameValue{Name: asciiLower(h.Name), Value: h.Value}
		}
		in.Headers = hs
	}
	in.Query = append([]NameValue(nil), in.Query...)
	if in.Basic != nil {
		b := *in.Basic
		in.Basic = &b
	}
	if in.Metadata != nil {
		m := make(map[string]string, len(in.Metadata))
		for k, v := range in.Metadata {
			m[k] = v
		}
		in.Metadata = m
	}
	if in.Sign != nil {
		s := *in.Sign
		if s.Payload == "" {
			s.Payload = PayloadBody
		}
		in.Sign = &s
	}
	return in
}

// MetadataKeys are Metadata's keys, sorted.
func (in Inject) MetadataKeys() []string { return slices.Sorted(maps.Keys(in.Metadata)) }

// check reports each bad shape: key names a key under inject ("header" ->
// "routes[0].inject.header"). httpOn: the HTTP forward-auth listener is on,
// which cannot carry query, metadata or sign.
func (in Inject) check(key func(string) string, httpOn bool, bad func(key, format string, a ...any)) {
	set := map[string]string{} // header name -> the key that sets it
	setHeader := func(k, name string) {
		if prev, dup := set[name]; dup {
			bad(k, "header %q is also set by %s", name, prev)
			return
		}
		set[name] = k
	}
	if in.Header != "" || in.Value != "" {
		switch {
		case in.Header == "":
			bad(key("header"), "is required with inject.value")
		case in.Value == "":
			bad(key("value"), "is required with inject.header")
		default:
			if checkHeaderName(key("header"), in.Header, bad) {
				setHeader(key("header"), in.Header)
			}
			checkTemplate(key("value"), in.Value, true, bad)
		}
	}
	if len(in.Headers) > maxShapeEntries {
		bad(key("headers"), "has %d entries, more than %d", len(in.Headers), maxShapeEntries)
	}
	for i, h := range in.Headers {
		k := key(fmt.Sprintf("headers[%d]", i))
		if checkHeaderName(k+".name", h.Name, bad) {
			setHeader(k+".name", h.Name)
		}
		checkTemplate(k+".value", h.Value, true, bad)
	}
	if b := in.Basic; b != nil {
		setHeader(key("basic"), headerAuthorization)
		checkTemplate(key("basic.username"), b.Username, false, bad)
		checkTemplate(key("basic.password"), b.Password, false, bad)
		if b.Username == "" {
			bad(key("basic.username"), "is required: a Basic user-id rendered empty is refused")
		}
		if strings.Contains(literal(b.Username), ":") {
			bad(key("basic.username"), "contains ':', which a Basic user-id cannot (RFC 7617)")
		}
		if !placeholder.MatchString(b.Username) && !placeholder.MatchString(b.Password) {
			bad(key("basic"), "username and password have no {field} placeholder")
		}
	}
	if len(in.Query) > maxShapeEntries {
		bad(key("query"), "has %d entries, more than %d", len(in.Query), maxShapeEntries)
	}
	names := map[string]bool{}
	for i, q := range in.Query {
		k := key(fmt.Sprintf("query[%d]", i))
		if !queryName.MatchString(q.Name) {
			bad(k+".name", "%q is not a query parameter name (letters, digits, '.', '_', '~', '-'; 1 to 128)", q.Name)
		} else if names[q.Name] {
			bad(k+".name", "%q is set twice", q.Name)
		}
		names[q.Name] = true
		checkTemplate(k+".value", q.Value, true, bad)
	}
	if len(in.Metadata) > maxShapeEntries {
		bad(key("metadata"), "has %d keys, more than %d", len(in.Metadata), maxShapeEntries)
	}
	for _, m := range in.MetadataKeys() {
		k := key("metadata." + m)
		switch {
		case !metadataKey.MatchString(m):
			bad(k, "%q is not a metadata key (letters, digits, '_', '.', '-'; 1 to 128)", m)
		case reservedMetadata[m]:
			bad(k, "%q is set by credinject itself (namespace, serviceaccount, route)", m)
		}
		checkTemplate(k, in.Metadata[m], true, bad)
	}
	if s := in.Sign; s != nil {
		s.check(key, bad)
		// Headers the signature sets, or covers as the request carries
		// them: set by another shape, after signing, they would break it.
		for _, name := range slices.Sorted(maps.Keys(set)) {
			switch {
			case slices.Contains(signedHeaders, name):
				bad(set[name], "header %q is set by inject.sign", name)
			case name == "content-type", name == "content-md5", strings.HasPrefix(name, "x-amz-"):
				bad(set[name], "header %q cannot go with inject.sign: the signature covers the request's own, and one set after signing would break it", name)
			}
		}
		if len(in.Query) > 0 {
			bad(key("query"), "cannot go with inject.sign: parameters set after signing would break the signature")
		}
	}
	if only := in.GRPCOnly(); httpOn && len(only) > 0 {
		for _, s := range only {
			bad(key(s), "only gRPC ext_authz can carry it, and HTTP forward-auth (listen.http) is on: set listen.http to \"\" to serve gRPC alone")
		}
	}
}

// check reports a bad type, service, region or payload.
func (s *Sign) check(key func(string) string, bad func(key, format string, a ...any)) {
	if s.Type != SignAWSSigV4 {
		bad(key("sign.type"), "%q is not %s", s.Type, SignAWSSigV4)
	}
	if !signingScope.MatchString(s.Service) {
		bad(key("sign.service"), "%q is not an AWS service name (such as s3, bedrock)", s.Service)
	}
	if !signingScope.MatchString(s.Region) {
		bad(key("sign.region"), "%q is not an AWS region (such as us-east-1)", s.Region)
	}
	if s.Payload != PayloadBody && s.Payload != PayloadUnsigned {
		bad(key("sign.payload"), "%q is not one of %s, %s", s.Payload, PayloadBody, PayloadUnsigned)
	}
}

// checkHeaderName reports a name that is not an HTTP header name or is one
// an injection may not set; it reports whether the name passed.
func checkHeaderName(k, name string, bad func(key, format string, a ...any)) bool {
	switch {
	case !headerName.MatchString(name):
		bad(k, "%q is not a valid HTTP header name", name)
	case reservedHeaders[name]:
		bad(k, "%q is a header an injection may not set", name)
	default:
		return true
	}
	return false
}

// checkTemplate reports a value template with a control character, over
// 4 KiB, with a placeholder that is not a field name, or (needField) with
// none.
func checkTemplate(k, tmpl string, needField bool, bad func(key, format string, a ...any)) {
	if len(tmpl) > maxTemplateLen {
		bad(k, "is longer than %d bytes", maxTemplateLen)
		return
	}
	for i := 0; i < len(tmpl); i++ {
		if c := tmpl[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			bad(k, "has a control character at byte %d", i)
			return
		}
	}
	ms := placeholder.FindAllStringSubmatch(tmpl, -1)
	if needField && len(ms) == 0 {
		bad(k, "%q has no {field} placeholder", tmpl)
	}
	for _, m := range ms {
		if !fieldName.MatchString(m[1]) {
			bad(k, "placeholder {%s} is not a secret field name", m[1])
		}
	}
	if rest := placeholder.ReplaceAllString(tmpl, ""); strings.ContainsAny(rest, "{}") {
		bad(k, "%q has an unbalanced '{' or '}'", tmpl)
	}
}

// literal is tmpl without its placeholders.
func literal(tmpl string) string { return placeholder.ReplaceAllString(tmpl, "") }
