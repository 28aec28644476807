package e2e_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/kube"
)

// TestHelmChart lints deploy/helm/credinject, renders it with the values of
// each kustomize overlay (helm built from its Go module like the bed's
// other tools), checks what it renders as TestKustomizeApplies checks the
// overlays (the configuration passes credinject's parser, files the
// configuration names are mounted, the gateway-only NetworkPolicy, the
// health port), applies it server-side to the bed's API server with the
// CRDs it needs, and checks that the ServiceAccount it creates has the
// access credinject checks for at start.
func TestHelmChart(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	helmDir, err := testenv.ToolDir("helm")
	if err != nil {
		t.Fatal(err)
	}
	helm := func(t *testing.T, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, filepath.Join(helmDir, "helm"), args...)
		cmd.Dir = repoRoot(t)
		cmd.Env = append(cmd.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
		out, err := cmd.Output()
		if err != nil {
			stderr := ""
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("helm %s: %v\n%s\n%s", strings.Join(args, " "), err, stderr, out)
		}
		return string(out)
	}
	kubectl := newKubectl(t, env)
	installCRDs(ctx, t, kubectl)
	const release, ns = "credinject-helm", "credinject-helm"
	for _, n := range []string{ns, "helm-team-a"} {
		if _, err := env.Kube.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name       string
		set        []string
		namespaces []string
		natsURL    bool
		tls        bool
	}{
		{name: "defaults"},
		{name: "prefetch", set: []string{"prefetch.namespaces={helm-team-a}"}, namespaces: []string{"helm-team-a"}},
		{name: "nats", set: []string{"nats.url=nats://nats.nats.svc.cluster.local:4222"}, natsURL: true},
		{name: "tls", set: []string{"tls.enabled=true"}, tls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sets []string
			for _, s := range tc.set {
				sets = append(sets, "--set", s)
			}
			lint := helm(t, append([]string{"lint", "--strict", "deploy/helm/credinject"}, sets...)...)
			if !strings.Contains(lint, "0 chart(s) failed") {
				t.Fatalf("helm lint:\n%s", lint)
			}
			manifests := helm(t, append([]string{"template", release, "deploy/helm/credinject", "--namespace", ns, "--include-crds"}, sets...)...)

			var (
				cfg    config.Config
				dep    *appsv1.Deployment
				np     *networkingv1.NetworkPolicy
				roles  []string
				secret string
			)
			dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
			for {
				var u unstructured.Unstructured
				if err := dec.Decode(&u.Object); err != nil {
					break
				}
				if len(u.Object) == 0 {
					continue
				}
				switch u.GetKind() {
				case "ConfigMap":
					var cm corev1.ConfigMap
					convert(t, &u, &cm)
					if cfg, err = config.Parse(strings.NewReader(cm.Data["config.yaml"])); err != nil {
						t.Fatalf("the chart's config.yaml is refused by credinject: %v\n%s", err, cm.Data["config.yaml"])
					}
				case "Deployment":
					dep = &appsv1.Deployment{}
					convert(t, &u, dep)
				case "NetworkPolicy":
					np = &networkingv1.NetworkPolicy{}
					convert(t, &u, np)
				case "Role":
					var r rbacv1.Role
					convert(t, &u, &r)
					roles = append(roles, r.Namespace)
				case "Certificate":
					secret, _, _ = unstructured.NestedString(u.Object, "spec", "secretName")
				}
			}
			if dep == nil || np == nil {
				t.Fatalf("the chart renders no Deployment or no NetworkPolicy:\n%s", manifests)
			}
			if !slices.Equal(cfg.Prefetch.Namespaces, tc.namespaces) || !slices.Equal(roles, tc.namespaces) {
				t.Fatalf("prefetch.namespaces %v, Roles in %v, want %v", cfg.Prefetch.Namespaces, roles, tc.namespaces)
			}
			if (cfg.Events.NatsURL != "") != tc.natsURL {
				t.Fatalf("events.natsURL %q", cfg.Events.NatsURL)
			}
			if tc.natsURL {
				checkNATSOverlay(t, cfg, dep)
			}
			if cfg.Listen.TLS.Enabled() != tc.tls {
				t.Fatalf("listen.tls %+v", cfg.Listen.TLS)
			}
			if tc.tls {
				checkTLSOverlay(t, cfg, dep, secret)
			}
			checkHealthPort(t, cfg, dep)
			checkGatewayOnly(t, cfg, dep, np)

			out := kubectl.must(ctx, t, []byte(manifests), "apply", "--server-side", "--field-manager", "credinject-e2e", "-f", "-")
			t.Logf("%s", out)
			rc := env.Kube.RestConfig()
			rc.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + release}
			as, err := kubernetes.NewForConfig(rc)
			if err != nil {
				t.Fatal(err)
			}
			if err := kube.CheckAccess(ctx, as); err != nil {
				t.Fatalf("the chart's ServiceAccount: %v", err)
			}
			want := []authzv1.ResourceAttributes{
				{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"},
				{Resource: "serviceaccounts", Verb: "list"},
				{Resource: "serviceaccounts", Verb: "watch"},
			}
			for _, n := range tc.namespaces {
				want = append(want, authzv1.ResourceAttributes{Namespace: n, Resource: "serviceaccounts", Subresource: "token", Verb: "create"})
			}
			for _, ra := range want {
				r, err := as.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
					&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if !r.Status.Allowed {
					t.Fatalf("the chart's ServiceAccount may not %s %s/%s in %q", ra.Verb, ra.Resource, ra.Subresource, ra.Namespace)
				}
			}
		})
	}
}

// convert turns a decoded object into its typed form, strictly.
func convert(t *testing.T, u *unstructured.Unstructured, into runtime.Object) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}
