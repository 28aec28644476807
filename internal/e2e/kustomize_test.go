package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/kube"
)

// TestKustomizeApplies renders deploy/kubernetes with kubectl kustomize and
// applies it (server-side) to the real API server, then reads back what the
// API server stored. The config.yaml of each ConfigMap must pass credinject's
// own strict parser.
//
// The tls overlay holds a cert-manager Certificate; the bed runs no
// cert-manager, so the test first installs cert-manager's own CRDs (from its
// Go module, see installCRDs) and checks the object against them and
// against the Deployment (the secret it mounts, the files the configuration
// names). Every overlay probes the health port and ships the NetworkPolicy
// that admits only the gateway to the decision ports.
func TestKustomizeApplies(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kubectl := newKubectl(t, env)
	// The prefetch overlay's Role lives in the workload namespace, which a
	// real cluster already has.
	if err := env.Kube.CreateNamespace(ctx, "egress-test"); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, stdin []byte, args ...string) []byte {
		t.Helper()
		return []byte(kubectl.must(ctx, t, stdin, args...))
	}

	installCRDs(ctx, t, kubectl)

	for _, tc := range []struct {
		dir        string
		namespaces []string
		natsURL    bool
		tls        bool
		// peer: identities from the mesh (overlays/mesh).
		peer bool
	}{
		{dir: "deploy/kubernetes/base"},
		{dir: "deploy/kubernetes/overlays/prefetch", namespaces: []string{"egress-test"}},
		{dir: "deploy/kubernetes/overlays/nats", natsURL: true},
		{dir: "deploy/kubernetes/overlays/tls", tls: true},
		{dir: "deploy/kubernetes/overlays/mesh", peer: true},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			manifests := run(t, nil, "kustomize", tc.dir)
			out := run(t, manifests, "apply", "--server-side", "--field-manager", "credinject-e2e", "-f", "-")
			t.Logf("%s", out)

			dep, err := env.Kube.Client.AppsV1().Deployments("credinject").Get(ctx, "credinject", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
				t.Fatalf("deployment replicas %v, want 2", dep.Spec.Replicas)
			}
			if img := dep.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/credinject/credinject:latest" {
				t.Fatalf("image %q", img)
			}
			for _, get := range []func() error{
				func() error {
					_, err := env.Kube.Client.CoreV1().Services("credinject").Get(ctx, "credinject", metav1.GetOptions{})
					return err
				},
				func() error {
					_, err := env.Kube.Client.CoreV1().ServiceAccounts("credinject").Get(ctx, "credinject", metav1.GetOptions{})
					return err
				},
				func() error {
					_, err := env.Kube.Client.RbacV1().ClusterRoleBindings().Get(ctx, "credinject", metav1.GetOptions{})
					return err
				},
				func() error {
					_, err := env.Kube.Client.PolicyV1().PodDisruptionBudgets("credinject").Get(ctx, "credinject", metav1.GetOptions{})
					return err
				},
			} {
				if err := get(); err != nil {
					t.Fatal(err)
				}
			}

			// What the manifests grant is what jwks mode checks for at start.
			rc := env.Kube.RestConfig()
			rc.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:credinject:credinject"}
			as, err := kubernetes.NewForConfig(rc)
			if err != nil {
				t.Fatal(err)
			}
			if err := kube.CheckAccess(ctx, as); err != nil {
				t.Fatalf("credinject's ServiceAccount as deployed: %v", err)
			}

			cm, err := env.Kube.Client.CoreV1().ConfigMaps("credinject").Get(ctx, "credinject-config", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Parse(strings.NewReader(cm.Data["config.yaml"]))
			if err != nil {
				t.Fatalf("the ConfigMap's config.yaml is refused by credinject: %v", err)
			}
			if !slices.Equal(cfg.Prefetch.Namespaces, tc.namespaces) {
				t.Fatalf("prefetch.namespaces %v, want %v", cfg.Prefetch.Namespaces, tc.namespaces)
			}
			if (cfg.Events.NatsURL != "") != tc.natsURL {
				t.Fatalf("events.natsURL %q", cfg.Events.NatsURL)
			}
			if len(tc.namespaces) > 0 {
				if _, err := env.Kube.Client.RbacV1().RoleBindings("egress-test").Get(ctx, "credinject-prefetch", metav1.GetOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if cfg.Identity.HasPeer() != tc.peer {
				t.Fatalf("identity.sources %v", cfg.Identity.Sources)
			}
			if tc.peer {
				checkMeshOverlay(ctx, t, env, cfg, dep)
			}
			if cfg.Listen.TLS.Enabled() != tc.tls {
				t.Fatalf("listen.tls %+v", cfg.Listen.TLS)
			}
			if tc.natsURL {
				checkNATSOverlay(t, cfg, dep)
			}
			if tc.tls {
				checkTLSOverlay(t, cfg, dep, string(run(t, nil, "get", "-n", "credinject", "certificate", "credinject-tls", "-o", "jsonpath={.spec.secretName}")))
			}
			checkHealthPort(t, cfg, dep)
			np, err := env.Kube.Client.NetworkingV1().NetworkPolicies("credinject").Get(ctx, "credinject", metav1.GetOptions{})
			if err != nil {
				t.Fatalf("the NetworkPolicy that admits only the gateway: %v", err)
			}
			checkGatewayOnly(t, cfg, dep, np)
		})
	}
}

// checkMeshOverlay: credinject trusts only its sidecar, runs with one, and
// may request tokens (serviceaccounts/token create) in the namespace it
// serves by mesh identity, as the API server's authorizer answers.
func checkMeshOverlay(ctx context.Context, t *testing.T, env *testenv.Env, cfg config.Config, dep *appsv1.Deployment) {
	t.Helper()
	if !slices.Equal(cfg.Listen.TrustedProxies, []string{"127.0.0.6"}) {
		t.Fatalf("listen.trustedProxies %v, want the sidecar's [127.0.0.6]", cfg.Listen.TrustedProxies)
	}
	if dep.Spec.Template.Labels["sidecar.istio.io/inject"] != "true" {
		t.Fatalf("pod labels %v: no sidecar", dep.Spec.Template.Labels)
	}
	for ns, want := range map[string]bool{"egress-test": true, "default": false} {
		sar, err := env.Kube.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: "system:serviceaccount:credinject:credinject", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:credinject", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Resource: "serviceaccounts", Subresource: "token"},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != want {
			t.Fatalf("credinject may create serviceaccounts/token in %s: %v, want %v", ns, sar.Status.Allowed, want)
		}
	}
}

// checkNATSOverlay: credinject connects to NATS with credentials of its
// own, never anonymously: exactly one of events.credsFile, tokenFile and
// nkeyFile names a file inside a Secret the Deployment mounts as a directory
// (so a rotated Secret reaches the running pods); the configuration passes
// credinject's own checks of the events section.
func checkNATSOverlay(t *testing.T, cfg config.Config, dep *appsv1.Deployment) {
	t.Helper()
	var key, file string
	for k, f := range map[string]string{"events.credsFile": cfg.Events.CredsFile, "events.tokenFile": cfg.Events.TokenFile, "events.nkeyFile": cfg.Events.NKeyFile} {
		if f != "" {
			if file != "" {
				t.Fatalf("both %s and %s are set", key, k)
			}
			key, file = k, f
		}
	}
	if file == "" {
		t.Fatal("the nats overlay connects anonymously: set events.credsFile, tokenFile or nkeyFile")
	}
	pod := dep.Spec.Template.Spec
	secret := ""
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, m := range pod.Containers[0].VolumeMounts {
			if m.Name == v.Name && m.SubPath == "" && m.MountPath == filepath.Dir(file) {
				secret = v.Secret.SecretName
				if v.Secret.Optional != nil && *v.Secret.Optional {
					t.Fatalf("secret %s is optional: without it credinject would start with no NATS credentials", secret)
				}
			}
		}
	}
	if secret == "" {
		t.Fatalf("%s %q is not in a Secret the Deployment mounts as a directory", key, file)
	}
	if cfg.Events.MinInterval <= 0 {
		t.Fatalf("events.minInterval %v", cfg.Events.MinInterval)
	}
}

// checkTLSOverlay: the Deployment mounts the Certificate's secret where the
// configuration looks for the files, and mutual TLS names the gateway.
func checkTLSOverlay(t *testing.T, cfg config.Config, dep *appsv1.Deployment, secretName string) {
	t.Helper()
	if secretName != "credinject-tls" {
		t.Fatalf("certificate secretName %q", secretName)
	}
	pod := dep.Spec.Template.Spec
	mountPath := ""
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secretName {
			for _, m := range pod.Containers[0].VolumeMounts {
				if m.Name == v.Name && m.SubPath == "" {
					mountPath = m.MountPath
				}
			}
		}
	}
	if mountPath == "" {
		t.Fatalf("the Deployment does not mount secret %s as a directory (subPath mounts are never updated)", secretName)
	}
	for key, f := range map[string]string{"listen.tls.certFile": cfg.Listen.TLS.CertFile, "listen.tls.keyFile": cfg.Listen.TLS.KeyFile, "listen.tls.clientCAFile": cfg.Listen.TLS.ClientCAFile} {
		if filepath.Dir(f) != mountPath {
			t.Fatalf("%s %q is not in the secret's mount %s", key, f, mountPath)
		}
	}
	// Mutual TLS by name: the CA alone would admit any workload it issued to.
	if len(cfg.Listen.TLS.ClientNames) == 0 {
		t.Fatal("the tls overlay sets no listen.tls.clientNames")
	}
}

// checkHealthPort: listen.health is open, on the container port named
// health, and the probes use it.
func checkHealthPort(t *testing.T, cfg config.Config, dep *appsv1.Deployment) {
	t.Helper()
	pod := dep.Spec.Template.Spec
	_, port, _ := strings.Cut(cfg.Listen.Health, ":")
	healthPort := int32(0)
	for _, p := range pod.Containers[0].Ports {
		if p.Name == "health" {
			healthPort = p.ContainerPort
		}
	}
	if port == "" || fmt.Sprint(healthPort) != port {
		t.Fatalf("listen.health %q, container port health %d", cfg.Listen.Health, healthPort)
	}
	for name, pr := range map[string]*corev1.Probe{"startup": pod.Containers[0].StartupProbe, "liveness": pod.Containers[0].LivenessProbe, "readiness": pod.Containers[0].ReadinessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Port.String() != "health" {
			t.Fatalf("%s probe not on the health port: %+v", name, pr)
		}
	}
}

// The gateway's pods as deploy/kubernetes/base/networkpolicy.yaml selects
// them (the one place; README and deploy/kubernetes/README.md say so), and
// Prometheus's.
var (
	gatewayPeer = networkingv1.NetworkPolicyPeer{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "gateway-system"}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"gateway.networking.k8s.io/gateway-name": "kuadrant-egressgateway"}},
	}
	prometheusPeer = networkingv1.NetworkPolicyPeer{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "prometheus"}},
	}
)

// checkGatewayOnly: the NetworkPolicy (as the API server stored it) selects
// credinject's pods, restricts their ingress, and admits on the decision
// ports (listen.grpc, listen.http) only the gateway's pods and on
// listen.health only Prometheus; no rule admits anyone on every port.
func checkGatewayOnly(t *testing.T, cfg config.Config, dep *appsv1.Deployment, np *networkingv1.NetworkPolicy) {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Fatalf("the NetworkPolicy's podSelector %v does not select credinject's pods %v", np.Spec.PodSelector, dep.Spec.Template.Labels)
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Fatalf("policyTypes %v: ingress is not restricted", np.Spec.PolicyTypes)
	}
	// Container port number by name, to resolve named policy ports.
	byName := map[string]int32{}
	for _, p := range dep.Spec.Template.Spec.Containers[0].Ports {
		byName[p.Name] = p.ContainerPort
	}
	admitted := map[int32][]networkingv1.NetworkPolicyPeer{}
	for i, rule := range np.Spec.Ingress {
		if len(rule.Ports) == 0 || len(rule.From) == 0 {
			t.Fatalf("ingress[%d] admits on every port or from everyone: %+v", i, rule)
		}
		for _, p := range rule.Ports {
			n := p.Port.IntVal
			if p.Port.StrVal != "" {
				if n = byName[p.Port.StrVal]; n == 0 {
					t.Fatalf("ingress[%d] names port %q, which the container does not have", i, p.Port.StrVal)
				}
			}
			admitted[n] = append(admitted[n], rule.From...)
		}
	}
	port := func(key, addr string) int32 {
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("%s %q: %v", key, addr, err)
		}
		n, _ := strconv.Atoi(p)
		return int32(n)
	}
	for key, want := range map[string]struct {
		addr string
		peer networkingv1.NetworkPolicyPeer
	}{
		"listen.grpc":   {cfg.Listen.GRPC, gatewayPeer},
		"listen.http":   {cfg.Listen.HTTP, gatewayPeer},
		"listen.health": {cfg.Listen.Health, prometheusPeer},
	} {
		got := admitted[port(key, want.addr)]
		if len(got) != 1 || !equality.Semantic.DeepEqual(got[0], want.peer) {
			t.Fatalf("%s (%s) admits %+v, want only %+v", key, want.addr, got, want.peer)
		}
	}
	if len(admitted) != 3 {
		t.Fatalf("the NetworkPolicy admits ports %v, want only the three listeners'", slices.Collect(maps.Keys(admitted)))
	}
}

// TestIstioManifests renders deploy/istio and deploy/istio/mesh with kubectl
// kustomize and checks what each setup relies on (that the API server
// accepts them, Istio's CRDs installed, is TestDeployManifestsAgainstTheirAPIs'): the CUSTOM policy naming the credinject provider;
// for the mesh setup, ISTIO_MUTUAL from the sidecars to the gateway and on
// its server, and credinject reachable only by the gateway's identity.
func TestIstioManifests(t *testing.T) {
	kubeDir, err := testenv.ToolDir("kube")
	if err != nil {
		t.Fatal(err)
	}
	render := func(dir string) []map[string]any {
		cmd := exec.Command(filepath.Join(kubeDir, "kubectl"), "kustomize", dir)
		cmd.Dir = repoRoot(t)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		var docs []map[string]any
		dec := yaml.NewDecoder(bytes.NewReader(out))
		for {
			var d map[string]any
			if err := dec.Decode(&d); err != nil {
				break
			}
			docs = append(docs, d)
		}
		return docs
	}
	find := func(docs []map[string]any, kind, name string) map[string]any {
		for _, d := range docs {
			md, _ := d["metadata"].(map[string]any)
			if d["kind"] == kind && md["name"] == name {
				return d
			}
		}
		t.Fatalf("no %s %s", kind, name)
		return nil
	}
	get := func(v any, path ...any) any {
		for _, p := range path {
			switch k := p.(type) {
			case string:
				m, _ := v.(map[string]any)
				v = m[k]
			case int:
				l, _ := v.([]any)
				if k >= len(l) {
					return nil
				}
				v = l[k]
			}
		}
		return v
	}
	for dir, name := range map[string]string{"deploy/istio": "httpbin-external-credinject", "deploy/istio/mesh": "httpbin-mesh-credinject"} {
		ap := find(render(dir), "AuthorizationPolicy", name)
		if get(ap, "spec", "action") != "CUSTOM" || get(ap, "spec", "provider", "name") != "credinject" {
			t.Fatalf("%s: %v", dir, ap["spec"])
		}
	}
	mesh := render("deploy/istio/mesh")
	if got := get(find(mesh, "Gateway", "egress-mesh"), "spec", "servers", 0, "tls", "mode"); got != "ISTIO_MUTUAL" {
		t.Fatalf("the gateway's mesh server tls mode %v", got)
	}
	if got := get(find(mesh, "DestinationRule", "egressgateway-mesh"), "spec", "subsets", 0, "trafficPolicy", "portLevelSettings", 0, "tls", "mode"); got != "ISTIO_MUTUAL" {
		t.Fatalf("sidecar to gateway tls mode %v", got)
	}
	allow := find(mesh, "AuthorizationPolicy", "credinject-only-the-gateway")
	if get(allow, "spec", "action") != "ALLOW" || get(allow, "spec", "rules", 0, "from", 0, "source", "principals", 0) != "cluster.local/ns/istio-system/sa/istio-egressgateway-service-account" {
		t.Fatalf("credinject's ALLOW policy %v", allow["spec"])
	}
	if get(find(mesh, "PeerAuthentication", "credinject"), "spec", "mtls", "mode") != "STRICT" {
		t.Fatal("credinject's sidecar accepts plaintext on the decision ports")
	}
}
