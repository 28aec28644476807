package config

import (
	"strings"
	"testing"
	"time"
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
		"bad header name":          {`inject: {header: "x api key", value: "{api_key}"}`, "inject"},
		"value without field":      {`inject: {header: authorization, value: "Bearer static"}`, "inject"},
		"negative grace":           {"prefetch: {staleGrace: -1m}", "prefetch.staleGrace"},
		"zero refresh":             {"prefetch: {refresh: 0s}", "prefetch.refresh"},
		"zero refresh with events": {"prefetch: {refreshWithEvents: 0s}", "prefetch.refreshWithEvents"},
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
	if c.Listen.TLS != want || !c.Listen.TLS.Enabled() || c.Listen.Health != "0.0.0.0:8182" {
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

func FuzzParse(f *testing.F) {
	f.Add("listen: {grpc: \"127.0.0.1:1\"}")
	f.Add("routes: [{hosts: [\"*.a.com\"], path: \"x/{namespace}/{serviceaccount}\"}]")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = Parse(strings.NewReader(s))
	})
}

// The issue's example of minted sources parses, with each source's defaults.
func TestSources(t *testing.T) {
	c, err := Parse(strings.NewReader(`
routes:
  - name: db-api
    hosts: [db-api.example.com]
    source: vault-read
    path: "database/creds/{namespace}-{serviceaccount}"
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
    path: "identity/oidc/token/egress-{namespace}"
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
		if r.Source != w.source || r.ClientAuth != w.clientAuth || r.Inject.Value != w.value {
			t.Errorf("routes[%d] = %s %q %q; want %+v", i, r.Source, r.ClientAuth, r.Inject.Value, w)
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
