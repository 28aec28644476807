package policies

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credinject/credinject/api/v1alpha1"
	"github.com/credinject/credinject/internal/config"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func testConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	c, err := config.Parse(strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

func pol(ns, name string, age int, mut func(*v1alpha1.CredentialPolicySpec)) *v1alpha1.CredentialPolicy {
	p := &v1alpha1.CredentialPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 3,
			CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(age) * time.Second))},
		Spec: v1alpha1.CredentialPolicySpec{
			Hosts:  []string{"api.example.com"},
			Source: v1alpha1.Source{Type: "kv", Path: "ex/{namespace}/{serviceaccount}"},
			Inject: v1alpha1.Inject{Header: "Authorization", Value: "Bearer {api_key}"},
		},
	}
	if mut != nil {
		mut(&p.Spec)
	}
	return p
}

func noRoutes(string, string) ([]string, bool) { return nil, false }

func nn(ns, name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

func TestCompileValid(t *testing.T) {
	cfg := testConfig(t, `
routes:
- hosts: [api.openai.com]
  path: "openai/{namespace}/{serviceaccount}"
`)
	p := pol("gw", "ex", 0, func(s *v1alpha1.CredentialPolicySpec) {
		s.Paths = []string{"/v2/", "/v1/"}
		s.Subjects = &v1alpha1.Subjects{Namespaces: []string{"team-a"}, ServiceAccounts: []string{"team-b/agent"}}
		s.Vault = &v1alpha1.VaultOverride{Role: "other", AuthMount: "k8s2", KVMount: "kv2"}
		s.Source.Path = ""
	})
	tab := Compile(cfg, []*v1alpha1.CredentialPolicy{p}, noRoutes)
	if c := tab.Conditions[nn("gw", "ex")]; !c.Accepted || c.Reason != v1alpha1.ReasonAccepted || c.Generation != 3 {
		t.Fatalf("condition %+v", c)
	}
	if len(tab.Routes) != 3 || !tab.HasDefault || tab.Routes[0].Name != "" || tab.Routes[1].Name != "api.openai.com" {
		t.Fatalf("routes %+v", tab.Routes)
	}
	r := tab.Routes[2]
	if r.Name != "gw_ex" || r.Policy != nn("gw", "ex") || strings.Join(r.Paths, ",") != "/v1/,/v2/" {
		t.Errorf("route %+v", r)
	}
	// Completed with the config file's rules: vault.path, lower-case header.
	if r.Config.Path != cfg.Vault.Path || r.Config.Inject.Header != "authorization" || r.Config.Source != "kv" {
		t.Errorf("completed route %+v", r.Config)
	}
	if r.Vault.Role != "other" || r.Vault.AuthMount != "k8s2" || r.Vault.KVMount != "kv2" {
		t.Errorf("vault %+v", r.Vault)
	}
	if r.Subjects == nil || r.Subjects.Namespaces[0] != "team-a" || r.Subjects.ServiceAccounts[0] != "team-b/agent" {
		t.Errorf("subjects %+v", r.Subjects)
	}
}

func TestCompileInvalid(t *testing.T) {
	cfg := testConfig(t, "")
	for name, tc := range map[string]struct {
		mut func(*v1alpha1.CredentialPolicySpec)
		key string
	}{
		"ambiguous path":  {func(s *v1alpha1.CredentialPolicySpec) { s.Source.Path = "x/{namespace}-{serviceaccount}" }, "spec.source.path"},
		"oauth2 no url":   {func(s *v1alpha1.CredentialPolicySpec) { s.Source.Type = "oauth2-client-credentials" }, "spec.source.tokenURL"},
		"scopes on kv":    {func(s *v1alpha1.CredentialPolicySpec) { s.Source.Scopes = []string{"a"} }, "spec.source.scopes"},
		"unknown source":  {func(s *v1alpha1.CredentialPolicySpec) { s.Source.Type = "s3" }, "spec.source.type"},
		"bad header":      {func(s *v1alpha1.CredentialPolicySpec) { s.Inject.Header = "a b" }, "spec.inject"},
		"no placeholder":  {func(s *v1alpha1.CredentialPolicySpec) { s.Inject.Value = "Bearer" }, "spec.inject"},
		"non-ascii host":  {func(s *v1alpha1.CredentialPolicySpec) { s.Hosts = []string{"api.o\u212ata.com"} }, "spec.hosts[0]"},
		"bad host":        {func(s *v1alpha1.CredentialPolicySpec) { s.Hosts = []string{"a..b"} }, "spec.hosts[0]"},
		"read needs path": {func(s *v1alpha1.CredentialPolicySpec) { s.Source = v1alpha1.Source{Type: "vault-read"} }, "spec.source.path"},
		"bad path prefix": {func(s *v1alpha1.CredentialPolicySpec) { s.Paths = []string{"v1"} }, "spec.paths[0]"},
		"bad subject": {func(s *v1alpha1.CredentialPolicySpec) {
			s.Subjects = &v1alpha1.Subjects{ServiceAccounts: []string{"nons"}}
		}, "spec.subjects.serviceAccounts[0]"},
		"bad role":        {func(s *v1alpha1.CredentialPolicySpec) { s.Vault = &v1alpha1.VaultOverride{Role: "a b"} }, "spec.vault.role"},
		"bad vault ns":    {func(s *v1alpha1.CredentialPolicySpec) { s.Vault = &v1alpha1.VaultOverride{Namespace: " x"} }, "spec.vault.namespace"},
		"no hosts at all": {func(s *v1alpha1.CredentialPolicySpec) { s.Hosts = nil }, "spec: no hosts"},
		"other target kind": {func(s *v1alpha1.CredentialPolicySpec) {
			s.TargetRefs = []v1alpha1.TargetRef{{Group: "gateway.networking.k8s.io", Kind: "GRPCRoute", Name: "x"}}
		}, "spec.targetRefs[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			tab := Compile(cfg, []*v1alpha1.CredentialPolicy{pol("gw", "ex", 0, tc.mut)}, noRoutes)
			c := tab.Conditions[nn("gw", "ex")]
			if c.Accepted || c.Reason != v1alpha1.ReasonInvalid || !strings.Contains(c.Message, tc.key) {
				t.Errorf("condition %+v, want Invalid naming %s", c, tc.key)
			}
			if len(tab.Routes) != 1 {
				t.Errorf("an invalid policy is served: %+v", tab.Routes)
			}
		})
	}
}

func TestCompileConflicts(t *testing.T) {
	cfg := testConfig(t, `
routes:
- hosts: [api.openai.com]
`)
	older := pol("b", "older", 0, nil)
	newer := pol("a", "newer", 10, nil)
	sameAgeA := pol("a", "x", 20, func(s *v1alpha1.CredentialPolicySpec) { s.Hosts = []string{"same.example"} })
	sameAgeB := pol("b", "x", 20, func(s *v1alpha1.CredentialPolicySpec) { s.Hosts = []string{"SAME.example:443"} })
	pathed := pol("c", "pathed", 30, func(s *v1alpha1.CredentialPolicySpec) { s.Paths = []string{"/v1/"} })
	pathed2 := pol("c", "pathed2", 40, func(s *v1alpha1.CredentialPolicySpec) { s.Paths = []string{"/v1/", "/v2/"} })
	fileHost := pol("c", "file", 0, func(s *v1alpha1.CredentialPolicySpec) { s.Hosts = []string{"api.openai.com"} })
	tab := Compile(cfg, []*v1alpha1.CredentialPolicy{newer, pathed2, sameAgeB, older, sameAgeA, pathed, fileHost}, noRoutes)
	want := map[types.NamespacedName]string{
		nn("b", "older"):   "",
		nn("a", "newer"):   "CredentialPolicy b/older",
		nn("a", "x"):       "",
		nn("b", "x"):       "CredentialPolicy a/x",
		nn("c", "pathed"):  "", // same host, another path prefix
		nn("c", "pathed2"): "CredentialPolicy c/pathed",
		nn("c", "file"):    "the config file's routes[0]",
	}
	for k, winner := range want {
		c := tab.Conditions[k]
		if winner == "" {
			if !c.Accepted {
				t.Errorf("%s: %+v, want accepted", k, c)
			}
			continue
		}
		if c.Accepted || c.Reason != v1alpha1.ReasonConflicted || !strings.Contains(c.Message, winner) {
			t.Errorf("%s: %+v, want Conflicted naming %s", k, c, winner)
		}
	}
	var names []string
	for _, r := range tab.Routes {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != ",api.openai.com,b_older,a_x,c_pathed" {
		t.Errorf("routes %s", got)
	}
}

func TestCompileTargets(t *testing.T) {
	cfg := testConfig(t, "defaultRoute: false")
	hostnames := func(ns, name string) ([]string, bool) {
		if ns == "gw" && name == "openai" {
			return []string{"api.openai.com", "*.openai.com"}, true
		}
		if ns == "gw" && name == "empty" {
			return nil, true
		}
		return nil, false
	}
	ref := func(name string) []v1alpha1.TargetRef {
		return []v1alpha1.TargetRef{{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute", Name: name}}
	}
	found := pol("gw", "found", 0, func(s *v1alpha1.CredentialPolicySpec) { s.TargetRefs = ref("openai") })
	missing := pol("gw", "missing", 0, func(s *v1alpha1.CredentialPolicySpec) { s.TargetRefs = ref("nope") })
	empty := pol("gw", "empty", 0, func(s *v1alpha1.CredentialPolicySpec) { s.TargetRefs, s.Hosts = ref("empty"), nil })
	other := pol("other", "x", 0, func(s *v1alpha1.CredentialPolicySpec) { s.TargetRefs, s.Hosts = ref("openai"), nil })
	tab := Compile(cfg, []*v1alpha1.CredentialPolicy{found, missing, empty, other}, hostnames)
	if c := tab.Conditions[nn("gw", "found")]; !c.Accepted {
		t.Errorf("found: %+v", c)
	}
	if c := tab.Conditions[nn("gw", "missing")]; c.Reason != v1alpha1.ReasonTargetNotFound || !strings.Contains(c.Message, "gw/nope") {
		t.Errorf("missing: %+v", c)
	}
	if c := tab.Conditions[nn("gw", "empty")]; c.Reason != v1alpha1.ReasonInvalid {
		t.Errorf("empty: %+v", c)
	}
	// Targets are looked up in the policy's own namespace.
	if c := tab.Conditions[nn("other", "x")]; c.Reason != v1alpha1.ReasonTargetNotFound {
		t.Errorf("other namespace: %+v", c)
	}
	if tab.HasDefault || len(tab.Routes) != 1 || strings.Join(tab.Routes[0].Hosts, ",") != "api.openai.com,*.openai.com,api.example.com" {
		t.Errorf("routes %+v", tab.Routes)
	}
}

// TestCompileInjectShapes: a policy's spec.inject becomes the config.Inject
// the config file makes of the same inject block: names lower-cased, sign's
// payload defaulted, the shapes as written.
func TestCompileInjectShapes(t *testing.T) {
	const listen = "listen: {http: \"\", health: \"127.0.0.1:8182\"}\n"
	cfg := testConfig(t, listen)
	for name, tc := range map[string]struct {
		in   v1alpha1.Inject
		file string // the same inject in the config file
	}{
		"headers, basic, query, metadata": {
			v1alpha1.Inject{
				Header: "X-Org", Value: "{org}",
				Headers:  []v1alpha1.HeaderTemplate{{Name: "X-Key", Value: "Key {api_key}"}, {Name: "x-tenant", Value: "{tenant}"}},
				Basic:    &v1alpha1.Basic{Username: "{user}", Password: "{password}"},
				Query:    []v1alpha1.QueryTemplate{{Name: "key", Value: "{api_key}"}},
				Metadata: map[string]v1alpha1.Template{"upstream_key": "Bearer {api_key}", "tenant": "{tenant}"},
			},
			`{header: X-Org, value: "{org}", headers: [{name: X-Key, value: "Key {api_key}"}, {name: x-tenant, value: "{tenant}"}],
  basic: {username: "{user}", password: "{password}"}, query: [{name: key, value: "{api_key}"}],
  metadata: {upstream_key: "Bearer {api_key}", tenant: "{tenant}"}}`,
		},
		"sign": {
			v1alpha1.Inject{Sign: &v1alpha1.Sign{Type: "aws-sigv4", Service: "bedrock", Region: "us-east-1"}},
			`{sign: {type: aws-sigv4, service: bedrock, region: us-east-1}}`,
		},
		"sign unsigned, metadata": {
			v1alpha1.Inject{Sign: &v1alpha1.Sign{Type: "aws-sigv4", Service: "s3", Region: "eu-west-3", Payload: "unsigned"},
				Metadata: map[string]v1alpha1.Template{"k": "{access_key}"}},
			`{sign: {type: aws-sigv4, service: s3, region: eu-west-3, payload: unsigned}, metadata: {k: "{access_key}"}}`,
		},
	} {
		t.Run(name, func(t *testing.T) {
			p := pol("gw", "ex", 0, func(s *v1alpha1.CredentialPolicySpec) { s.Inject = tc.in })
			tab := Compile(cfg, []*v1alpha1.CredentialPolicy{p}, noRoutes)
			if c := tab.Conditions[nn("gw", "ex")]; !c.Accepted {
				t.Fatalf("condition %+v", c)
			}
			got := tab.Routes[len(tab.Routes)-1].Config.Inject
			want := testConfig(t, listen+"routes: [{hosts: [file.example], inject: "+tc.file+"}]").Routes[0].Inject
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("compiled inject\n got %s\nwant %s", showInject(got), showInject(want))
			}
		})
	}
}

// showInject prints a config.Inject as YAML (its pointers followed).
func showInject(in config.Inject) string {
	b, _ := yaml.Marshal(in)
	return string(b)
}

// TestCompileInjectRefused: query, metadata and sign need the HTTP
// forward-auth listener off; with it on, the policy is Invalid, the message
// naming the spec key; so is a shape the CRD's rules let through and the
// config file's refuse (a ':' in a Basic username, a header set twice).
func TestCompileInjectRefused(t *testing.T) {
	cfg := testConfig(t, "") // listen.http on, its default
	for name, tc := range map[string]struct {
		in  v1alpha1.Inject
		key string
	}{
		"query":     {v1alpha1.Inject{Query: []v1alpha1.QueryTemplate{{Name: "key", Value: "{api_key}"}}}, "spec.inject.query: "},
		"metadata":  {v1alpha1.Inject{Metadata: map[string]v1alpha1.Template{"k": "{api_key}"}}, "spec.inject.metadata: "},
		"sign":      {v1alpha1.Inject{Sign: &v1alpha1.Sign{Type: "aws-sigv4", Service: "s3", Region: "us-east-1"}}, "spec.inject.sign: "},
		"basic ':'": {v1alpha1.Inject{Basic: &v1alpha1.Basic{Username: "a:{u}", Password: "{p}"}}, "spec.inject.basic.username: "},
		"duplicate header": {v1alpha1.Inject{Header: "x-a", Value: "{a}", Headers: []v1alpha1.HeaderTemplate{{Name: "X-A", Value: "{b}"}}},
			"spec.inject.headers[0].name: "},
	} {
		t.Run(name, func(t *testing.T) {
			p := pol("gw", "ex", 0, func(s *v1alpha1.CredentialPolicySpec) { s.Inject = tc.in })
			tab := Compile(cfg, []*v1alpha1.CredentialPolicy{p}, noRoutes)
			c := tab.Conditions[nn("gw", "ex")]
			if c.Accepted || c.Reason != v1alpha1.ReasonInvalid || !strings.Contains(c.Message, tc.key) {
				t.Errorf("condition %+v, want Invalid naming %s", c, tc.key)
			}
			if len(tab.Routes) != 1 {
				t.Errorf("an invalid policy is served: %+v", tab.Routes)
			}
		})
	}
}
