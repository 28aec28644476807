package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	vaultapi "github.com/hashicorp/vault/api"
	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/credinject/credinject/api/v1alpha1"
	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/logbuf"
	"github.com/credinject/credinject/policies"
)

// policyBed is the bed with the CRDs installed, a namespace for policies
// and HTTPRoutes, two identities with KV credentials (A: "sk-a", B:
// "sk-b") and a second Vault role (second-role, bound to A's namespace)
// whose policy reads only the KV mount kv2, where A's credential is
// "kv2-a".
type policyBed struct {
	env      *testenv.Env
	kubectl  kubectlCmd
	dyn      dynamic.Interface
	ns       string
	nsA, saA string
	tokA     string
	nsB, saB string
	tokB     string
}

var (
	policyBedOnce sync.Once
	policyBedVal  *policyBed
	policyBedErr  string
)

func newPolicyBed(t testing.TB) *policyBed {
	t.Helper()
	env := testenv.Get(t)
	policyBedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		b := &policyBed{env: env, kubectl: newKubectl(t, env), ns: "credpol-gw"}
		installCRDs(ctx, t, b.kubectl)
		var err error
		if b.dyn, err = dynamic.NewForConfig(env.Kube.RestConfig()); err != nil {
			policyBedErr = err.Error()
			return
		}
		if err := env.Kube.CreateNamespace(ctx, b.ns); err != nil {
			policyBedErr = err.Error()
			return
		}
		if b.nsA, b.saA, b.tokA, err = env.Kube.Identity(ctx, "credpol-a"); err != nil {
			policyBedErr = err.Error()
			return
		}
		if b.nsB, b.saB, b.tokB, err = env.Kube.Identity(ctx, "credpol-b"); err != nil {
			policyBedErr = err.Error()
			return
		}
		for _, id := range [][3]string{{b.nsA, b.saA, "sk-a"}, {b.nsB, b.saB, "sk-b"}} {
			if _, err := env.Vault.PutCredential(ctx, "egress/"+id[0]+"/"+id[1], map[string]any{"api_key": id[2]}); err != nil {
				policyBedErr = err.Error()
				return
			}
			if err := env.Vault.BindNamespace(ctx, id[0]); err != nil {
				policyBedErr = err.Error()
				return
			}
		}
		// The second role and mount.
		vc := env.Vault.Client
		if err := vc.Sys().MountWithContext(ctx, "kv2", &vaultapi.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil &&
			!strings.Contains(err.Error(), "path is already in use") {
			policyBedErr = err.Error()
			return
		}
		if _, err := vc.KVv2("kv2").Put(ctx, "egress/"+b.nsA+"/"+b.saA, map[string]any{"api_key": "kv2-a"}); err != nil {
			policyBedErr = err.Error()
			return
		}
		if err := vc.Sys().PutPolicyWithContext(ctx, "second-read", `path "kv2/data/*" { capabilities = ["read"] }`); err != nil {
			policyBedErr = err.Error()
			return
		}
		if _, err := vc.Logical().WriteWithContext(ctx, "auth/"+testenv.VaultKubeMount+"/role/second-role", map[string]any{
			"bound_service_account_names": "*", "bound_service_account_namespaces": b.nsA, "token_policies": "second-read", "ttl": "1h",
		}); err != nil {
			policyBedErr = err.Error()
			return
		}
		policyBedVal = b
	})
	if policyBedVal == nil {
		t.Fatalf("policy bed: %s", policyBedErr)
	}
	return policyBedVal
}

// apply creates or replaces the CredentialPolicy name with spec.
func (b *policyBed) apply(t testing.TB, name string, spec map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := b.dyn.Resource(policies.PolicyResource).Namespace(b.ns)
	if _, err := res.Get(ctx, name, metav1.GetOptions{}); err == nil {
		if err := replaceSpec(ctx, res, name, spec); err != nil {
			t.Fatalf("update %s: %v", name, err)
		}
		return
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "credinject.io/v1alpha1", "kind": "CredentialPolicy",
		"metadata": map[string]any{"name": name, "namespace": b.ns}, "spec": spec,
	}}
	if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
}

func (b *policyBed) delete(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.dyn.Resource(policies.PolicyResource).Namespace(b.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete %s: %v", name, err)
	}
}

// httpRoute creates or replaces the HTTPRoute name with hostnames.
func (b *policyBed) httpRoute(t testing.TB, name string, hostnames ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := b.dyn.Resource(policies.HTTPRouteResource).Namespace(b.ns)
	hs := make([]any, len(hostnames))
	for i, h := range hostnames {
		hs[i] = h
	}
	if cur, err := res.Get(ctx, name, metav1.GetOptions{}); err == nil {
		_ = unstructured.SetNestedSlice(cur.Object, hs, "spec", "hostnames")
		if _, err := res.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update HTTPRoute %s: %v", name, err)
		}
		return
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": name, "namespace": b.ns},
		"spec": map[string]any{"parentRefs": []any{map[string]any{"name": "egress"}}, "hostnames": hs,
			"rules": []any{map[string]any{"backendRefs": []any{map[string]any{"name": "svc", "port": int64(443)}}}}},
	}}
	if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create HTTPRoute %s: %v", name, err)
	}
}

// accepted returns the policy's Accepted and Enforced conditions and its
// status's observedGeneration and metadata.generation ("" when absent).
func (b *policyBed) status(t testing.TB, name string) (accepted, enforced *metav1.Condition, observed, generation int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := b.dyn.Resource(policies.PolicyResource).Namespace(b.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, nil, 0, 0
	}
	var p v1alpha1.CredentialPolicy
	if err := fromUnstructured(u, &p); err != nil {
		t.Fatal(err)
	}
	return meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted),
		meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionEnforced), p.Status.ObservedGeneration, p.Generation
}

// waitStatus waits until the policy's Accepted condition has reason (and
// its message contains msg) for its current generation.
func (b *policyBed) waitStatus(t testing.TB, name, reason, msg string) {
	t.Helper()
	var last string
	apptest.Eventually(t, 30*time.Second, name+" Accepted reason "+reason, func() bool {
		acc, enf, obs, gen := b.status(t, name)
		if acc == nil {
			return false
		}
		last = fmt.Sprintf("%s %s %q (observed %d of %d)", acc.Status, acc.Reason, acc.Message, obs, gen)
		ok := acc.Reason == reason && strings.Contains(acc.Message, msg) && obs == gen && acc.ObservedGeneration == gen
		if reason == v1alpha1.ReasonAccepted {
			ok = ok && enf != nil && enf.Status == metav1.ConditionTrue
		}
		return ok
	})
	t.Logf("%s: %s", name, last)
}

// checkPath asks r for host and path with token.
func checkPath(t *testing.T, r *apptest.Running, token, host, path string) string {
	t.Helper()
	q := apptest.Request("Bearer "+token, host)
	q.Attributes.Request.Http.Path = path
	q.Attributes.Request.Http.Headers[":path"] = path
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := r.Client.Check(ctx, q)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return apptest.Outcome(resp)
}

// waitOutcome waits until checkPath answers want.
func waitOutcome(t *testing.T, r *apptest.Running, token, host, path, want string) {
	t.Helper()
	var got string
	apptest.Eventually(t, 30*time.Second, fmt.Sprintf("%s%s to answer %q (last %q)", host, path, want, got), func() bool {
		got = checkPath(t, r, token, host, path)
		return got == want
	})
}

// writeConfig writes cfg's routes file for a reload: the keys a reload
// compares, as YAML.
func writeConfig(t *testing.T, path string, doc map[string]any) {
	t.Helper()
	raw, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// baseConfigDoc is the bed's configuration as a file: the listeners and
// Vault of apptest.Config, policies on, no default route, routes as given.
func baseConfigDoc(env *testenv.Env, ns string, routes []any) map[string]any {
	c := apptest.Config(env)
	return map[string]any{
		"listen":       map[string]any{"grpc": c.Listen.GRPC, "http": c.Listen.HTTP},
		"vault":        map[string]any{"address": c.Vault.Address},
		"defaultRoute": false,
		"routes":       routes,
		"policies":     map[string]any{"enabled": true, "namespaces": []any{ns}},
	}
}

func kvSpec(hosts ...string) map[string]any {
	hs := make([]any, len(hosts))
	for i, h := range hosts {
		hs[i] = h
	}
	return map[string]any{"hosts": hs, "source": map[string]any{"type": "kv", "path": "egress/{namespace}/{serviceaccount}"},
		"inject": map[string]any{"header": "authorization", "value": "Bearer {api_key}"}}
}

// TestCredentialPolicies: policies applied on the bed's API server reach
// the hot path of a running credinject, with status: create, update,
// delete; paths and subjects; a policy's own Vault role and KV mount; a
// conflict with an older policy and with the config file; an HTTPRoute
// target whose hostnames change, and a missing one; a policy refused at
// admission and one reported Invalid; the config file reloaded, a bad one
// refused.
func TestCredentialPolicies(t *testing.T) {
	b := newPolicyBed(t)
	env := b.env
	dir := t.TempDir()
	path := filepath.Join(dir, "credinject.yaml")
	fileRoute := map[string]any{"name": "file", "hosts": []any{"file.example"}}
	writeConfig(t, path, baseConfigDoc(env, b.ns, []any{fileRoute}))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Events.NatsURL = ""
	logs := &logbuf.Buffer{}
	r := apptest.StartWith(t, env, cfg, func(o *app.Options) {
		o.ConfigPath, o.ReloadInterval, o.LeaseNamespace = path, 100*time.Millisecond, b.ns
		o.Log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})

	t.Run("create, paths, subjects", func(t *testing.T) {
		spec := kvSpec("api.paths.example")
		spec["paths"] = []any{"/v1/"}
		spec["subjects"] = map[string]any{"namespaces": []any{b.nsA}}
		b.apply(t, "paths", spec)
		waitOutcome(t, r, b.tokA, "api.paths.example", "/v1/chat", "allow authorization=Bearer sk-a")
		b.waitStatus(t, "paths", v1alpha1.ReasonAccepted, "")
		if got := checkPath(t, r, b.tokB, "api.paths.example", "/v1/chat"); got != "deny 403 subject_not_allowed" {
			t.Errorf("caller outside subjects: %s", got)
		}
		if got := checkPath(t, r, b.tokA, "api.paths.example", "/v2/chat"); got != "deny 403 no_route" {
			t.Errorf("path outside the prefixes: %s", got)
		}
		// A longer prefix on the same host, from another policy, wins.
		longer := kvSpec("api.paths.example")
		longer["paths"] = []any{"/v1/admin/"}
		longer["inject"] = map[string]any{"header": "x-admin-key", "value": "{api_key}"}
		b.apply(t, "paths-admin", longer)
		waitOutcome(t, r, b.tokB, "api.paths.example", "/v1/admin/users", "allow x-admin-key=sk-b")
		waitOutcome(t, r, b.tokA, "api.paths.example", "/v1/chat", "allow authorization=Bearer sk-a")
	})

	t.Run("update and delete", func(t *testing.T) {
		// Meanwhile another route (the config file's) is asked without
		// pause: no change may refuse it.
		stopOther := make(chan struct{})
		otherDone := make(chan []string)
		go func() {
			var bad []string
			for n := 0; ; n++ {
				select {
				case <-stopOther:
					otherDone <- bad
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := r.Client.Check(ctx, apptest.Request("Bearer "+b.tokA, "file.example"))
				cancel()
				if got := apptest.Outcome(resp); err != nil || got != "allow authorization=Bearer sk-a" {
					bad = append(bad, fmt.Sprintf("%d: %s %v", n, got, err))
				}
			}
		}()
		defer func() {
			close(stopOther)
			if bad := <-otherDone; len(bad) > 0 {
				t.Errorf("the config file's route was refused during policy changes: %v", bad)
			}
		}()
		spec := kvSpec("api.update.example")
		b.apply(t, "update", spec)
		waitOutcome(t, r, b.tokA, "api.update.example", "/", "allow authorization=Bearer sk-a")
		spec["inject"] = map[string]any{"header": "x-api-key", "value": "{api_key}"}
		b.apply(t, "update", spec)
		waitOutcome(t, r, b.tokA, "api.update.example", "/", "allow x-api-key=sk-a")
		b.waitStatus(t, "update", v1alpha1.ReasonAccepted, "")
		if _, _, obs, _ := b.status(t, "update"); obs != 2 {
			t.Errorf("observedGeneration %d after one update; want 2", obs)
		}
		b.delete(t, "update")
		waitOutcome(t, r, b.tokA, "api.update.example", "/", "deny 403 no_route")
	})

	t.Run("own Vault role and mount", func(t *testing.T) {
		spec := kvSpec("api.second.example")
		spec["vault"] = map[string]any{"role": "second-role", "kvMount": "kv2"}
		b.apply(t, "second", spec)
		waitOutcome(t, r, b.tokA, "api.second.example", "/", "allow authorization=Bearer kv2-a")
		// B's namespace is not bound to second-role: Vault refuses its
		// login, though B reads the default mount with the default role.
		if got := checkPath(t, r, b.tokB, "api.second.example", "/"); got != "deny 403 vault_denied" {
			t.Errorf("B through second-role: %s", got)
		}
		// That refusal is second-role's: B's other routes still serve.
		if got := checkPath(t, r, b.tokB, "file.example", "/"); got != "allow authorization=Bearer sk-b" {
			t.Errorf("B on the default role after second-role refused it: %s", got)
		}
		b.waitStatus(t, "second", v1alpha1.ReasonAccepted, "")
	})

	t.Run("conflicts", func(t *testing.T) {
		// creationTimestamp has a resolution of a second: the names order
		// the two as their ages do.
		b.apply(t, "conflict-a", kvSpec("api.conflict.example"))
		b.waitStatus(t, "conflict-a", v1alpha1.ReasonAccepted, "")
		newer := kvSpec("api.conflict.example")
		newer["inject"] = map[string]any{"header": "x-newer", "value": "{api_key}"}
		b.apply(t, "conflict-b", newer)
		b.waitStatus(t, "conflict-b", v1alpha1.ReasonConflicted, "CredentialPolicy "+b.ns+"/conflict-a")
		if got := checkPath(t, r, b.tokA, "api.conflict.example", "/"); got != "allow authorization=Bearer sk-a" {
			t.Errorf("the older policy must keep serving: %s", got)
		}
		b.apply(t, "conflict-file", kvSpec("file.example"))
		b.waitStatus(t, "conflict-file", v1alpha1.ReasonConflicted, "the config file's routes[0]")
		// The loser takes over once the winner is gone.
		b.delete(t, "conflict-a")
		waitOutcome(t, r, b.tokA, "api.conflict.example", "/", "allow x-newer=sk-a")
		b.waitStatus(t, "conflict-b", v1alpha1.ReasonAccepted, "")
	})

	t.Run("HTTPRoute target", func(t *testing.T) {
		b.httpRoute(t, "openai", "api.r1.example")
		spec := kvSpec()
		delete(spec, "hosts")
		spec["targetRefs"] = []any{map[string]any{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "openai"}}
		b.apply(t, "target", spec)
		waitOutcome(t, r, b.tokA, "api.r1.example", "/", "allow authorization=Bearer sk-a")
		b.httpRoute(t, "openai", "api.r2.example")
		waitOutcome(t, r, b.tokA, "api.r2.example", "/", "allow authorization=Bearer sk-a")
		waitOutcome(t, r, b.tokA, "api.r1.example", "/", "deny 403 no_route")
		missing := kvSpec()
		delete(missing, "hosts")
		missing["targetRefs"] = []any{map[string]any{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "nope"}}
		b.apply(t, "target-missing", missing)
		b.waitStatus(t, "target-missing", v1alpha1.ReasonTargetNotFound, "HTTPRoute "+b.ns+"/nope")
	})

	t.Run("invalid", func(t *testing.T) {
		// Refused at admission: kubectl prints the CEL rule's message.
		bad := `{"apiVersion":"credinject.io/v1alpha1","kind":"CredentialPolicy","metadata":{"name":"refused","namespace":"` + b.ns +
			`"},"spec":{"hosts":["api.bad.example"],"source":{"type":"kv","path":"x/{namespace}-{serviceaccount}"},"inject":{"header":"authorization","value":"Bearer {api_key}"}}}`
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := b.kubectl.run(ctx, t, []byte(bad), "apply", "-f", "-")
		if err == nil || !strings.Contains(err.Error(), "a placeholder touches") {
			t.Errorf("admission: %v %s", err, out)
		}
		// Admitted, but an empty label in a host: Invalid, naming the key.
		b.apply(t, "invalid", kvSpec("api..invalid.example"))
		b.waitStatus(t, "invalid", v1alpha1.ReasonInvalid, "spec.hosts[0]")
		if got := checkPath(t, r, b.tokA, "api..invalid.example", "/"); got != "deny 403 no_route" {
			t.Errorf("invalid policy served: %s", got)
		}
	})

	t.Run("config reload", func(t *testing.T) {
		file2 := map[string]any{"name": "file2", "hosts": []any{"file2.example"}, "inject": map[string]any{"header": "x-file2", "value": "{api_key}"}}
		if got := checkPath(t, r, b.tokA, "file2.example", "/"); got != "deny 403 no_route" {
			t.Fatalf("before the reload: %s", got)
		}
		writeConfig(t, path, baseConfigDoc(env, b.ns, []any{fileRoute, file2}))
		waitOutcome(t, r, b.tokA, "file2.example", "/", "allow x-file2=sk-a")
		// Policies still served beside the reloaded routes.
		waitOutcome(t, r, b.tokA, "api.second.example", "/", "allow authorization=Bearer kv2-a")
		errs := r.Counter(t, "credinject_config_reloads_total", map[string]string{"result": "error"})
		badDoc := baseConfigDoc(env, b.ns, []any{fileRoute, map[string]any{"hosts": []any{"bad.example"}, "path": "x/{namespace}-{serviceaccount}"}})
		writeConfig(t, path, badDoc)
		apptest.Eventually(t, 30*time.Second, "the bad file refused", func() bool {
			return r.Counter(t, "credinject_config_reloads_total", map[string]string{"result": "error"}) > errs
		})
		if !strings.Contains(logs.String(), "routes[1].path") {
			t.Errorf("the refusal does not name the key at fault:\n%s", logs.String())
		}
		if got := checkPath(t, r, b.tokA, "file2.example", "/"); got != "allow x-file2=sk-a" {
			t.Errorf("after a bad file, the previous configuration must stay: %s", got)
		}
		// A listen address change is logged as needing a restart.
		restart := baseConfigDoc(env, b.ns, []any{fileRoute, file2})
		restart["listen"] = map[string]any{"grpc": "127.0.0.1:1", "http": "127.0.0.1:0"}
		writeConfig(t, path, restart)
		apptest.Eventually(t, 30*time.Second, "a restart-only change logged", func() bool {
			return strings.Contains(logs.String(), "only after a restart") && strings.Contains(logs.String(), "listen.grpc")
		})
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Logf("kubectl get credpol -n %s:\n%s", b.ns, b.kubectl.must(ctx, t, nil, "get", "credpol", "-n", b.ns))
}

// TestCredentialPolicyLeaderElection: two replicas follow every change;
// only the Lease holder writes status; when it stops, the other takes
// status over.
func TestCredentialPolicyLeaderElection(t *testing.T) {
	b := newPolicyBed(t)
	env := b.env
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	f := false
	cfg.DefaultRoute = &f
	cfg.Policies = config.Policies{Enabled: true, Namespaces: []string{b.ns}}
	opts := func(o *app.Options) { o.LeaseNamespace, o.LeaseDuration = b.ns, 3*time.Second }
	ctx1, stop1 := context.WithCancel(context.Background())
	r1, done1 := apptest.RunWith(t, ctx1, env, cfg, opts)
	ctx2, stop2 := context.WithCancel(context.Background())
	r2, done2 := apptest.RunWith(t, ctx2, env, cfg, opts)
	stopped := map[*apptest.Running]bool{}
	stop := func(r *apptest.Running) {
		if stopped[r] {
			return
		}
		stopped[r] = true
		r.Conn.Close()
		if r == r1 {
			stop1()
			<-done1
		} else {
			stop2()
			<-done2
		}
	}
	t.Cleanup(func() { stop(r1); stop(r2) })

	apptest.Eventually(t, 30*time.Second, "one leader", func() bool { return r1.App.PolicyLeader() != r2.App.PolicyLeader() })
	leader, follower := r1, r2
	if r2.App.PolicyLeader() {
		leader, follower = r2, r1
	}
	b.apply(t, "le-one", kvSpec("api.le-one.example"))
	for _, r := range []*apptest.Running{leader, follower} {
		waitOutcome(t, r, b.tokA, "api.le-one.example", "/", "allow authorization=Bearer sk-a")
	}
	b.waitStatus(t, "le-one", v1alpha1.ReasonAccepted, "")
	if n := follower.Counter(t, "credinject_policies_status_writes_total", nil); n != 0 {
		t.Errorf("the follower wrote status %v times", n)
	}
	stop(leader)
	apptest.Eventually(t, 30*time.Second, "the follower leads", follower.App.PolicyLeader)
	b.apply(t, "le-two", kvSpec("api.le-two.example"))
	waitOutcome(t, follower, b.tokA, "api.le-two.example", "/", "allow authorization=Bearer sk-a")
	b.waitStatus(t, "le-two", v1alpha1.ReasonAccepted, "")
	if n := follower.Counter(t, "credinject_policies_status_writes_total", map[string]string{"result": "ok"}); n == 0 {
		t.Error("the new leader wrote no status")
	}
}

// BenchmarkPolicyChangeToHotPath: the time from a policy update's answer
// from the API server until the running credinject answers with it, over
// 100 updates (p50, p99 reported).
func BenchmarkPolicyChangeToHotPath(b *testing.B) {
	pb := newPolicyBed(b)
	cfg := apptest.Config(pb.env)
	cfg.Events.NatsURL = ""
	cfg.Policies = config.Policies{Enabled: true, Namespaces: []string{pb.ns}}
	r := apptest.StartWith(b, pb.env, cfg, func(o *app.Options) { o.LeaseNamespace = pb.ns })
	res := pb.dyn.Resource(policies.PolicyResource).Namespace(pb.ns)
	ctx := context.Background()
	spec := kvSpec("api.bench.example")
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "credinject.io/v1alpha1", "kind": "CredentialPolicy",
		"metadata": map[string]any{"name": "bench", "namespace": pb.ns}, "spec": spec,
	}}
	_ = res.Delete(ctx, "bench", metav1.DeleteOptions{})
	if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	req := func() *authv3.CheckRequest { return apptest.Request("Bearer "+pb.tokA, "api.bench.example") }
	var lat []time.Duration
	b.ResetTimer()
	for i := range 100 {
		want := fmt.Sprintf("allow x-bench-%d=sk-a", i)
		spec["inject"] = map[string]any{"header": fmt.Sprintf("x-bench-%d", i), "value": "{api_key}"}
		if err := replaceSpec(ctx, res, "bench", spec); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for {
			resp, err := r.Client.Check(ctx, req())
			if err != nil {
				b.Fatal(err)
			}
			if apptest.Outcome(resp) == want {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("change %d not served after 30s", i)
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// replaceSpec replaces a policy's spec with a JSON patch: no conflict with
// the status credinject writes meanwhile.
func replaceSpec(ctx context.Context, res dynamic.ResourceInterface, name string, spec map[string]any) error {
	patch, err := json.Marshal([]map[string]any{{"op": "replace", "path": "/spec", "value": spec}})
	if err != nil {
		return err
	}
	_, err = res.Patch(ctx, name, types.JSONPatchType, patch, metav1.PatchOptions{})
	return err
}

func fromUnstructured(u *unstructured.Unstructured, into any) error {
	return runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into)
}
