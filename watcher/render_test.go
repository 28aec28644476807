package watcher

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// TestRenderInjection: every shape renders from the secret's fields into
// the cached answer: the first header set is Injection's, the rest are in
// order (Route.Header, then Basic, then Shapes.Headers).
func TestRenderInjection(t *testing.T) {
	data := map[string]any{"api_key": "sk-1", "user": "user", "pass": "pass", "org": "org-7", "tenant": "t1",
		"access_key": "AKIDEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG", "security_token": "FwoGZXIvYXdzEJr//token"}
	for name, tc := range map[string]struct {
		rt   Route
		data map[string]any // nil: data
		want Injection
	}{
		"one header": {
			Route{Header: "authorization", Value: "Bearer {api_key}"},
			nil, Injection{Header: "authorization", Value: "Bearer sk-1"},
		},
		"basic": {
			Route{Shapes: &Shapes{Basic: &BasicTemplate{Username: "{user}", Password: "{pass}"}}},
			nil, Injection{Header: "authorization", Value: "Basic dXNlcjpwYXNz"},
		},
		"basic with an empty password": {
			Route{Shapes: &Shapes{Basic: &BasicTemplate{Username: "{api_key}", Password: ""}}},
			nil, Injection{Header: "authorization", Value: "Basic c2stMTo="}, // sk-1:
		},
		"header, basic, headers in order": {
			Route{Header: "x-first", Value: "{org}", Shapes: &Shapes{
				Basic:   &BasicTemplate{Username: "{user}", Password: "{pass}"},
				Headers: []Template{{Name: "x-org", Value: "Org {org}"}, {Name: "x-key", Value: "{api_key}"}},
			}},
			nil, Injection{Header: "x-first", Value: "org-7", Shapes: &cache.Shapes{Headers: []cache.Field{
				{Name: "authorization", Value: "Basic dXNlcjpwYXNz"}, {Name: "x-org", Value: "Org org-7"}, {Name: "x-key", Value: "sk-1"}}}},
		},
		"basic first without a header": {
			Route{Shapes: &Shapes{Basic: &BasicTemplate{Username: "{user}", Password: "{pass}"}, Headers: []Template{{Name: "x-org", Value: "{org}"}}}},
			nil, Injection{Header: "authorization", Value: "Basic dXNlcjpwYXNz", Shapes: &cache.Shapes{Headers: []cache.Field{{Name: "x-org", Value: "org-7"}}}},
		},
		"query and metadata": {
			Route{Shapes: &Shapes{
				Query:    []Template{{Name: "key", Value: "{api_key}"}, {Name: "org", Value: "o-{org}"}},
				Metadata: []Template{{Name: "tenant", Value: "{tenant}"}, {Name: "upstream_key", Value: "Bearer {api_key}"}},
			}},
			nil, Injection{Shapes: &cache.Shapes{
				Query:    []cache.Field{{Name: "key", Value: "sk-1"}, {Name: "org", Value: "o-org-7"}},
				Metadata: []cache.Field{{Name: "tenant", Value: "t1"}, {Name: "upstream_key", Value: "Bearer sk-1"}},
			}},
		},
		"query values URL-encoded": {
			Route{Shapes: &Shapes{Query: []Template{{Name: "q", Value: "{api_key}&x={org} #"}}}},
			nil, Injection{Shapes: &cache.Shapes{Query: []cache.Field{{Name: "q", Value: "sk-1%26x%3Dorg-7+%23"}}}},
		},
		"sign with a security token": {
			Route{Shapes: &Shapes{Sign: &SignSpec{Service: "bedrock", Region: "us-east-1"}}},
			nil, Injection{Shapes: &cache.Shapes{Sign: &cache.SigV4{AccessKey: "AKIDEXAMPLE", SecretKey: "wJalrXUtnFEMI/K7MDENG",
				SessionToken: "FwoGZXIvYXdzEJr//token", Service: "bedrock", Region: "us-east-1"}}},
		},
		"sign, security token null": {
			Route{Shapes: &Shapes{Sign: &SignSpec{Service: "s3", Region: "eu-west-3", UnsignedPayload: true}}},
			map[string]any{"access_key": "AKID", "secret_key": "SECRET", "security_token": nil},
			Injection{Shapes: &cache.Shapes{Sign: &cache.SigV4{AccessKey: "AKID", SecretKey: "SECRET", Service: "s3", Region: "eu-west-3", UnsignedPayload: true}}},
		},
		"sign, security token absent": {
			Route{Shapes: &Shapes{Sign: &SignSpec{Service: "s3", Region: "us-east-1"}}},
			map[string]any{"access_key": "AKID", "secret_key": "SECRET"},
			Injection{Shapes: &cache.Shapes{Sign: &cache.SigV4{AccessKey: "AKID", SecretKey: "SECRET", Service: "s3", Region: "us-east-1"}}},
		},
		"sign, security token empty": {
			Route{Shapes: &Shapes{Sign: &SignSpec{Service: "s3", Region: "us-east-1"}}},
			map[string]any{"access_key": "AKID", "secret_key": "SECRET", "security_token": ""},
			Injection{Shapes: &cache.Shapes{Sign: &cache.SigV4{AccessKey: "AKID", SecretKey: "SECRET", Service: "s3", Region: "us-east-1"}}},
		},
		"sign and a header": {
			Route{Header: "x-tenant", Value: "{tenant}", Shapes: &Shapes{Sign: &SignSpec{Service: "s3", Region: "us-east-1"}}},
			nil, Injection{Header: "x-tenant", Value: "t1", Shapes: &cache.Shapes{Sign: &cache.SigV4{AccessKey: "AKIDEXAMPLE",
				SecretKey: "wJalrXUtnFEMI/K7MDENG", SessionToken: "FwoGZXIvYXdzEJr//token", Service: "s3", Region: "us-east-1"}}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := tc.data
			if d == nil {
				d = data
			}
			rt := tc.rt
			got, err := RenderInjection(&rt, d)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("RenderInjection\n got %s\nwant %s", showInjection(got), showInjection(tc.want))
			}
		})
	}
}

// showInjection prints an Injection with its shapes followed.
func showInjection(in Injection) string {
	s := fmt.Sprintf("%q: %q", in.Header, in.Value)
	if sh := in.Shapes; sh != nil {
		s += fmt.Sprintf(" headers=%q query=%q metadata=%q", sh.Headers, sh.Query, sh.Metadata)
		if sh.Sign != nil {
			s += fmt.Sprintf(" sign=%+v", *sh.Sign)
		}
	}
	return s
}

// TestRenderInjectionRefuses: a secret that cannot fill a shape is refused
// with an error that is authz.ErrInvalidCredential, names the shape, and
// never holds a secret's value; so is a route that injects nothing.
func TestRenderInjectionRefuses(t *testing.T) {
	const secret = "s3cr3t-value"
	sign := Route{Shapes: &Shapes{Sign: &SignSpec{Service: "s3", Region: "us-east-1"}}}
	for name, tc := range map[string]struct {
		rt   Route
		data map[string]any
		want string // in the error
	}{
		"sign, access_key missing":     {sign, map[string]any{"secret_key": secret}, `"access_key" is missing`},
		"sign, access_key null":        {sign, map[string]any{"access_key": nil, "secret_key": secret}, `"access_key" is missing`},
		"sign, access_key empty":       {sign, map[string]any{"access_key": "", "secret_key": secret}, `"access_key" is empty`},
		"sign, access_key not string":  {sign, map[string]any{"access_key": 42, "secret_key": secret}, `"access_key" is not a string`},
		"sign, secret_key missing":     {sign, map[string]any{"access_key": secret}, `"secret_key" is missing`},
		"sign, access_key with '/'":    {sign, map[string]any{"access_key": secret + "/x", "secret_key": "k"}, `"access_key" has '/'`},
		"sign, secret_key empty":       {sign, map[string]any{"access_key": "AKID", "secret_key": ""}, `"secret_key" is empty`},
		"sign, secret_key not string":  {sign, map[string]any{"access_key": "AKID", "secret_key": []any{secret}}, `"secret_key" is not a string`},
		"sign, secret_key with space":  {sign, map[string]any{"access_key": "AKID", "secret_key": secret + " x"}, `"secret_key" has a space`},
		"sign, secret_key with CRLF":   {sign, map[string]any{"access_key": "AKID", "secret_key": secret + "\r\nx: y"}, `"secret_key" has a space or control`},
		"sign, token not string":       {sign, map[string]any{"access_key": "AKID", "secret_key": secret, "security_token": map[string]any{"t": secret}}, `"security_token" is not a string`},
		"sign, token with a newline":   {sign, map[string]any{"access_key": "AKID", "secret_key": "x", "security_token": secret + "\n"}, `"security_token" has a space or control`},
		"basic, ':' in the username":   {Route{Shapes: &Shapes{Basic: &BasicTemplate{Username: "{user}", Password: "{pass}"}}}, map[string]any{"user": secret + ":x", "pass": secret}, "basic username contains ':'"},
		"basic, over 8 KiB":            {Route{Shapes: &Shapes{Basic: &BasicTemplate{Username: "{user}", Password: "{pass}"}}}, map[string]any{"user": "u", "pass": secret + strings.Repeat("p", 7<<10)}, "basic: "},
		"basic, password field absent": {Route{Shapes: &Shapes{Basic: &BasicTemplate{Username: "{user}", Password: "{pass}"}}}, map[string]any{"user": secret}, `basic password: `},
		"basic, control in password":   {Route{Shapes: &Shapes{Basic: &BasicTemplate{Username: "{user}", Password: "{pass}"}}}, map[string]any{"user": "u", "pass": secret + "\x00"}, "basic password has a control character"},
		"headers, CRLF":                {Route{Shapes: &Shapes{Headers: []Template{{Name: "x-key", Value: "{api_key}"}}}}, map[string]any{"api_key": secret + "\r\nx-evil: 1"}, "header x-key"},
		"query, field missing":         {Route{Shapes: &Shapes{Query: []Template{{Name: "key", Value: "{api_key}"}}}}, map[string]any{"other": secret}, "query parameter key"},
		"metadata, not a string":       {Route{Shapes: &Shapes{Metadata: []Template{{Name: "upstream_key", Value: "{api_key}"}}}}, map[string]any{"api_key": 7}, "metadata key upstream_key"},
		"metadata, trailing space":     {Route{Shapes: &Shapes{Metadata: []Template{{Name: "upstream_key", Value: "{api_key}"}}}}, map[string]any{"api_key": secret + " "}, "metadata key upstream_key"},
		"nothing injected":             {Route{}, map[string]any{"api_key": secret}, "the route injects nothing"},
		"empty shapes":                 {Route{Shapes: &Shapes{}}, map[string]any{"api_key": secret}, "the route injects nothing"},
	} {
		t.Run(name, func(t *testing.T) {
			rt := tc.rt
			got, err := RenderInjection(&rt, tc.data)
			if err == nil {
				t.Fatalf("rendered %s", showInjection(got))
			}
			if !errors.Is(err, authz.ErrInvalidCredential) {
				t.Errorf("error %q is not authz.ErrInvalidCredential", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q holds the secret", err)
			}
		})
	}
}

// TestInjectedRotation: the audit trail reports a change of any rendered
// value as a rotation, also when the version and lease stay (a minted
// token, a re-read lease), and nothing when every value is the same.
func TestInjectedRotation(t *testing.T) {
	base := func() *cache.Entry {
		return &cache.Entry{Header: "x-a", Value: "a", Version: 3, Shapes: &cache.Shapes{
			Headers:  []cache.Field{{Name: "x-b", Value: "b"}},
			Query:    []cache.Field{{Name: "q", Value: "q"}},
			Metadata: []cache.Field{{Name: "m", Value: "m"}},
			Sign:     &cache.SigV4{AccessKey: "AK", SecretKey: "SK", SessionToken: "ST", Service: "s3", Region: "us-east-1"},
		}}
	}
	for name, tc := range map[string]struct {
		change func(*cache.Entry)
		want   LifecycleKind // "": no record
	}{
		"unchanged":           {func(*cache.Entry) {}, ""},
		"first header":        {func(e *cache.Entry) { e.Value = "a2" }, Rotated},
		"another header":      {func(e *cache.Entry) { e.Shapes.Headers[0].Value = "b2" }, Rotated},
		"query parameter":     {func(e *cache.Entry) { e.Shapes.Query[0].Value = "q2" }, Rotated},
		"metadata":            {func(e *cache.Entry) { e.Shapes.Metadata[0].Value = "m2" }, Rotated},
		"access key":          {func(e *cache.Entry) { e.Shapes.Sign.AccessKey = "AK2" }, Rotated},
		"secret key":          {func(e *cache.Entry) { e.Shapes.Sign.SecretKey = "SK2" }, Rotated},
		"session token":       {func(e *cache.Entry) { e.Shapes.Sign.SessionToken = "ST2" }, Rotated},
		"session token ended": {func(e *cache.Entry) { e.Shapes.Sign.SessionToken = "" }, Rotated},
	} {
		t.Run(name, func(t *testing.T) {
			x := &identity{Identity: authz.NewIdentity("ns", "sa")}
			rs := &routeState{name: "r"}
			o := origin{trigger: TriggerSchedule, source: SourceKV, path: "secret/data/x"}
			if ev, ok := x.lifecycle(rs, base(), o); !ok || ev.Kind != Fetched {
				t.Fatalf("first entry: %+v %v, want fetched", ev, ok)
			}
			e := base()
			tc.change(e)
			ev, ok := x.lifecycle(rs, e, o)
			switch {
			case tc.want == "" && ok:
				t.Fatalf("recorded %s for the same values", summary(ev))
			case tc.want != "" && (!ok || ev.Kind != tc.want):
				t.Fatalf("recorded %v %s, want %s", ok, summary(ev), tc.want)
			}
		})
	}
}

// TestShapesThroughTheWatcher: a route injecting only metadata is read,
// rendered and stored with no header, and its rotation is recorded
// without the credential.
func TestShapesThroughTheWatcher(t *testing.T) {
	r := newRig(t, Route{Name: "", Path: "egress/{namespace}/{serviceaccount}",
		Shapes: &Shapes{Metadata: []Template{{Name: "upstream_key", Value: "Bearer {api_key}"}}}})
	id, tok := r.identity("ns", "sa", "key-v1")
	e, err := r.miss("", id, tok)
	if err != nil {
		t.Fatal(err)
	}
	if e.Header != "" || e.Value != "" || e.Shapes == nil || fmt.Sprint(e.Shapes.Metadata) != "[{upstream_key Bearer key-v1}]" {
		t.Fatalf("entry %q %q %+v", e.Header, e.Value, e.Shapes)
	}
	r.vault.put(id.Key(), "key-v2")
	if err := r.w.Refresh(context.Background(), authz.Scope{Namespace: "ns", ServiceAccount: "sa"}); err != nil {
		t.Fatal(err)
	}
	want := []string{`fetched ns/sa route="" kv secret/data/egress/ns/sa v1 miss`, `rotated ns/sa route="" kv secret/data/egress/ns/sa v1->v2 event`}
	if got := r.audit.since(0); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("records:\n got %q\nwant %q", got, want)
	}
	if e, err := r.miss("", id, tok); err != nil || fmt.Sprint(e.Shapes.Metadata) != "[{upstream_key Bearer key-v2}]" {
		t.Fatalf("after the rotation: %+v, %v", e, err)
	}
	noSecrets(t, r, "key-v", tok, "hvs.")
}
