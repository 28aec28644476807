package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// TestCredentialPolicyGenerated: the committed CRD manifest (and the Helm
// chart's copy) and deepcopy functions are what controller-gen makes of
// api/ today (make generate).
func TestCredentialPolicyGenerated(t *testing.T) {
	dir, err := testenv.ToolDir("controllergen")
	if err != nil {
		t.Fatal(err)
	}
	root := repoRoot(t)
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(dir, "controller-gen"), "object", "crd", "paths=./api/...",
		"output:object:dir="+filepath.Join(out, "object"), "output:crd:dir="+filepath.Join(out, "crd"))
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, b)
	}
	for _, f := range []struct{ gen, committed string }{
		{"object/zz_generated.deepcopy.go", "api/v1alpha1/zz_generated.deepcopy.go"},
		{"crd/credinject.io_credentialpolicies.yaml", "deploy/crds/credinject.io_credentialpolicies.yaml"},
		{"crd/credinject.io_credentialpolicies.yaml", "deploy/helm/credinject/crds/credinject.io_credentialpolicies.yaml"},
	} {
		gen, committed := f.gen, f.committed
		want, err := os.ReadFile(filepath.Join(out, gen))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, committed))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what controller-gen generates from api/: run make generate and commit", committed)
		}
	}
}

// policyCase is one CredentialPolicy, checked twice: by the real API
// server against the CRD's schema and CEL rules (server-side dry run, as
// kubectl apply does) and, where the spec is a route the config file can
// express, by credinject's own validation of that route.
type policyCase struct {
	name string
	// spec of the policy, as YAML; hosts defaults to api.example.com.
	spec map[string]any
	// refused: the error the API server prints (a substring); empty: admitted.
	refused string
	// file: the config file's verdict on the same route, when it differs
	// from the API server's (its strictness differs only where listed).
	file *bool
}

func TestCredentialPolicyAdmission(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kubectl := newKubectl(t, env)
	kubectl.must(ctx, t, nil, "apply", "--server-side", "--field-manager", "credinject-e2e", "-f", "deploy/crds/credinject.io_credentialpolicies.yaml")
	kubectl.must(ctx, t, nil, "wait", "--for", "condition=Established", "--timeout", "60s", "crd/credentialpolicies.credinject.io")
	if err := env.Kube.CreateNamespace(ctx, "policies"); err != nil {
		t.Fatal(err)
	}

	kv := func(path string) map[string]any { return map[string]any{"type": "kv", "path": path} }
	inject := map[string]any{"header": "authorization", "value": "Bearer {api_key}"}
	spec := func(source map[string]any, in map[string]any) map[string]any {
		return map[string]any{"hosts": []any{"api.example.com"}, "source": source, "inject": in}
	}
	yes := true
	cases := []policyCase{
		{name: "kv path", spec: spec(kv("egress/{namespace}/{serviceaccount}"), inject)},
		{name: "underscore separator", spec: spec(kv("database/creds/{namespace}_{serviceaccount}"), inject)},
		{name: "dash beside placeholder", spec: spec(kv("creds/{namespace}-{serviceaccount}"), inject), refused: "a placeholder touches"},
		{name: "touching placeholders", spec: spec(kv("creds/{namespace}{serviceaccount}"), inject), refused: "a placeholder touches"},
		{name: "letter before placeholder", spec: spec(kv("creds/x{namespace}"), inject), refused: "a placeholder touches"},
		{name: "dot after placeholder", spec: spec(kv("creds/{namespace}.x"), inject), refused: "a placeholder touches"},
		{name: "unknown placeholder", spec: spec(kv("creds/{pod}"), inject), refused: "unknown or unbalanced placeholder"},
		{name: "upper-case placeholder", spec: spec(kv("creds/{NAMESPACE}"), inject), refused: "unknown or unbalanced placeholder"},
		{name: "unclosed placeholder", spec: spec(kv("creds/{namespace"), inject), refused: "unknown or unbalanced placeholder"},
		{name: "stray brace", spec: spec(kv("creds/namespace}"), inject), refused: "unknown or unbalanced placeholder"},
		{name: "absolute path", spec: spec(kv("/secret/x"), inject), refused: "must be relative"},
		{name: "dot-dot", spec: spec(kv("egress/../x"), inject), refused: "must be relative"},
		{name: "identity token", spec: spec(map[string]any{"type": "vault-identity-token", "path": "identity/oidc/token/egress_{namespace}"},
			map[string]any{"header": "authorization", "value": "Bearer {token}"})},
		{name: "vault-read needs a path", spec: spec(map[string]any{"type": "vault-read"}, inject), refused: "need their own path"},
		{name: "unknown source", spec: spec(map[string]any{"type": "ldap", "path": "x"}, inject), refused: "Unsupported value: \"ldap\""},
		{name: "oauth2", spec: spec(map[string]any{"type": "oauth2-client-credentials", "path": "oauth/{namespace}/{serviceaccount}",
			"tokenURL": "https://idp.example.com/token", "scopes": []any{"read"}, "clientAuth": "post"},
			map[string]any{"header": "authorization", "value": "Bearer {access_token}"})},
		{name: "oauth2 without tokenURL", spec: spec(map[string]any{"type": "oauth2-client-credentials", "path": "oauth/{namespace}"}, inject), refused: "needs tokenURL"},
		{name: "oauth2 keys on kv", spec: spec(map[string]any{"type": "kv", "path": "x/{namespace}", "tokenURL": "https://idp.example.com/token"}, inject),
			refused: "only for type oauth2-client-credentials"},
		{name: "clientAuth", spec: spec(map[string]any{"type": "oauth2-client-credentials", "path": "o/{namespace}", "tokenURL": "https://idp.example.com/t",
			"clientAuth": "jwt"}, inject), refused: "Unsupported value: \"jwt\""},
		{name: "scope with a space", spec: spec(map[string]any{"type": "oauth2-client-credentials", "path": "o/{namespace}", "tokenURL": "https://idp.example.com/t",
			"scopes": []any{"a b"}}, inject), refused: "scopes[0]"},
		{name: "api key header", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "x-api-key", "value": "{api_key}"})},
		{name: "header with a space", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "x api", "value": "{api_key}"}), refused: "spec.inject.header"},
		{name: "value without placeholder", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "x-api-key", "value": "static"}), refused: "placeholders naming credential fields"},
		{name: "placeholder not a field name", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "x-api-key", "value": "{api key}"}), refused: "placeholders naming credential fields"},
		{name: "value with a newline", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "x-api-key", "value": "{api_key}\nx: y"}), refused: "control character"},
		{name: "upper-case host", spec: map[string]any{"hosts": []any{"API.example.com"}, "source": kv("egress/{namespace}"), "inject": inject},
			refused: "spec.hosts[0]", file: &yes},
		{name: "host wildcard", spec: map[string]any{"hosts": []any{"*.example.com"}, "source": kv("egress/{namespace}"), "inject": inject}},
		{name: "host with a path", spec: map[string]any{"hosts": []any{"example.com/x"}, "source": kv("egress/{namespace}"), "inject": inject}, refused: "spec.hosts[0]"},
		{name: "no hosts nor targets", spec: map[string]any{"source": kv("egress/{namespace}"), "inject": inject}, refused: "needs targetRefs or hosts"},
		{name: "HTTPRoute target", spec: map[string]any{"targetRefs": []any{map[string]any{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "openai"}},
			"source": kv("egress/{namespace}"), "inject": inject}},
		{name: "Service target", spec: map[string]any{"targetRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "openai"}},
			"source": kv("egress/{namespace}"), "inject": inject}, refused: "only gateway.networking.k8s.io HTTPRoute targets"},
		{name: "subjects", spec: map[string]any{"hosts": []any{"api.example.com"}, "paths": []any{"/v1/"}, "source": kv("egress/{namespace}"), "inject": inject,
			"subjects": map[string]any{"namespaces": []any{"team-a"}, "serviceAccounts": []any{"team-b/agent"}}}},
		{name: "subject without namespace", spec: map[string]any{"hosts": []any{"api.example.com"}, "source": kv("egress/{namespace}"), "inject": inject,
			"subjects": map[string]any{"serviceAccounts": []any{"agent"}}}, refused: "spec.subjects.serviceAccounts[0]"},
		{name: "path prefix without slash", spec: map[string]any{"hosts": []any{"api.example.com"}, "paths": []any{"v1/"}, "source": kv("egress/{namespace}"), "inject": inject},
			refused: "spec.paths[0]"},
		{name: "vault override", spec: map[string]any{"hosts": []any{"api.example.com"}, "source": kv("egress/{namespace}"), "inject": inject,
			"vault": map[string]any{"role": "egress-second", "authMount": "kubernetes", "kvMount": "secret"}}},
		{name: "vault role with a space", spec: map[string]any{"hosts": []any{"api.example.com"}, "source": kv("egress/{namespace}"), "inject": inject,
			"vault": map[string]any{"role": "a b"}}, refused: "spec.vault.role"},
		// The injection's shapes (the config file's listen.http is off, so
		// the gRPC-only ones are routes it accepts too).
		{name: "headers", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "authorization", "value": "Bearer {api_key}",
			"headers": []any{map[string]any{"name": "OpenAI-Organization", "value": "{org}"}, map[string]any{"name": "x-project", "value": "proj-{project}"}}})},
		{name: "basic", spec: spec(kv("egress/{namespace}"), map[string]any{"basic": map[string]any{"username": "{user}", "password": "{password}"}})},
		{name: "basic with a key as the username", spec: spec(kv("egress/{namespace}"), map[string]any{"basic": map[string]any{"username": "{api_key}"}})},
		{name: "basic and sign", spec: spec(kv("egress/{namespace}"), map[string]any{"basic": map[string]any{"username": "{user}", "password": "{password}"},
			"sign": map[string]any{"type": "aws-sigv4", "service": "s3", "region": "us-east-1"}}), refused: "basic cannot go with sign"},
		{name: "query", spec: spec(kv("egress/{namespace}"), map[string]any{"query": []any{map[string]any{"name": "api_key", "value": "{api_key}"}}})},
		{name: "metadata", spec: spec(kv("egress/{namespace}"), map[string]any{"metadata": map[string]any{"upstream_key": "Bearer {api_key}"}})},
		{name: "sign s3 unsigned payload", spec: spec(kv("aws/{namespace}/{serviceaccount}"),
			map[string]any{"sign": map[string]any{"type": "aws-sigv4", "service": "s3", "region": "us-east-1", "payload": "unsigned"}})},
		{name: "sign bedrock from aws/sts", spec: spec(map[string]any{"type": "vault-read", "path": "aws/sts/{namespace}_{serviceaccount}"},
			map[string]any{"sign": map[string]any{"type": "aws-sigv4", "service": "bedrock", "region": "us-east-1"}})},
		{name: "header without value", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "x-api-key"}), refused: "header and value go together"},
		// The file gives an empty inject the source's default.
		{name: "empty inject", spec: spec(kv("egress/{namespace}"), map[string]any{}), refused: "inject needs a shape", file: &yes},
		{name: "sign and query", spec: spec(kv("egress/{namespace}"), map[string]any{
			"sign":  map[string]any{"type": "aws-sigv4", "service": "s3", "region": "us-east-1"},
			"query": []any{map[string]any{"name": "k", "value": "{api_key}"}}}), refused: "query cannot go with sign"},
		{name: "basic and header authorization", spec: spec(kv("egress/{namespace}"), map[string]any{"header": "Authorization", "value": "Bearer {api_key}",
			"basic": map[string]any{"username": "{user}", "password": "{password}"}}), refused: "basic and sign set authorization"},
		{name: "metadata key namespace", spec: spec(kv("egress/{namespace}"), map[string]any{"metadata": map[string]any{"namespace": "{api_key}"}}),
			refused: "other than namespace, serviceaccount and route"},
		{name: "sign type gcp", spec: spec(kv("egress/{namespace}"), map[string]any{"sign": map[string]any{"type": "gcp", "service": "s3", "region": "us-east-1"}}),
			refused: "Unsupported value: \"gcp\""},
		{name: "query name with a space", spec: spec(kv("egress/{namespace}"), map[string]any{"query": []any{map[string]any{"name": "api key", "value": "{api_key}"}}}),
			refused: "spec.inject.query[0].name"},
		{name: "headers value without placeholder", spec: spec(kv("egress/{namespace}"), map[string]any{"headers": []any{map[string]any{"name": "x-api-key", "value": "static"}}}),
			refused: "placeholders naming credential fields"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := yaml.Marshal(map[string]any{
				"apiVersion": "credinject.io/v1alpha1", "kind": "CredentialPolicy",
				"metadata": map[string]any{"name": fmt.Sprintf("case-%d", i), "namespace": "policies"},
				"spec":     tc.spec,
			})
			if err != nil {
				t.Fatal(err)
			}
			out, err := kubectl.run(ctx, t, doc, "apply", "--server-side", "--dry-run=server", "--field-manager", "credinject-e2e", "-f", "-")
			admitted := err == nil
			switch {
			case tc.refused == "" && !admitted:
				t.Fatalf("refused at admission: %v\n%s", err, out)
			case tc.refused != "" && admitted:
				t.Fatalf("admitted, want refused with %q:\n%s", tc.refused, doc)
			case tc.refused != "" && !strings.Contains(err.Error(), tc.refused):
				t.Fatalf("refused, but kubectl printed no %q:\n%v", tc.refused, err)
			}
			route, ok := fileRoute(tc.spec)
			if !ok {
				return // targets, subjects, paths and overrides have no config-file form
			}
			want := admitted
			if tc.file != nil {
				want = *tc.file
			}
			_, ferr := config.Parse(strings.NewReader(route))
			if (ferr == nil) != want {
				t.Fatalf("the config file's verdict differs (want accepted %v): %v\n%s", want, ferr, route)
			}
		})
	}

	// kubectl get shows hosts, source, Accepted and age.
	kubectl.must(ctx, t, []byte(`apiVersion: credinject.io/v1alpha1
kind: CredentialPolicy
metadata: {name: openai, namespace: policies}
spec:
  hosts: ["api.openai.com"]
  source: {path: "egress/{namespace}/{serviceaccount}"}
  inject: {header: authorization, value: "Bearer {api_key}"}
`), "apply", "--server-side", "--field-manager", "credinject-e2e", "-f", "-")
	got := kubectl.must(ctx, t, nil, "get", "credpol", "-n", "policies")
	t.Logf("kubectl get credpol:\n%s", got)
	header := strings.Fields(strings.SplitN(got, "\n", 2)[0])
	if strings.Join(header, " ") != "NAME HOSTS SOURCE ACCEPTED AGE" {
		t.Fatalf("columns %v", header)
	}
	if !strings.Contains(got, `["api.openai.com"]`) || !strings.Contains(got, " kv ") {
		t.Fatalf("the row shows no host or no defaulted source type:\n%s", got)
	}
}

// fileRoute renders a policy spec as a config file with that one route,
// when the spec only uses what a route of the file can say; the file turns
// listen.http off, so the gRPC-only shapes are routes it can say too.
func fileRoute(spec map[string]any) (string, bool) {
	source, _ := spec["source"].(map[string]any)
	r := map[string]any{"hosts": spec["hosts"], "inject": spec["inject"]}
	for k, v := range source {
		if k == "type" {
			k = "source"
		}
		r[k] = v
	}
	for k := range spec {
		switch k {
		case "hosts", "source", "inject":
		default:
			return "", false
		}
	}
	if spec["hosts"] == nil {
		return "", false
	}
	// HTTP forward-auth off, as the gRPC-only shapes need.
	b, err := yaml.Marshal(map[string]any{"listen": map[string]any{"http": "", "health": "127.0.0.1:0"}, "routes": []any{r}})
	if err != nil {
		panic(err)
	}
	return string(b), true
}

// kubectlCmd runs the bed's kubectl against its API server, in the
// repository root.
type kubectlCmd struct{ bin, kubeconfig string }

func newKubectl(t testing.TB, env *testenv.Env) kubectlCmd {
	t.Helper()
	kubeDir, err := testenv.ToolDir("kube")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := env.Kube.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	return kubectlCmd{bin: filepath.Join(kubeDir, "kubectl"), kubeconfig: kubeconfig}
}

// run returns kubectl's standard output (what it renders, for kustomize);
// a failure's error carries its standard error, where kubectl prints why.
func (k kubectlCmd) run(ctx context.Context, t testing.TB, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, k.bin, append([]string{"--kubeconfig", k.kubeconfig}, args...)...)
	cmd.Dir = repoRoot(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// must is run, failing the test on error.
func (k kubectlCmd) must(ctx context.Context, t testing.TB, stdin []byte, args ...string) string {
	t.Helper()
	out, err := k.run(ctx, t, stdin, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}
