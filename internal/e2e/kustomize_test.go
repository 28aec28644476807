package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// cert-manager, so the test first installs a subset of cert-manager's
// Certificate CRD (testdata/cert-manager-certificate-crd.yaml: its real
// field names, types and enums, strict) and checks the object against it and
// against the Deployment (the secret it mounts, the files the configuration
// names, the probes on the health port).
func TestKustomizeApplies(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kubeDir, err := testenv.ToolDir("kube")
	if err != nil {
		t.Fatal(err)
	}
	kubectl := filepath.Join(kubeDir, "kubectl")
	kubeconfig, err := env.Kube.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	// The prefetch overlay's Role lives in the workload namespace, which a
	// real cluster already has.
	if err := env.Kube.CreateNamespace(ctx, "egress-test"); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Dir = repoRoot(t)
		var stdout, stderr bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("kubectl %s: %v\n%s\n%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
		}
		return stdout.Bytes()
	}

	run(t, nil, "apply", "--server-side", "--field-manager", "credinject-e2e", "-f", "internal/e2e/testdata/cert-manager-certificate-crd.yaml")
	run(t, nil, "wait", "--for", "condition=Established", "--timeout", "60s", "crd/certificates.cert-manager.io")

	for _, tc := range []struct {
		dir        string
		namespaces []string
		natsURL    bool
		tls        bool
	}{
		{dir: "deploy/kubernetes/base"},
		{dir: "deploy/kubernetes/overlays/prefetch", namespaces: []string{"egress-test"}},
		{dir: "deploy/kubernetes/overlays/nats", natsURL: true},
		{dir: "deploy/kubernetes/overlays/tls", tls: true},
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
			if cfg.Listen.TLS.Enabled() != tc.tls {
				t.Fatalf("listen.tls %+v", cfg.Listen.TLS)
			}
			if tc.natsURL {
				checkNATSOverlay(t, cfg, dep)
			}
			if tc.tls {
				checkTLSOverlay(t, cfg, dep, string(run(t, nil, "get", "-n", "credinject", "certificate", "credinject-tls", "-o", "jsonpath={.spec.secretName}")))
			}
		})
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
// configuration looks for the files, and probes the health port it opens.
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
	for key, f := range map[string]string{"listen.tls.certFile": cfg.Listen.TLS.CertFile, "listen.tls.keyFile": cfg.Listen.TLS.KeyFile} {
		if filepath.Dir(f) != mountPath {
			t.Fatalf("%s %q is not in the secret's mount %s", key, f, mountPath)
		}
	}
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
