package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// grpcOnly is the listen block the gRPC-only shapes need: no HTTP
// forward-auth listener, probes on their own address.
const grpcOnly = "listen: {http: \"\", health: \"127.0.0.1:8182\"}\n"

// TestInjectShapes: each shape parses and completes: header names
// lower-cased, sign.payload defaulting to body, the rest as written.
func TestInjectShapes(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml string
		want Inject
	}{
		"header and value": {
			`routes: [{hosts: [a.example], inject: {header: X-Api-Key, value: "{api_key}"}}]`,
			Inject{Header: "x-api-key", Value: "{api_key}"},
		},
		"headers": {
			`routes: [{hosts: [a.example], inject: {headers: [{name: X-Key-Id, value: "{key_id}"}, {name: X-Key, value: "Key {key}"}]}}]`,
			Inject{Headers: []NameValue{{"x-key-id", "{key_id}"}, {"x-key", "Key {key}"}}},
		},
		"header and headers": {
			`routes: [{hosts: [a.example], inject: {header: Authorization, value: "Bearer {t}", headers: [{name: X-Org, value: "{org}"}]}}]`,
			Inject{Header: "authorization", Value: "Bearer {t}", Headers: []NameValue{{"x-org", "{org}"}}},
		},
		"basic": {
			`routes: [{hosts: [a.example], inject: {basic: {username: "{user}", password: "{password}"}}}]`,
			Inject{Basic: &Basic{Username: "{user}", Password: "{password}"}},
		},
		"basic with a literal username": {
			`routes: [{hosts: [a.example], inject: {basic: {username: api, password: "{password}"}}}]`,
			Inject{Basic: &Basic{Username: "api", Password: "{password}"}},
		},
		"query": {
			grpcOnly + `routes: [{hosts: [a.example], inject: {query: [{name: api_key, value: "{api_key}"}, {name: Sig.v~1-x, value: "{sig}"}]}}]`,
			Inject{Query: []NameValue{{"api_key", "{api_key}"}, {"Sig.v~1-x", "{sig}"}}},
		},
		"metadata": {
			grpcOnly + `routes: [{hosts: [a.example], inject: {metadata: {upstream_key: "{api_key}", Tenant.Id-x: "{tenant}"}}}]`,
			Inject{Metadata: map[string]string{"upstream_key": "{api_key}", "Tenant.Id-x": "{tenant}"}},
		},
		"sign, payload defaulted": {
			grpcOnly + `routes: [{hosts: [a.example], inject: {sign: {type: aws-sigv4, service: bedrock, region: us-east-1}}}]`,
			Inject{Sign: &Sign{Type: SignAWSSigV4, Service: "bedrock", Region: "us-east-1", Payload: PayloadBody}},
		},
		"sign unsigned with a header": {
			grpcOnly + `routes: [{hosts: [a.example], inject: {header: X-Tenant, value: "{tenant}", sign: {type: aws-sigv4, service: s3, region: eu-west-3, payload: unsigned}}}]`,
			Inject{Header: "x-tenant", Value: "{tenant}", Sign: &Sign{Type: SignAWSSigV4, Service: "s3", Region: "eu-west-3", Payload: PayloadUnsigned}},
		},
		"every shape": {
			grpcOnly + `routes: [{hosts: [a.example], inject: {header: X-A, value: "{a}", headers: [{name: X-B, value: "{b}"}],
  basic: {username: "{u}", password: "{p}"}, query: [{name: q, value: "{q}"}], metadata: {k: "{m}"}}}]`,
			Inject{Header: "x-a", Value: "{a}", Headers: []NameValue{{"x-b", "{b}"}}, Basic: &Basic{"{u}", "{p}"},
				Query: []NameValue{{"q", "{q}"}}, Metadata: map[string]string{"k": "{m}"}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := Parse(strings.NewReader(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Routes[0].Inject; !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("inject\n got %s\nwant %s", show(got), show(tc.want))
			}
		})
	}
}

// show prints an Inject as YAML (its pointers followed).
func show(in Inject) string {
	b, _ := yaml.Marshal(in)
	return string(b)
}

// TestInjectCopies: routes that take the top-level injection each hold
// their own copy: changing one route's slices, map or pointers changes no
// other route's, nor the top level's.
func TestInjectCopies(t *testing.T) {
	c, err := Parse(strings.NewReader(grpcOnly + `
inject:
  headers: [{name: X-Key, value: "{api_key}"}]
  basic: {username: "{user}", password: "{password}"}
  query: [{name: key, value: "{api_key}"}]
  metadata: {upstream_key: "{api_key}"}
routes: [{hosts: [a.example]}, {hosts: [b.example]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := show(c.Inject)
	a := c.Routes[0].Inject
	if show(a) != want {
		t.Fatalf("route a's inject %s, want the top level's %s", show(a), want)
	}
	a.Headers[0].Value = "changed"
	a.Query[0].Value = "changed"
	a.Basic.Password = "changed"
	a.Metadata["upstream_key"] = "changed"
	for name, in := range map[string]Inject{"top level": c.Inject, "route b": c.Routes[1].Inject} {
		if got := show(in); got != want {
			t.Errorf("%s changed with route a: %s, want %s", name, got, want)
		}
	}
	// Sign's payload is completed on each route's own copy.
	c, err = Parse(strings.NewReader(grpcOnly + `
inject: {sign: {type: aws-sigv4, service: s3, region: us-east-1}}
routes: [{hosts: [a.example]}, {hosts: [b.example]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Routes[0].Inject.Sign == c.Routes[1].Inject.Sign || c.Routes[0].Inject.Sign == c.Inject.Sign {
		t.Error("routes share one *Sign")
	}
	if c.Routes[0].Inject.Sign.Payload != PayloadBody || c.Inject.Sign.Payload != PayloadBody {
		t.Errorf("payload %q, top level %q; want body", c.Routes[0].Inject.Sign.Payload, c.Inject.Sign.Payload)
	}
}

// TestInjectNoDefaultHeader: with another shape written at the top level,
// header and value take no default; with none, kv's.
func TestInjectNoDefaultHeader(t *testing.T) {
	c, err := Parse(strings.NewReader(`inject: {headers: [{name: X-Key, value: "{api_key}"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Inject.Header != "" || c.Inject.Value != "" {
		t.Errorf("top-level inject.headers got a default header: %q %q", c.Inject.Header, c.Inject.Value)
	}
	if rs := c.AllRoutes(); rs[0].Inject.Header != "" || len(rs[0].Inject.Headers) != 1 {
		t.Errorf("default route's inject %s", show(rs[0].Inject))
	}
	c, err = Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if c.Inject.Header != "authorization" || c.Inject.Value != "Bearer {api_key}" {
		t.Errorf("no inject written: %s, want kv's default header", show(c.Inject))
	}
}

// TestInjectErrors: each bad shape is refused with an error naming its
// exact key.
func TestInjectErrors(t *testing.T) {
	route := func(inject string) string {
		return "routes: [{hosts: [a.example], inject: " + inject + "}]"
	}
	many := func(n int, f func(i int) string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = f(i)
		}
		return strings.Join(parts, ", ")
	}
	for name, tc := range map[string]struct{ yaml, key string }{
		"bad header name":         {route(`{header: "x key", value: "{k}"}`), "routes[0].inject.header"},
		"bad headers name":        {route(`{headers: [{name: x-a, value: "{a}"}, {name: "x(b)", value: "{b}"}]}`), "routes[0].inject.headers[1].name"},
		"reserved host":           {route(`{header: Host, value: "{k}"}`), "routes[0].inject.header"},
		"reserved content-length": {route(`{headers: [{name: Content-Length, value: "{k}"}]}`), "routes[0].inject.headers[0].name"},
		"reserved reason header":  {route(`{headers: [{name: x-credinject-reason, value: "{k}"}]}`), "routes[0].inject.headers[0].name"},
		"header twice in headers": {route(`{headers: [{name: X-A, value: "{a}"}, {name: x-a, value: "{b}"}]}`), "routes[0].inject.headers[1].name"},
		"header and headers":      {route(`{header: X-A, value: "{a}", headers: [{name: x-a, value: "{b}"}]}`), "routes[0].inject.headers[0].name"},
		"header and basic":        {route(`{header: Authorization, value: "{a}", basic: {username: "{u}", password: "{p}"}}`), "routes[0].inject.basic"},
		"headers and basic":       {route(`{headers: [{name: authorization, value: "{a}"}], basic: {username: "{u}", password: "{p}"}}`), "routes[0].inject.basic"},
		"basic user with ':'":     {route(`{basic: {username: "a:{u}", password: "{p}"}}`), "routes[0].inject.basic.username"},
		"basic empty username":    {route(`{basic: {username: "", password: "{p}"}}`), "routes[0].inject.basic.username"},
		"basic without field":     {route(`{basic: {username: api, password: secret}}`), "routes[0].inject.basic"},
		"basic bad placeholder":   {route(`{basic: {username: "{a b}", password: "{p}"}}`), "routes[0].inject.basic.username"},
		"basic control char":      {route(`{basic: {username: "{u}", password: "a\x01{p}"}}`), "routes[0].inject.basic.password"},
		"header without value":    {route(`{header: x-a}`), "routes[0].inject.value"},
		"value without header":    {route(`{value: "{a}"}`), "routes[0].inject.header"},
		"headers value literal":   {route(`{headers: [{name: x-a, value: static}]}`), "routes[0].inject.headers[0].value"},
		"headers value newline":   {route(`{headers: [{name: x-a, value: "{a}\nx: y"}]}`), "routes[0].inject.headers[0].value"},
		"value unbalanced":        {route(`{headers: [{name: x-a, value: "{a}}"}]}`), "routes[0].inject.headers[0].value"},
		"value too long":          {route(`{headers: [{name: x-a, value: "{a}` + strings.Repeat("x", 4<<10) + `"}]}`), "routes[0].inject.headers[0].value"},
		"17 headers":              {route(`{headers: [` + many(17, func(i int) string { return fmt.Sprintf(`{name: x-%d, value: "{a}"}`, i) }) + `]}`), "routes[0].inject.headers"},
		"query name with space":   {grpcOnly + route(`{query: [{name: "api key", value: "{k}"}]}`), "routes[0].inject.query[0].name"},
		"query name empty":        {grpcOnly + route(`{query: [{name: "", value: "{k}"}]}`), "routes[0].inject.query[0].name"},
		"query name twice":        {grpcOnly + route(`{query: [{name: k, value: "{a}"}, {name: k, value: "{b}"}]}`), "routes[0].inject.query[1].name"},
		"query value literal":     {grpcOnly + route(`{query: [{name: k, value: v}]}`), "routes[0].inject.query[0].value"},
		"17 query parameters":     {grpcOnly + route(`{query: [`+many(17, func(i int) string { return fmt.Sprintf(`{name: q%d, value: "{a}"}`, i) })+`]}`), "routes[0].inject.query"},
		"metadata namespace":      {grpcOnly + route(`{metadata: {namespace: "{a}"}}`), "routes[0].inject.metadata.namespace"},
		"metadata serviceaccount": {grpcOnly + route(`{metadata: {serviceaccount: "{a}"}}`), "routes[0].inject.metadata.serviceaccount"},
		"metadata route":          {grpcOnly + route(`{metadata: {route: "{a}"}}`), "routes[0].inject.metadata.route"},
		"metadata bad key":        {grpcOnly + route(`{metadata: {"a/b": "{a}"}}`), "routes[0].inject.metadata.a/b"},
		"metadata value literal":  {grpcOnly + route(`{metadata: {k: v}}`), "routes[0].inject.metadata.k"},
		"17 metadata keys":        {grpcOnly + route(`{metadata: {`+many(17, func(i int) string { return fmt.Sprintf(`k%02d: "{a}"`, i) })+`}}`), "routes[0].inject.metadata"},
		"sign type gcp":           {grpcOnly + route(`{sign: {type: gcp, service: s3, region: us-east-1}}`), "routes[0].inject.sign.type"},
		"sign no type":            {grpcOnly + route(`{sign: {service: s3, region: us-east-1}}`), "routes[0].inject.sign.type"},
		"sign service upper":      {grpcOnly + route(`{sign: {type: aws-sigv4, service: S3, region: us-east-1}}`), "routes[0].inject.sign.service"},
		"sign no service":         {grpcOnly + route(`{sign: {type: aws-sigv4, region: us-east-1}}`), "routes[0].inject.sign.service"},
		"sign region with space":  {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: "us east"}}`), "routes[0].inject.sign.region"},
		"sign payload":            {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1, payload: streaming}}`), "routes[0].inject.sign.payload"},
		"sign and query":          {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}, query: [{name: k, value: "{a}"}]}`), "routes[0].inject.query"},
		"sign and authorization":  {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}, header: Authorization, value: "{a}"}`), "routes[0].inject.header"},
		"sign and x-amz-date":     {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}, headers: [{name: X-Amz-Date, value: "{a}"}]}`), "routes[0].inject.headers[0].name"},
		"sign and basic":          {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}, basic: {username: "{u}", password: "{p}"}}`), "routes[0].inject.basic"},
		"query, http on":          {route(`{query: [{name: k, value: "{a}"}]}`), "routes[0].inject.query"},
		"metadata, http on":       {route(`{metadata: {k: "{a}"}}`), "routes[0].inject.metadata"},
		"sign, http on":           {route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}}`), "routes[0].inject.sign"},
		// A header the signature covers as the request carries it, set
		// after signing, would reach the upstream unsigned or changed.
		"sign with x-amz-meta header":            {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}, headers: [{name: X-Amz-Meta-Team, value: "{team}"}]}`), "routes[0].inject.headers[0].name"},
		"sign with x-amz-acl header":             {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}, header: x-amz-acl, value: "{acl}"}`), "routes[0].inject.header"},
		"sign with content-type":                 {grpcOnly + route(`{sign: {type: aws-sigv4, service: s3, region: us-east-1}, headers: [{name: content-type, value: "{ct}"}]}`), "routes[0].inject.headers[0].name"},
		"top-level query, http on":               {`inject: {query: [{name: k, value: "{a}"}]}`, "inject.query"},
		"top-level bad headers":                  {`inject: {headers: [{name: "x y", value: "{a}"}]}`, "inject.headers[0].name"},
		"top-level header, no value with shapes": {grpcOnly + `inject: {header: x-a, metadata: {k: "{a}"}}`, "inject.value"},
		"vault-read without inject":              {`routes: [{hosts: [a.example], source: vault-read, path: db/creds/x}]`, "routes[0].inject"},
		"http off without health":                {`listen: {http: ""}`, "listen.health"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			if !namesKey(err, tc.key) {
				t.Fatalf("error names no %q:\n%v", tc.key, err)
			}
		})
	}
}

// namesKey reports whether one of err's lines is about key exactly.
func namesKey(err error, key string) bool {
	for _, line := range strings.Split(err.Error(), "\n") {
		if strings.HasPrefix(line, key+": ") {
			return true
		}
	}
	return false
}

// TestListenHTTPOff: listen.http "" turns the HTTP listener off, with
// listen.health serving the probes, and lets the gRPC-only shapes in.
func TestListenHTTPOff(t *testing.T) {
	c, err := Parse(strings.NewReader(grpcOnly + `
routes: [{hosts: [a.example], inject: {query: [{name: k, value: "{a}"}], metadata: {k: "{a}"}}},
         {hosts: [b.example], inject: {sign: {type: aws-sigv4, service: s3, region: us-east-1}}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.HTTP != "" || c.Listen.Health != "127.0.0.1:8182" {
		t.Errorf("listen %+v", c.Listen)
	}
	if got := c.Routes[0].Inject.GRPCOnly(); fmt.Sprint(got) != "[query metadata]" {
		t.Errorf("GRPCOnly = %v", got)
	}
	// The HTTP-safe shapes go with the HTTP listener on.
	if _, err := Parse(strings.NewReader(`routes: [{hosts: [a.example], inject: {headers: [{name: x-a, value: "{a}"}], basic: {username: "{u}", password: "{p}"}}}]`)); err != nil {
		t.Errorf("headers and basic with listen.http on: %v", err)
	}
}

// TestCheckRouteGRPCOnly: a route checked for a CredentialPolicy is held to
// the same listener rule as the file's routes.
func TestCheckRouteGRPCOnly(t *testing.T) {
	r := Route{Name: "p", Hosts: []string{"a.example"}, Source: SourceKV, Path: "x/{namespace}",
		Inject: Inject{Query: []NameValue{{"key", "{api_key}"}}}}
	key := func(k string) string { return "spec." + k }
	on, err := Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := on.CheckRoute(r, VaultOverride{}, key); err == nil || !namesKey(err, "spec.inject.query") {
		t.Errorf("query with listen.http on: %v, want an error naming spec.inject.query", err)
	}
	off, err := Parse(strings.NewReader(grpcOnly))
	if err != nil {
		t.Fatal(err)
	}
	got, err := off.CheckRoute(r, VaultOverride{}, key)
	if err != nil {
		t.Fatalf("query with listen.http off: %v", err)
	}
	got.Inject.Query[0].Value = "changed"
	if r.Inject.Query[0].Value != "{api_key}" {
		t.Error("CheckRoute's route shares its query with the caller's")
	}
}
