package auditbridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/events"
)

// MaxLineSize caps one audit line; longer lines are counted as malformed
// and skipped without being held in memory.
const MaxLineSize = 1 << 20

// DefaultKVMount and DefaultPath are the KV v2 mount and the path template
// credinject reads credentials from unless configured otherwise.
const (
	DefaultKVMount = "secret"
	DefaultPath    = "egress/{namespace}/{serviceaccount}"
)

// Verdict is what the bridge does with one line; its String is the result
// label of credinject_audit_lines_total.
type Verdict int

// The verdicts.
const (
	// Ignored: a well-formed audit entry that changes no watched credential
	// (a request entry, a read, a failed write, another path).
	Ignored Verdict = iota
	// Publish: a successful write or delete of a watched path.
	Publish
	// Malformed: not an audit entry (not JSON, too long, wrong shape).
	Malformed
)

func (v Verdict) String() string {
	switch v {
	case Publish:
		return "published"
	case Malformed:
		return "malformed"
	default:
		return "ignored"
	}
}

// Reasons say why a line was ignored or malformed; they are a closed set, for
// debug logs.
const (
	ReasonTooLong   = "too_long"
	ReasonNotJSON   = "not_json"
	ReasonShape     = "unexpected_shape"
	ReasonBlank     = "blank"
	ReasonType      = "not_a_response"
	ReasonFailed    = "failed_request"
	ReasonNamespace = "vault_namespace"
	ReasonOperation = "operation"
	ReasonMountType = "mount_type"
	ReasonPath      = "unwatched_path"
	ReasonIdentity  = "invalid_identity"
)

// Result is the outcome of ParseLine. Operation and Path come from the
// entry's request, which Vault never HMACs; they are safe to log. Nothing
// else of the entry is kept.
type Result struct {
	Verdict   Verdict
	Reason    string
	Operation string
	Path      string
	// Rotations to publish (Verdict Publish only): one per matching
	// template, several only when templates of different routes match.
	Rotations []events.Rotation
}

// Template is one watched path template under the KV mount, such as
// "egress/{namespace}/{serviceaccount}"; events for it carry Route.
type Template struct {
	Route string
	Path  string
}

// ParseTemplate reads a --route value, NAME=TEMPLATE.
func ParseTemplate(s string) (Template, error) {
	name, path, ok := strings.Cut(s, "=")
	if !ok || name == "" || path == "" {
		return Template{}, fmt.Errorf("%q is not NAME=TEMPLATE", s)
	}
	return Template{Route: name, Path: path}, nil
}

var placeholder = regexp.MustCompile(`\{([^{}]*)\}`)

// Matcher recognises the watched KV v2 paths. It is immutable and safe for
// concurrent use.
type Matcher struct {
	mount     string // without slashes at either end
	templates []compiled
}

type compiled struct {
	Template
	re      *regexp.Regexp
	nsIndex int // submatch index of {namespace}, 0 if absent
	saIndex int
}

// NewMatcher compiles the templates under mount (default DefaultKVMount);
// with no templates it watches DefaultPath. A template's placeholders are
// {namespace} and {serviceaccount}, each at most once, each matching one
// or more characters other than '/'; each is bounded as
// authz.CheckPathTemplate requires (so the split is never ambiguous), and {serviceaccount} needs
// {namespace}. A template with no placeholder is allowed: a write to it
// rotates every identity (of its route).
func NewMatcher(mount string, templates []Template) (*Matcher, error) {
	mount = strings.Trim(strings.TrimSpace(mount), "/")
	if mount == "" {
		mount = DefaultKVMount
	}
	if strings.Contains(mount, "..") || strings.ContainsAny(mount, "{}") {
		return nil, fmt.Errorf("kv mount %q is not a mount path", mount)
	}
	if len(templates) == 0 {
		templates = []Template{{Path: DefaultPath}}
	}
	m := &Matcher{mount: mount}
	for _, t := range templates {
		c, err := compile(t)
		if err != nil {
			return nil, err
		}
		m.templates = append(m.templates, c)
	}
	return m, nil
}

func compile(t Template) (compiled, error) {
	if t.Route != "" {
		if err := (events.Rotation{Route: t.Route}).Validate(); err != nil {
			return compiled{}, fmt.Errorf("route %q: %w", t.Route, err)
		}
	}
	p := t.Path
	if p == "" || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.Contains(p, "//") ||
		slices.Contains(strings.Split(p, "/"), "..") {
		return compiled{}, fmt.Errorf("path template %q must be a relative path without empty or '..' segments", p)
	}
	if err := authz.CheckPathTemplate(p); err != nil {
		return compiled{}, err
	}
	var (
		re   strings.Builder
		c    = compiled{Template: t}
		last = 0
		n    = 0
	)
	re.WriteString("^")
	for _, loc := range placeholder.FindAllStringSubmatchIndex(p, -1) {
		if loc[0] == last && n > 0 {
			return compiled{}, fmt.Errorf("path template %q: placeholders must be separated by other characters", p)
		}
		if err := literal(p, p[last:loc[0]], &re); err != nil {
			return compiled{}, err
		}
		// Any segment text: with authz.CheckPathTemplate's rule the text
		// beside a placeholder holds no name character, so a path a valid
		// identity expands to splits one way only, and a capture that is
		// no name is reported as invalid_identity.
		re.WriteString("([^/]+)")
		n++
		switch name := p[loc[2]:loc[3]]; name {
		case "namespace":
			if c.nsIndex != 0 {
				return compiled{}, fmt.Errorf("path template %q: {namespace} twice", p)
			}
			c.nsIndex = n
		case "serviceaccount":
			if c.saIndex != 0 {
				return compiled{}, fmt.Errorf("path template %q: {serviceaccount} twice", p)
			}
			c.saIndex = n
		default:
			return compiled{}, fmt.Errorf("path template %q: unknown placeholder {%s} (use {namespace}, {serviceaccount})", p, name)
		}
		last = loc[1]
	}
	if err := literal(p, p[last:], &re); err != nil {
		return compiled{}, err
	}
	re.WriteString("$")
	if c.saIndex != 0 && c.nsIndex == 0 {
		return compiled{}, fmt.Errorf("path template %q: {serviceaccount} without {namespace}", p)
	}
	var err error
	if c.re, err = regexp.Compile(re.String()); err != nil {
		return compiled{}, fmt.Errorf("path template %q: %w", p, err)
	}
	return c, nil
}

// literal appends the text between placeholders, which must hold no brace.
func literal(tmpl, s string, re *strings.Builder) error {
	if strings.ContainsAny(s, "{}") {
		return fmt.Errorf("path template %q has an unbalanced brace", tmpl)
	}
	re.WriteString(regexp.QuoteMeta(s))
	return nil
}

// Mount is the KV v2 mount the matcher watches.
func (m *Matcher) Mount() string { return m.mount }

// KV v2 subpaths whose writes change what a credential read returns (data/,
// metadata/ and the version operations); reads and config/ are not among
// the operations below anyway.
var kvSubpaths = []string{"data", "metadata", "delete", "destroy", "undelete"}

// Operations that change a secret. KV v2 soft-delete, destroy and undelete
// are "update" operations on their own subpaths.
var writeOps = []string{"create", "update", "delete", "patch"}

// auditEntry is the part of a Vault audit entry (vault/audit/types.go,
// type entry) the bridge reads. Everything else, including the HMAC'd
// auth, request data and response data, is skipped by the decoder and
// never held.
type auditEntry struct {
	Type    string `json:"type"`
	Error   string `json:"error"`
	Request *struct {
		Operation string `json:"operation"`
		Path      string `json:"path"`
		MountType string `json:"mount_type"`
		Namespace *struct {
			Path string `json:"path"`
		} `json:"namespace"`
	} `json:"request"`
	Response *struct {
		Data *struct {
			// An error response (a logical.ErrorResponse such as a
			// check-and-set mismatch) carries data.error; its value is
			// HMAC'd, its presence is enough.
			Error json.RawMessage `json:"error"`
		} `json:"data"`
	} `json:"response"`
}

// ParseLine classifies one line of a Vault audit device in JSON format (a
// trailing newline is fine). Only response entries without an error whose
// request is a create, update, delete or patch of
// <mount>/{data,metadata,delete,destroy,undelete}/<template> are published,
// with the identity the template's placeholders capture. Text before the
// first '{' (Vault's prefix option) is skipped. ParseLine never panics and
// keeps no reference to line.
func (m *Matcher) ParseLine(line []byte) Result {
	if len(line) > MaxLineSize {
		return Result{Verdict: Malformed, Reason: ReasonTooLong}
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return Result{Verdict: Ignored, Reason: ReasonBlank}
	}
	if line[0] != '{' {
		i := bytes.IndexByte(line, '{')
		if i < 0 {
			return Result{Verdict: Malformed, Reason: ReasonNotJSON}
		}
		line = line[i:]
	}
	var e auditEntry
	if err := json.Unmarshal(line, &e); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return Result{Verdict: Malformed, Reason: ReasonShape}
		}
		return Result{Verdict: Malformed, Reason: ReasonNotJSON}
	}
	if e.Type == "" || e.Request == nil {
		return Result{Verdict: Malformed, Reason: ReasonShape}
	}
	r := Result{Verdict: Ignored, Operation: e.Request.Operation, Path: e.Request.Path}
	switch {
	case e.Type != "response":
		r.Reason = ReasonType
	case e.Error != "" || e.Response != nil && e.Response.Data != nil && e.Response.Data.Error != nil:
		r.Reason = ReasonFailed
	case e.Request.Namespace != nil && strings.Trim(e.Request.Namespace.Path, "/") != "":
		r.Reason = ReasonNamespace
	case !slices.Contains(writeOps, e.Request.Operation):
		r.Reason = ReasonOperation
	case e.Request.MountType != "" && e.Request.MountType != "kv":
		r.Reason = ReasonMountType
	default:
		r.Rotations, r.Reason = m.match(e.Request.Path)
		if len(r.Rotations) > 0 {
			r.Verdict = Publish
		}
	}
	return r
}

// match returns the rotations for a request path, or the reason there are
// none.
func (m *Matcher) match(path string) ([]events.Rotation, string) {
	rest, ok := strings.CutPrefix(path, m.mount+"/")
	if !ok {
		return nil, ReasonPath
	}
	sub, key, ok := strings.Cut(rest, "/")
	if !ok || !slices.Contains(kvSubpaths, sub) {
		return nil, ReasonPath
	}
	var (
		out     []events.Rotation
		invalid bool
	)
	for _, c := range m.templates {
		sm := c.re.FindStringSubmatch(key)
		if sm == nil {
			continue
		}
		r := events.Rotation{Route: c.Route}
		if c.nsIndex > 0 {
			r.Namespace = sm[c.nsIndex]
		}
		if c.saIndex > 0 {
			r.ServiceAccount = sm[c.saIndex]
		}
		if r.Validate() != nil {
			invalid = true
			continue
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		if invalid {
			return nil, ReasonIdentity
		}
		return nil, ReasonPath
	}
	return reduce(out), ""
}

// reduce drops rotations another one in the list covers: duplicates, and
// routed ones when the same identity also matched a template without a
// route (an event without a route means every route).
func reduce(rs []events.Rotation) []events.Rotation {
	if len(rs) == 1 {
		return rs
	}
	out := rs[:0:0]
	for _, r := range rs {
		covered := slices.ContainsFunc(out, func(o events.Rotation) bool { return covers(o, r) })
		if covered {
			continue
		}
		out = slices.DeleteFunc(out, func(o events.Rotation) bool { return covers(r, o) })
		out = append(out, r)
	}
	return out
}

// covers reports whether publishing a makes publishing b unnecessary.
func covers(a, b events.Rotation) bool {
	if a.Route != "" && a.Route != b.Route {
		return false
	}
	if a.Namespace == "" {
		return true
	}
	if b.Namespace == "" {
		return false
	}
	return a.Covers(authz.NewIdentity(b.Namespace, b.ServiceAccount))
}
