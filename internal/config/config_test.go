package config

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestParseIssueExample(t *testing.T) {
	c, err := Parse(strings.NewReader(`
listen: {grpc: "127.0.0.1:9191", http: "127.0.0.1:8181"}
kubernetes:
  kubeconfig: ""
  audiences: ["https://kubernetes.default.svc.cluster.local"]
  tokenValidation: tokenreview
vault:
  address: "http://vault.vault.svc.cluster.local:8200"
  authMount: kubernetes
  role: egress-workload
  kvMount: secret
  path: "egress/{namespace}/{serviceaccount}"
inject: {header: Authorization, value: "Bearer {api_key}"}
events: {natsURL: "", subject: "credinject.rotated"}
prefetch: {namespaces: [], refresh: 5m, staleGrace: 15m}
routes:
  - hosts: ["api.openai.com"]
    path: "openai/{namespace}/{serviceaccount}"
    inject: {header: authorization, value: "Bearer {api_key}"}
  - hosts: ["api.anthropic.com", "*.anthropic.com"]
    path: "anthropic/{namespace}/{serviceaccount}"
    inject: {header: x-api-key, value: "{api_key}"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Inject.Header != "authorization" {
		t.Errorf("header not lower-cased: %q", c.Inject.Header)
	}
	if c.Prefetch.Refresh != 5*time.Minute || c.Prefetch.StaleGrace != 15*time.Minute {
		t.Errorf("durations: %v %v", c.Prefetch.Refresh, c.Prefetch.StaleGrace)
	}
	if c.Prefetch.RefreshWithEvents != time.Hour || c.Vault.ReloginInterval != 0 {
		t.Errorf("defaults: refreshWithEvents %v, reloginInterval %v; want 1h, 0 (the token's TTL)", c.Prefetch.RefreshWithEvents, c.Vault.ReloginInterval)
	}
	if len(c.Routes) != 2 || c.Routes[0].Name != "api.openai.com" || c.Routes[1].Name != "api.anthropic.com" {
		t.Errorf("route names: %+v", c.Routes)
	}
	if !c.HasDefaultRoute() {
		t.Error("default route should be on")
	}
}

// TestAuditKeys: the audit trail's keys and their defaults.
func TestAuditKeys(t *testing.T) {
	c, err := Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if c.Audit != (Audit{Output: "stdout", Interval: time.Minute, MaxKeys: 100_000}) {
		t.Fatalf("defaults %+v", c.Audit)
	}
	c, err = Parse(strings.NewReader("audit: {output: /var/log/credinject/audit.jsonl, interval: 10s, maxKeys: 500}"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Audit != (Audit{Output: "/var/log/credinject/audit.jsonl", Interval: 10 * time.Second, MaxKeys: 500}) {
		t.Fatalf("parsed %+v", c.Audit)
	}
}

// TestRefreshAndReloginKeys: prefetch.refreshWithEvents and
// vault.reloginInterval are read from the file.
func TestRefreshAndReloginKeys(t *testing.T) {
	c, err := Parse(strings.NewReader("vault: {reloginInterval: 30m}\nprefetch: {refresh: 2m, refreshWithEvents: 2h}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Vault.ReloginInterval != 30*time.Minute || c.Prefetch.Refresh != 2*time.Minute || c.Prefetch.RefreshWithEvents != 2*time.Hour {
		t.Fatalf("reloginInterval %v, refresh %v, refreshWithEvents %v", c.Vault.ReloginInterval, c.Prefetch.Refresh, c.Prefetch.RefreshWithEvents)
	}
}

// TestEventsMinInterval: events.minInterval is 1s unless the file says
// otherwise.
func TestEventsMinInterval(t *testing.T) {
	for yaml, want := range map[string]time.Duration{"": time.Second, "events: {minInterval: 250ms}": 250 * time.Millisecond} {
		c, err := Parse(strings.NewReader(yaml))
		if err != nil {
			t.Fatal(err)
		}
		if c.Events.MinInterval != want {
			t.Errorf("%q: events.minInterval %v, want %v", yaml, c.Events.MinInterval, want)
		}
	}
}

func TestEmptyIsDefault(t *testing.T) {
	c, err := Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.GRPC != "127.0.0.1:9191" || c.Listen.HTTP != "127.0.0.1:8181" || c.Vault.Role != "egress-workload" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestJWTAuthMount(t *testing.T) {
	c, err := Parse(strings.NewReader("vault: {authMethod: jwt}"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Vault.AuthMount != "jwt" {
		t.Fatalf("authMount = %q, want jwt", c.Vault.AuthMount)
	}
	c, err = Parse(strings.NewReader("vault: {authMethod: jwt, authMount: oidc-k8s}"))
	if err != nil || c.Vault.AuthMount != "oidc-k8s" {
		t.Fatalf("explicit mount: %q %v", c.Vault.AuthMount, err)
	}
}

func TestParseRefuses(t *testing.T) {
	cases := map[string]struct{ yaml, wantInError string }{
		"unknown top-level key":    {"listne: {grpc: x}", "listne"},
		"unknown nested key":       {"vault: {adress: http://x}", "adress"},
		"bad validation mode":      {"kubernetes: {tokenValidation: oidc}", "kubernetes.tokenValidation"},
		"bad auth method":          {"vault: {authMethod: approle}", "vault.authMethod"},
		"no audiences":             {"kubernetes: {audiences: []}", "kubernetes.audiences"},
		"bad listen address":       {"listen: {grpc: localhost}", "listen.grpc"},
		"vault address no scheme":  {"vault: {address: vault:8200}", "vault.address"},
		"unknown path placeholder": {`vault: {path: "egress/{ns}/{serviceaccount}"}`, "vault.path"},
		"absolute path":            {`vault: {path: "/egress/{namespace}"}`, "vault.path"},
		"dotdot path":              {`vault: {path: "egress/../{namespace}"}`, "vault.path"},
		"ambiguous path":           {`vault: {path: "egress/{namespace}-{serviceaccount}"}`, "vault.path"},
		"ambiguous route path":     {`routes: [{hosts: [a.b], source: vault-read, path: "database/creds/{namespace}-{serviceaccount}"}]`, "routes[0].path"},
		"touching placeholders":    {`vault: {path: "egress/{namespace}{serviceaccount}"}`, "vault.path"},
		"bad header name":          {`inject: {header: "x api key", value: "{api_key}"}`, "inject"},
		"value without field":      {`inject: {header: authorization, value: "Bearer static"}`, "inject"},
		"negative grace":           {"prefetch: {staleGrace: -1m}", "prefetch.staleGrace"},
		"zero refresh":             {"prefetch: {refresh: 0s}", "prefetch.refresh"},
		"zero refresh with events": {"prefetch: {refreshWithEvents: 0s}", "prefetch.refreshWithEvents"},
		"zero event interval":      {"events: {minInterval: 0s}", "events.minInterval"},
		"negative event interval":  {"events: {minInterval: -1s}", "events.minInterval"},
		"negative relogin":         {"vault: {reloginInterval: -1m}", "vault.reloginInterval"},
		"zero prefetch workers":    {"prefetch: {concurrency: 0}", "prefetch.concurrency"},
		"bad duration":             {"prefetch: {refresh: soon}", "parse"},
		"route without hosts":      {"routes: [{path: \"x/{namespace}\"}]", "routes[0].hosts"},
		"bad wildcard":             {"routes: [{hosts: [\"api.*.com\"]}]", "routes[0].hosts[0]"},
		"duplicate host":           {"routes: [{hosts: [a.com]}, {hosts: [a.com]}]", "routes[1].hosts[0]"},
		"nats url without scheme":  {"events: {natsURL: localhost:4222}", "events.natsURL"},
		"not yaml":                 {"{{{", "parse"},
		"zero review budget":       {"kubernetes: {tokenReviewBudget: {rate: 0, burst: 10}}", "kubernetes.tokenReviewBudget"},
		"unknown budget key":       {"kubernetes: {tokenReviewBudget: {qps: 5}}", "qps"},
		"tls cert without key":     {"listen: {tls: {certFile: /c}}", "listen.tls"},
		"tls client CA alone":      {"listen: {tls: {clientCAFile: /ca}}", "listen.tls"},
		"bad health address":       {"listen: {health: localhost}", "listen.health"},
		"unknown tls key":          {"listen: {tls: {cert: /c}}", "cert"},
		"vault client cert alone":  {"vault: {address: https://v:8200, clientCertFile: /c}", "vault.clientCertFile/clientKeyFile"},
		"vault CA over http":       {"vault: {address: http://v:8200, caFile: /ca}", "vault.caFile"},
		"vault server name, http":  {"vault: {address: http://v:8200, tlsServerName: v}", "vault.tlsServerName"},
		"vault namespace spaces":   {`vault: {namespace: " team "}`, "vault.namespace"},
		"two nats credentials":     {"events: {natsURL: nats://n:4222, credsFile: /a, tokenFile: /b}", "events.credsFile/nkeyFile/tokenFile"},
		"nats cert without key":    {"events: {natsURL: nats://n:4222, certFile: /c}", "events.certFile/keyFile"},
		"empty audit output":       {`audit: {output: ""}`, "audit.output"},
		"zero audit interval":      {"audit: {interval: 0s}", "audit.interval"},
		"zero audit keys":          {"audit: {maxKeys: 0}", "audit.maxKeys"},
		"zero denied capacity":     {"cache: {deniedCapacity: 0}", "cache.deniedCapacity"},
		"unknown audit key":        {"audit: {file: /a}", "file"},
		"otlp endpoint no scheme":  {"tracing: {otlpEndpoint: collector:4317}", "tracing.otlpEndpoint"},
		"sampling ratio above 1":   {"tracing: {samplingRatio: 1.5}", "tracing.samplingRatio"},
		"negative sampling ratio":  {"tracing: {samplingRatio: -0.1}", "tracing.samplingRatio"},
		"bad debug address":        {"debug: {listen: localhost}", "debug.listen"},
		"client names without CA":  {"listen: {tls: {certFile: /c, keyFile: /k, clientNames: [gw.example]}}", "listen.tls.clientNames: needs listen.tls.clientCAFile"},
		"bad client name":          {"listen: {tls: {certFile: /c, keyFile: /k, clientCAFile: /ca, clientNames: [gw.example, \"a b\"]}}", "listen.tls.clientNames[1]"},
		"wildcard in a URI name":   {"listen: {tls: {certFile: /c, keyFile: /k, clientCAFile: /ca, clientNames: [\"spiffe://cl/ns/*/sa/gw\"]}}", "listen.tls.clientNames[0]"},
		"bad trusted proxy":        {"listen: {trustedProxies: [10.0.0.0/8, 10.0.0.0/33]}", "listen.trustedProxies[1]"},
		"trusted proxy host name":  {"listen: {trustedProxies: [nginx.local]}", "listen.trustedProxies[0]"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.wantInError) {
				t.Fatalf("error %q does not name %q", err, c.wantInError)
			}
		})
	}
}

func TestParseTransportSecurity(t *testing.T) {
	c, err := Parse(strings.NewReader(`
listen:
  health: "0.0.0.0:8182"
  tls: {certFile: /tls/tls.crt, keyFile: /tls/tls.key, clientCAFile: /tls/ca.crt}
vault:
  address: https://vault.example:8200
  caFile: /vault/ca.crt
  clientCertFile: /vault/tls.crt
  clientKeyFile: /vault/tls.key
  tlsServerName: vault.example
  namespace: admin/team-a
events:
  natsURL: tls://nats:4222
  credsFile: /nats/user.creds
  caFile: /nats/ca.crt
  certFile: /nats/tls.crt
  keyFile: /nats/tls.key
`))
	if err != nil {
		t.Fatal(err)
	}
	want := ListenTLS{CertFile: "/tls/tls.crt", KeyFile: "/tls/tls.key", ClientCAFile: "/tls/ca.crt"}
	if !reflect.DeepEqual(c.Listen.TLS, want) || !c.Listen.TLS.Enabled() || c.Listen.Health != "0.0.0.0:8182" {
		t.Fatalf("listen %+v", c.Listen)
	}
	if c.Vault.CAFile != "/vault/ca.crt" || c.Vault.ClientCertFile != "/vault/tls.crt" || c.Vault.ClientKeyFile != "/vault/tls.key" ||
		c.Vault.TLSServerName != "vault.example" || c.Vault.Namespace != "admin/team-a" {
		t.Fatalf("vault %+v", c.Vault)
	}
	if c.Events.CredsFile != "/nats/user.creds" || c.Events.CAFile != "/nats/ca.crt" || c.Events.CertFile != "/nats/tls.crt" || c.Events.KeyFile != "/nats/tls.key" {
		t.Fatalf("events %+v", c.Events)
	}
	if d := Default(); d.Listen.TLS.Enabled() || d.Listen.Health != "" {
		t.Fatal("TLS or the health port is on by default")
	}
}

// TestParseGatewayOnly: listen.tls.clientNames and listen.trustedProxies, and
// that by default nobody is trusted.
func TestParseGatewayOnly(t *testing.T) {
	c, err := Parse(strings.NewReader(`
listen:
  tls:
    certFile: /tls/tls.crt
    keyFile: /tls/tls.key
    clientCAFile: /tls/ca.crt
    clientNames: ["spiffe://cluster.local/ns/istio-system/sa/egress-gateway", "*.gw.example"]
  trustedProxies: ["10.1.2.3/16", "127.0.0.1", "::1", "fd00::/8"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"spiffe://cluster.local/ns/istio-system/sa/egress-gateway", "*.gw.example"}; !reflect.DeepEqual(c.Listen.TLS.ClientNames, want) {
		t.Fatalf("clientNames %v", c.Listen.TLS.ClientNames)
	}
	got, err := c.Listen.TrustedProxyPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fd00::/8")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("trusted proxies %v, want %v", got, want)
	}
	d := Default()
	if p, err := d.Listen.TrustedProxyPrefixes(); err != nil || len(p) != 0 || len(d.Listen.TLS.ClientNames) != 0 {
		t.Fatalf("trusted by default: %v %v %v", p, err, d.Listen.TLS.ClientNames)
	}
}

// FuzzParse: no input makes Parse panic, and a configuration it accepts is
// a fixed point: validated again it is unchanged, and written back as YAML
// it parses to the same value (so defaults completed once are never
// completed differently, and nothing is inferred from a default's value).
// The seeds are the shipped configurations and testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add("listen: {grpc: \"127.0.0.1:1\"}")
	f.Add("routes: [{hosts: [\"*.a.com\"], path: \"x/{namespace}/{serviceaccount}\"}]")
	shipped, err := filepath.Glob("../../deploy/kubernetes/*/*/config.yaml")
	if err != nil {
		f.Fatal(err)
	}
	base, _ := filepath.Glob("../../deploy/kubernetes/*/config.yaml")
	for _, p := range append(shipped, base...) {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("an accepted configuration does not marshal: %v", err)
		}
		var again Config
		if err := yaml.Unmarshal(out, &again); err != nil {
			t.Fatalf("an accepted configuration, written back, does not decode: %v\n%s", err, out)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("an accepted configuration does not validate again: %v\n%s", err, out)
		}
		if !sameConfig(c, again) {
			t.Fatalf("validated again, the configuration changed:\n%s\nto\n%s", out, mustMarshal(t, again))
		}
		reparsed, err := Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("an accepted configuration, written back, does not parse: %v\n%s", err, out)
		}
		if !sameConfig(c, reparsed) {
			t.Fatalf("written back and parsed, the configuration changed:\n%s\nto\n%s", out, mustMarshal(t, reparsed))
		}
	})
}

// sameConfig compares two configurations, an empty slice or map equal to
// an absent one (YAML writes both as []).
func sameConfig(a, b Config) bool {
	va, vb := reflect.ValueOf(&a).Elem(), reflect.ValueOf(&b).Elem()
	emptyToNil(va)
	emptyToNil(vb)
	return reflect.DeepEqual(a, b)
}

func emptyToNil(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			emptyToNil(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				emptyToNil(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			v.SetZero()
			return
		}
		if v.Kind() == reflect.Slice {
			for i := 0; i < v.Len(); i++ {
				emptyToNil(v.Index(i))
			}
		}
	}
}

func mustMarshal(t *testing.T, c Config) []byte {
	t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The issue's example of minted sources parses, with each source's defaults.
func TestSources(t *testing.T) {
	c, err := Parse(strings.NewReader(`
routes:
  - name: db-api
    hosts: [db-api.example.com]
    source: vault-read
    path: "database/creds/{namespace}_{serviceaccount}"
    inject: {header: x-api-key, value: "{password}"}
  - name: partner
    hosts: [api.partner.example]
    source: oauth2-client-credentials
    path: "egress-oauth/{namespace}/{serviceaccount}"
    tokenURL: "https://auth.partner.example/oauth2/token"
    scopes: [read]
  - name: federated
    hosts: ["*.cloud.example"]
    source: vault-identity-token
    path: "identity/oidc/token/egress_{namespace}"
  - hosts: [kv.example]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ source, clientAuth, value string }{
		{"vault-read", "", "{password}"},
		{"oauth2-client-credentials", "basic", "Bearer {access_token}"},
		{"vault-identity-token", "", "Bearer {token}"},
		{"kv", "", "Bearer {api_key}"},
	}
	for i, w := range want {
		r := c.Routes[i]
		clientAuth := ""
		if r.OAuth2 != nil {
			clientAuth = r.OAuth2.ClientAuth
		}
		if r.Source != w.source || clientAuth != w.clientAuth || r.Inject.Value != w.value {
			t.Errorf("routes[%d] = %s %q %q; want %+v", i, r.Source, clientAuth, r.Inject.Value, w)
		}
	}
	if c.Source != "kv" {
		t.Errorf("top-level source = %q, want kv", c.Source)
	}
	top, err := Parse(strings.NewReader("source: vault-identity-token\nvault: {path: identity/oidc/token/egress}\n"))
	if err != nil || top.Inject.Value != "Bearer {token}" {
		t.Errorf("top-level identity token: %v %+v", err, top.Inject)
	}
}

func TestSourceErrors(t *testing.T) {
	tests := map[string]struct{ yaml, key string }{
		"unknown source":            {"routes: [{hosts: [a.b], source: ldap}]", "routes[0].source"},
		"tokenURL on a kv route":    {"routes: [{hosts: [a.b], tokenURL: 'https://x/t'}]", "routes[0].tokenURL"},
		"scopes on a vault-read":    {"routes: [{hosts: [a.b], source: vault-read, path: db/creds/x, scopes: [a], inject: {header: x, value: '{password}'}}]", "routes[0].scopes"},
		"oauth2 without tokenURL":   {"routes: [{hosts: [a.b], source: oauth2-client-credentials}]", "routes[0].tokenURL"},
		"bad clientAuth":            {"routes: [{hosts: [a.b], source: oauth2-client-credentials, tokenURL: 'https://x/t', clientAuth: jwt}]", "routes[0].clientAuth"},
		"vault-read without path":   {"routes: [{hosts: [a.b], source: vault-read, inject: {header: x, value: '{password}'}}]", "routes[0].path"},
		"vault-read without inject": {"routes: [{hosts: [a.b], source: vault-read, path: db/creds/x}]", "routes[0].inject"},
		"top-level tokenURL on kv":  {"tokenURL: 'https://x/t'", "tokenURL"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.key+":") {
				t.Fatalf("err = %v; want one naming %s", err, tc.key)
			}
		})
	}
}

func TestParseTracingAndDebug(t *testing.T) {
	c, err := Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if c.Tracing.OTLPEndpoint != "" || c.Debug.Listen != "" {
		t.Fatalf("tracing or debug on by default: %+v %+v", c.Tracing, c.Debug)
	}
	if c.Tracing.SamplingRatio != 0.01 {
		t.Fatalf("default samplingRatio %v, want 0.01", c.Tracing.SamplingRatio)
	}
	c, err = Parse(strings.NewReader("tracing: {otlpEndpoint: \"http://otel-collector:4317\", samplingRatio: 0}\ndebug: {listen: \"127.0.0.1:6060\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Tracing.OTLPEndpoint != "http://otel-collector:4317" || c.Tracing.SamplingRatio != 0 || c.Debug.Listen != "127.0.0.1:6060" {
		t.Fatalf("parsed %+v %+v", c.Tracing, c.Debug)
	}
}

// TestRouteHostsThatRouteAlike: hosts are routed without their port and
// with ASCII case folding only, so two routes whose hosts differ only by
// port are refused, and so is a non-ASCII host that strings.ToLower would
// fold into an ASCII one.
func TestRouteHostsThatRouteAlike(t *testing.T) {
	for name, c := range map[string]struct{ yaml, wantInError string }{
		"ports differ":          {`routes: [{hosts: ["a.com:443"]}, {hosts: ["a.com:8443"]}]`, "routes[1].hosts[0]"},
		"port and none":         {`routes: [{hosts: [a.com]}, {hosts: ["A.com:443"]}]`, "routes[1].hosts[0]"},
		"Kelvin sign":           {"routes: [{hosts: [\"\u212aey.example.com\"]}]", "routes[0].hosts[0]"},
		"non-ASCII wildcard":    {"routes: [{hosts: [\"*.\u00e9xample.com\"]}]", "routes[0].hosts[0]"},
		"dotless i upper-cased": {"routes: [{hosts: [\"\u0130d.example.com\"]}]", "routes[0].hosts[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.wantInError) {
				t.Fatalf("error %v does not name %q", err, c.wantInError)
			}
		})
	}
	// One port per route is still fine, and so is punycode.
	if _, err := Parse(strings.NewReader(`routes: [{name: a, hosts: ["a.com:443", "xn--xample-9ua.com"]}, {name: b, hosts: ["b.com:443"]}]`)); err != nil {
		t.Fatal(err)
	}
}

// TestWrittenDefaultIsKept: a key written with the value its default has is
// kept, even where another key's value would complete it differently.
func TestWrittenDefaultIsKept(t *testing.T) {
	c, err := Parse(strings.NewReader("vault: {authMethod: jwt, authMount: kubernetes}"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Vault.AuthMount != "kubernetes" {
		t.Errorf("vault.authMount written as kubernetes (the kubernetes method's default) became %q", c.Vault.AuthMount)
	}
	c, err = Parse(strings.NewReader(`
source: oauth2-client-credentials
tokenURL: "https://auth.example/token"
inject: {header: authorization, value: "Bearer {api_key}"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Inject.Value != "Bearer {api_key}" {
		t.Errorf("inject written as kv's default became %+v", c.Inject)
	}
	// Absent, each follows the key it depends on.
	c, err = Parse(strings.NewReader("source: oauth2-client-credentials\ntokenURL: \"https://auth.example/token\"\ninject: {header: x-token}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Inject.Header != "x-token" || c.Inject.Value != "Bearer {access_token}" || c.Inject.HasShapes() {
		t.Errorf("inject.value absent on an oauth2 source: %+v, want the source's value", c.Inject)
	}
}

// TestAllRoutes: the top-level keys are the first route's, a route like the
// others, and only while defaultRoute is on.
func TestAllRoutes(t *testing.T) {
	c, err := Parse(strings.NewReader(`
source: oauth2-client-credentials
tokenURL: "https://auth.example/token"
scopes: [read]
vault: {path: "oauth/{namespace}/{serviceaccount}"}
routes: [{hosts: [API.example.com]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	rs := c.AllRoutes()
	if len(rs) != 2 {
		t.Fatalf("%d routes, want 2: %+v", len(rs), rs)
	}
	d := rs[0]
	if d.Name != "" || d.Hosts != nil || d.Source != SourceOAuth2 || d.Path != "oauth/{namespace}/{serviceaccount}" ||
		d.OAuth2 == nil || d.OAuth2.TokenURL != "https://auth.example/token" || d.OAuth2.ClientAuth != "basic" || d.Inject.Value != "Bearer {access_token}" {
		t.Errorf("default route %+v (oauth2 %+v)", d, d.OAuth2)
	}
	if r := rs[1]; r.Name != "api.example.com" || r.Source != SourceKV || r.OAuth2 != nil || r.Inject.Value != "Bearer {api_key}" {
		t.Errorf("route %+v", r)
	}
	off, err := Parse(strings.NewReader("defaultRoute: false\nroutes: [{hosts: [a.example]}]"))
	if err != nil {
		t.Fatal(err)
	}
	if rs := off.AllRoutes(); len(rs) != 1 || rs[0].Name != "a.example" {
		t.Errorf("defaultRoute false: %+v", rs)
	}
	// The default route's keys are named as written, also when it is off.
	_, err = Parse(strings.NewReader("defaultRoute: false\nsource: ldap"))
	if err == nil || !strings.Contains(err.Error(), "source: \"ldap\" is not one of kv, vault-read, oauth2-client-credentials, vault-identity-token") {
		t.Errorf("err = %v", err)
	}
	// An empty list of OAuth2 scopes on another source says nothing.
	if c, err := Parse(strings.NewReader("routes: [{hosts: [a.example], scopes: []}]")); err != nil || c.Routes[0].OAuth2 != nil {
		t.Errorf("scopes: [] on kv: %v %+v", err, c.Routes)
	}
}
