package auditbridge

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/credinject/credinject/events"
)

// realLines are the lines a real Vault 1.21.4 file audit device wrote for a
// kv v2 put, put, patch, read, soft delete, undelete, destroy, metadata
// update, a check-and-set failure, a metadata delete and a refused write,
// around the enabling and disabling of the device (captured against the
// test bed; the values are HMACs of throwaway test data).
func realLines(t testing.TB) [][]byte {
	t.Helper()
	f, err := os.Open("testdata/vault-1.21.4-kv-v2.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, MaxLineSize)
	for sc.Scan() {
		lines = append(lines, bytes.Clone(sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

func defaultMatcher(t testing.TB) *Matcher {
	t.Helper()
	m, err := NewMatcher("", nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseLineRealVault(t *testing.T) {
	m := defaultMatcher(t)
	id := []events.Rotation{{Namespace: "ns1", ServiceAccount: "sa1"}}
	type want struct {
		op, path, reason string
		rot              []events.Rotation
	}
	ignored := func(op, path, reason string) want { return want{op: op, path: path, reason: reason} }
	published := func(op, path string) want { return want{op: op, path: path, rot: id} }
	const (
		data = "secret/data/egress/ns1/sa1"
		meta = "secret/metadata/egress/ns1/sa1"
	)
	wants := []want{
		ignored("update", "sys/audit/test", ReasonType),
		ignored("update", "sys/audit/cap", ReasonMountType),
		ignored("create", data, ReasonType), published("create", data),
		ignored("update", data, ReasonType), published("update", data),
		ignored("patch", data, ReasonType), published("patch", data),
		ignored("read", data, ReasonType), ignored("read", data, ReasonOperation),
		ignored("delete", data, ReasonType), published("delete", data),
		ignored("update", "secret/undelete/egress/ns1/sa1", ReasonType), published("update", "secret/undelete/egress/ns1/sa1"),
		ignored("update", "secret/destroy/egress/ns1/sa1", ReasonType), published("update", "secret/destroy/egress/ns1/sa1"),
		ignored("update", meta, ReasonType), published("update", meta),
		ignored("update", data, ReasonType), ignored("update", data, ReasonFailed), // check-and-set mismatch
		ignored("delete", meta, ReasonType), published("delete", meta),
		ignored("create", data, ReasonType), ignored("create", data, ReasonFailed), // refused write
		ignored("delete", "sys/audit/cap", ReasonType),
	}
	lines := realLines(t)
	if len(lines) != len(wants) {
		t.Fatalf("%d lines in the capture, want %d", len(lines), len(wants))
	}
	for i, line := range lines {
		got := m.ParseLine(line)
		w := wants[i]
		wantVerdict := Ignored
		if w.rot != nil {
			wantVerdict = Publish
		}
		if got.Verdict != wantVerdict || got.Reason != w.reason || got.Operation != w.op || got.Path != w.path ||
			!reflect.DeepEqual(got.Rotations, w.rot) {
			t.Errorf("line %d: got %+v, want %v %+v", i+1, got, wantVerdict, w)
		}
	}
}

// line builds an audit entry like Vault's; set changes or deletes (nil)
// members by dotted path.
func line(t testing.TB, typ, op, path string, set map[string]any) []byte {
	t.Helper()
	e := map[string]any{
		"type": typ,
		"time": "2026-03-01T12:00:00Z",
		"auth": map[string]any{"client_token": "hmac-sha256:abc", "policies": []string{"root"}},
		"request": map[string]any{
			"id": "1", "operation": op, "path": path, "mount_type": "kv", "mount_point": "secret/",
			"namespace": map[string]any{"id": "root"},
			"data":      map[string]any{"data": map[string]any{"api_key": "hmac-sha256:def"}},
		},
		"response": map[string]any{"data": map[string]any{"version": 3}},
	}
	for k, v := range set {
		parts := strings.Split(k, ".")
		obj := e
		for _, p := range parts[:len(parts)-1] {
			next, ok := obj[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				obj[p] = next
			}
			obj = next
		}
		if v == nil {
			delete(obj, parts[len(parts)-1])
		} else {
			obj[parts[len(parts)-1]] = v
		}
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseLine(t *testing.T) {
	m := defaultMatcher(t)
	const data = "secret/data/egress/ns1/sa1"
	ns1sa1 := []events.Rotation{{Namespace: "ns1", ServiceAccount: "sa1"}}
	tests := map[string]struct {
		in      []byte
		verdict Verdict
		reason  string
		rot     []events.Rotation
	}{
		"kv put (create)":       {in: line(t, "response", "create", data, nil), verdict: Publish, rot: ns1sa1},
		"kv put (update)":       {in: line(t, "response", "update", data, nil), verdict: Publish, rot: ns1sa1},
		"kv patch":              {in: line(t, "response", "patch", data, nil), verdict: Publish, rot: ns1sa1},
		"kv delete":             {in: line(t, "response", "delete", data, nil), verdict: Publish, rot: ns1sa1},
		"metadata delete":       {in: line(t, "response", "delete", "secret/metadata/egress/ns1/sa1", nil), verdict: Publish, rot: ns1sa1},
		"metadata update":       {in: line(t, "response", "update", "secret/metadata/egress/ns1/sa1", nil), verdict: Publish, rot: ns1sa1},
		"soft delete":           {in: line(t, "response", "update", "secret/delete/egress/ns1/sa1", nil), verdict: Publish, rot: ns1sa1},
		"destroy":               {in: line(t, "response", "update", "secret/destroy/egress/ns1/sa1", nil), verdict: Publish, rot: ns1sa1},
		"undelete":              {in: line(t, "response", "update", "secret/undelete/egress/ns1/sa1", nil), verdict: Publish, rot: ns1sa1},
		"dotted serviceaccount": {in: line(t, "response", "update", "secret/data/egress/ns1/sa.v2", nil), verdict: Publish, rot: []events.Rotation{{Namespace: "ns1", ServiceAccount: "sa.v2"}}},
		"trailing newline":      {in: append(line(t, "response", "update", data, nil), '\r', '\n'), verdict: Publish, rot: ns1sa1},
		"prefix option":         {in: append([]byte("vault-audit: "), line(t, "response", "update", data, nil)...), verdict: Publish, rot: ns1sa1},
		"no mount_type":         {in: line(t, "response", "update", data, map[string]any{"request.mount_type": nil}), verdict: Publish, rot: ns1sa1},
		"no response":           {in: line(t, "response", "delete", data, map[string]any{"response": nil}), verdict: Publish, rot: ns1sa1},
		"root namespace path":   {in: line(t, "response", "update", data, map[string]any{"request.namespace.path": ""}), verdict: Publish, rot: ns1sa1},

		"request entry":        {in: line(t, "request", "update", data, nil), verdict: Ignored, reason: ReasonType},
		"unknown entry type":   {in: line(t, "weird", "update", data, nil), verdict: Ignored, reason: ReasonType},
		"read":                 {in: line(t, "response", "read", data, nil), verdict: Ignored, reason: ReasonOperation},
		"list":                 {in: line(t, "response", "list", "secret/metadata/egress/ns1/", nil), verdict: Ignored, reason: ReasonOperation},
		"failed":               {in: line(t, "response", "update", data, map[string]any{"error": "permission denied"}), verdict: Ignored, reason: ReasonFailed},
		"error response":       {in: line(t, "response", "update", data, map[string]any{"response.data": map[string]any{"error": "hmac-sha256:1"}}), verdict: Ignored, reason: ReasonFailed},
		"enterprise namespace": {in: line(t, "response", "update", data, map[string]any{"request.namespace.path": "team1/"}), verdict: Ignored, reason: ReasonNamespace},
		"other engine":         {in: line(t, "response", "update", data, map[string]any{"request.mount_type": "generic"}), verdict: Ignored, reason: ReasonMountType},
		"other mount":          {in: line(t, "response", "update", "kv/data/egress/ns1/sa1", nil), verdict: Ignored, reason: ReasonPath},
		"mount name prefix":    {in: line(t, "response", "update", "secrets/data/egress/ns1/sa1", nil), verdict: Ignored, reason: ReasonPath},
		"kv config":            {in: line(t, "response", "update", "secret/config", nil), verdict: Ignored, reason: ReasonPath},
		"kv v1 style path":     {in: line(t, "response", "update", "secret/egress/ns1/sa1", nil), verdict: Ignored, reason: ReasonPath},
		"other prefix":         {in: line(t, "response", "update", "secret/data/openai/ns1/sa1", nil), verdict: Ignored, reason: ReasonPath},
		"too few segments":     {in: line(t, "response", "update", "secret/data/egress/ns1", nil), verdict: Ignored, reason: ReasonPath},
		"too many segments":    {in: line(t, "response", "update", "secret/data/egress/ns1/sa1/x", nil), verdict: Ignored, reason: ReasonPath},
		"empty segment":        {in: line(t, "response", "update", "secret/data/egress//sa1", nil), verdict: Ignored, reason: ReasonPath},
		"bad namespace":        {in: line(t, "response", "update", "secret/data/egress/NS1/sa1", nil), verdict: Ignored, reason: ReasonIdentity},
		"bad serviceaccount":   {in: line(t, "response", "update", "secret/data/egress/ns1/sa_1", nil), verdict: Ignored, reason: ReasonIdentity},
		"blank":                {in: []byte(" \r"), verdict: Ignored, reason: ReasonBlank},

		"not json":             {in: []byte("hello vault"), verdict: Malformed, reason: ReasonNotJSON},
		"truncated":            {in: line(t, "response", "update", data, nil)[:100], verdict: Malformed, reason: ReasonNotJSON},
		"two objects":          {in: []byte(`{"type":"response"}{"type":"response"}`), verdict: Malformed, reason: ReasonNotJSON},
		"array":                {in: []byte(`[{"type":"response"}]`), verdict: Malformed, reason: ReasonNotJSON},
		"jsonx":                {in: []byte(`<json:object name="request"><json:string name="path">secret/data/egress/ns1/sa1</json:string></json:object>`), verdict: Malformed, reason: ReasonNotJSON},
		"empty object":         {in: []byte(`{}`), verdict: Malformed, reason: ReasonShape},
		"no request":           {in: line(t, "response", "update", data, map[string]any{"request": nil}), verdict: Malformed, reason: ReasonShape},
		"null request":         {in: []byte(`{"type":"response","request":null}`), verdict: Malformed, reason: ReasonShape},
		"no type":              {in: line(t, "response", "update", data, map[string]any{"type": nil}), verdict: Malformed, reason: ReasonShape},
		"numeric type":         {in: line(t, "response", "update", data, map[string]any{"type": 1}), verdict: Malformed, reason: ReasonShape},
		"request is a string":  {in: []byte(`{"type":"response","request":"secret/data/egress/ns1/sa1"}`), verdict: Malformed, reason: ReasonShape},
		"path is a number":     {in: line(t, "response", "update", data, map[string]any{"request.path": 7}), verdict: Malformed, reason: ReasonShape},
		"response data a list": {in: line(t, "response", "update", data, map[string]any{"response.data": []int{1}}), verdict: Malformed, reason: ReasonShape},
		"too long":             {in: append(line(t, "response", "update", data, nil), bytes.Repeat([]byte(" "), MaxLineSize)...), verdict: Malformed, reason: ReasonTooLong},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := m.ParseLine(tc.in)
			if got.Verdict != tc.verdict || got.Reason != tc.reason || !reflect.DeepEqual(got.Rotations, tc.rot) {
				t.Errorf("ParseLine = %v/%q %+v, want %v/%q %+v", got.Verdict, got.Reason, got.Rotations, tc.verdict, tc.reason, tc.rot)
			}
		})
	}
}

func TestMatcherTemplates(t *testing.T) {
	ok := func(ts ...events.Rotation) []events.Rotation { return ts }
	tests := map[string]struct {
		mount     string
		templates []Template
		path      string
		want      []events.Rotation
	}{
		"default": {path: "secret/data/egress/a/b", want: ok(events.Rotation{Namespace: "a", ServiceAccount: "b"})},
		"route": {
			templates: []Template{{Path: DefaultPath}, {Route: "openai", Path: "openai/{namespace}/{serviceaccount}"}},
			path:      "secret/data/openai/a/b",
			want:      ok(events.Rotation{Namespace: "a", ServiceAccount: "b", Route: "openai"}),
		},
		"routes sharing a template": {
			templates: []Template{{Route: "x", Path: "shared/{namespace}/{serviceaccount}"}, {Route: "y", Path: "shared/{namespace}/{serviceaccount}"}},
			path:      "secret/data/shared/a/b",
			want:      ok(events.Rotation{Namespace: "a", ServiceAccount: "b", Route: "x"}, events.Rotation{Namespace: "a", ServiceAccount: "b", Route: "y"}),
		},
		"a route and the default on one template": {
			templates: []Template{{Route: "x", Path: DefaultPath}, {Path: DefaultPath}},
			path:      "secret/data/egress/a/b",
			want:      ok(events.Rotation{Namespace: "a", ServiceAccount: "b"}),
		},
		"the same template twice": {
			templates: []Template{{Path: DefaultPath}, {Path: DefaultPath}},
			path:      "secret/data/egress/a/b",
			want:      ok(events.Rotation{Namespace: "a", ServiceAccount: "b"}),
		},
		"templates capturing differently": {
			templates: []Template{{Path: "{namespace}/{serviceaccount}/key"}, {Path: "a/{namespace}/{serviceaccount}"}},
			path:      "secret/data/a/b/key",
			want:      ok(events.Rotation{Namespace: "a", ServiceAccount: "b"}, events.Rotation{Namespace: "b", ServiceAccount: "key"}),
		},
		"placeholders inside segments": {
			templates: []Template{{Path: "team_{namespace}/sa_{serviceaccount}_key"}},
			path:      "secret/metadata/team_prod-1/sa_web.v2_key",
			want:      ok(events.Rotation{Namespace: "prod-1", ServiceAccount: "web.v2"}),
		},
		"two placeholders in a segment": {
			templates: []Template{{Path: "db/{namespace}_{serviceaccount}"}},
			path:      "secret/data/db/team-a_app-1",
			want:      ok(events.Rotation{Namespace: "team-a", ServiceAccount: "app-1"}),
		},
		"namespace only": {
			templates: []Template{{Path: "ns/{namespace}"}},
			path:      "secret/data/ns/prod",
			want:      ok(events.Rotation{Namespace: "prod"}),
		},
		"no placeholder": {
			templates: []Template{{Route: "shared", Path: "shared/openai"}},
			path:      "secret/data/shared/openai",
			want:      ok(events.Rotation{Route: "shared"}),
		},
		"regexp characters are literal": {
			templates: []Template{{Path: "a.b+/{namespace}/{serviceaccount}"}},
			path:      "secret/data/aXb+/n/s",
		},
		"nested mount": {
			mount: "/team/kv/",
			path:  "team/kv/data/egress/a/b",
			want:  ok(events.Rotation{Namespace: "a", ServiceAccount: "b"}),
		},
		"nested mount, other path": {mount: "team/kv", path: "secret/data/egress/a/b"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := NewMatcher(tc.mount, tc.templates)
			if err != nil {
				t.Fatal(err)
			}
			got := m.ParseLine(line(t, "response", "update", tc.path, nil))
			if !reflect.DeepEqual(got.Rotations, tc.want) {
				t.Errorf("rotations %+v (%s), want %+v", got.Rotations, got.Reason, tc.want)
			}
		})
	}
}

func TestNewMatcherInvalid(t *testing.T) {
	tests := map[string]struct {
		mount string
		t     Template
	}{
		"absolute":                 {t: Template{Path: "/egress/{namespace}/{serviceaccount}"}},
		"trailing slash":           {t: Template{Path: "egress/{namespace}/{serviceaccount}/"}},
		"empty segment":            {t: Template{Path: "egress//{namespace}"}},
		"dot dot":                  {t: Template{Path: "egress/../{namespace}"}},
		"unknown placeholder":      {t: Template{Path: "egress/{ns}/{serviceaccount}"}},
		"placeholder twice":        {t: Template{Path: "{namespace}/{namespace}"}},
		"serviceaccount twice":     {t: Template{Path: "{namespace}/{serviceaccount}/{serviceaccount}"}},
		"adjacent placeholders":    {t: Template{Path: "egress/{namespace}{serviceaccount}"}},
		"name character beside":    {t: Template{Path: "egress/{namespace}-{serviceaccount}"}},
		"prefix with a dash":       {t: Template{Path: "team-{namespace}/{serviceaccount}"}},
		"unbalanced brace":         {t: Template{Path: "egress/{namespace/{serviceaccount}"}},
		"stray closing brace":      {t: Template{Path: "egress/namespace}/x"}},
		"serviceaccount alone":     {t: Template{Path: "egress/{serviceaccount}"}},
		"bad route name":           {t: Template{Route: "Open AI", Path: DefaultPath}},
		"mount with a placeholder": {mount: "{namespace}", t: Template{Path: DefaultPath}},
		"mount with dot dot":       {mount: "a/../b", t: Template{Path: DefaultPath}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := NewMatcher(tc.mount, []Template{tc.t}); err == nil {
				t.Errorf("NewMatcher(%q, %+v): no error", tc.mount, tc.t)
			}
		})
	}
}

func TestParseTemplate(t *testing.T) {
	got, err := ParseTemplate("openai=openai/{namespace}/{serviceaccount}")
	if want := (Template{Route: "openai", Path: "openai/{namespace}/{serviceaccount}"}); err != nil || got != want {
		t.Errorf("ParseTemplate = %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []string{"openai", "=x", "x="} {
		if _, err := ParseTemplate(bad); err == nil {
			t.Errorf("ParseTemplate(%q): no error", bad)
		}
	}
}

// fuzzTemplates are FuzzParseLine's watched paths.
var fuzzTemplates = []Template{{Path: DefaultPath}, {Route: "openai", Path: "openai/{namespace}/{serviceaccount}"}, {Path: "team_{namespace}/x"}}

// lineReasons are the reasons a line is ignored or malformed: a closed set.
var lineReasons = []string{ReasonTooLong, ReasonNotJSON, ReasonShape, ReasonBlank, ReasonType, ReasonFailed,
	ReasonNamespace, ReasonOperation, ReasonMountType, ReasonPath, ReasonIdentity}

// fillsTemplate reports whether key is template tmpl with r's names put in
// for its placeholders (by substitution, not by the matcher's regexp).
func fillsTemplate(key, tmpl string, r events.Rotation) bool {
	return strings.NewReplacer("{namespace}", r.Namespace, "{serviceaccount}", r.ServiceAccount).Replace(tmpl) == key
}

// FuzzParseLine checks that no input makes ParseLine panic, that its
// reasons are of the closed set, and that what it publishes is always a
// valid rotation, with names Kubernetes accepts, that a template gives for
// the path written under the watched mount. The seed
// corpus is every line of the real capture, hand-made edge cases, and
// testdata/fuzz/FuzzParseLine.
func FuzzParseLine(f *testing.F) {
	for _, l := range realLines(f) {
		f.Add(l)
	}
	for _, s := range []string{
		"", "\n", "{", "}", "{}", "null", "[]", `"x"`, "vault: {", `{"type":"response"}`,
		`{"type":"response","request":{}}`,
		`{"type":"response","request":{"operation":"update","path":"secret/data/egress/a/b"}}`,
		`{"type":"response","request":{"operation":"update","path":"secret/data/egress/a/b","namespace":{"path":"x/"}}}`,
		`{"type":"response","request":{"operation":"delete","path":"secret/metadata/egress/-a/b"}}`,
		`{"type":"response","request":{"operation":"update","path":"secret/data/egress/a/b"},"response":{"data":{"error":null}}}`,
		`{"type":"response","request":{"operation":"update","path":"secret/data/egress/a/b"},"response":{"data":null}}`,
		`{"TYPE":"response","Request":{"Operation":"update","PATH":"secret/data/egress/a/b"}}`,
		`{"type":"response","request":{"operation":"update","path":"secret/data/egress/a/b\u0000"}}`,
		`{"type":"response","request":{"operation":"update","path":"secret/data/egress/a/b"},"type":"request"}`,
	} {
		f.Add([]byte(s))
	}
	m, err := NewMatcher("", fuzzTemplates)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		orig := bytes.Clone(in)
		got := m.ParseLine(in)
		if !bytes.Equal(in, orig) {
			t.Fatal("ParseLine modified its input")
		}
		if again := m.ParseLine(in); !reflect.DeepEqual(got, again) {
			t.Fatalf("not deterministic: %+v then %+v", got, again)
		}
		switch got.Verdict {
		case Publish:
			if len(got.Rotations) == 0 || got.Reason != "" {
				t.Fatalf("published nothing: %+v", got)
			}
			// A write of <mount>/<kv subpath>/<template>, nothing else.
			sub, key, _ := strings.Cut(strings.TrimPrefix(got.Path, "secret/"), "/")
			if !strings.HasPrefix(got.Path, "secret/") || !slices.Contains(kvSubpaths, sub) || !slices.Contains(writeOps, got.Operation) {
				t.Fatalf("published %s of a path outside the mount's kv subpaths: %q", got.Operation, got.Path)
			}
			if len(got.Rotations) > len(m.templates) {
				t.Fatalf("%d rotations from %d templates", len(got.Rotations), len(m.templates))
			}
			for _, r := range got.Rotations {
				if err := r.Validate(); err != nil {
					t.Fatalf("published an invalid rotation %+v: %v", r, err)
				}
				// The names are Kubernetes names by Kubernetes's own
				// validation, and whole segments of the path written to.
				if r.Namespace != "" && len(validation.IsDNS1123Label(r.Namespace)) > 0 ||
					r.ServiceAccount != "" && len(validation.IsDNS1123Subdomain(r.ServiceAccount)) > 0 {
					t.Fatalf("published invalid names %+v", r)
				}
				if !slices.ContainsFunc(fuzzTemplates, func(tp Template) bool { return tp.Route == r.Route && fillsTemplate(key, tp.Path, r) }) {
					t.Fatalf("published %+v for %q, which no template with those names gives", r, key)
				}
			}
		case Ignored, Malformed:
			if got.Rotations != nil || !slices.Contains(lineReasons, got.Reason) {
				t.Fatalf("%v with rotations or without a reason of the set: %+v", got.Verdict, got)
			}
		default:
			t.Fatalf("unknown verdict %d", got.Verdict)
		}
		if len(in) > MaxLineSize && got.Verdict != Malformed {
			t.Fatalf("a %d-byte line was not malformed", len(in))
		}
	})
}
