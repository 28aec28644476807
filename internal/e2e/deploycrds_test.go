package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/internal/testenv"
)

// notManifests are the YAML files under deploy/ that hold Kubernetes
// objects no API server serves, with the reason; every other file with an
// apiVersion and a kind is applied by TestDeployManifestsAgainstTheirAPIs.
var notManifests = map[string]string{
	"deploy/istio/mesh-config.yaml": "IstioOperator: installation input read by istioctl, not a resource an API server stores",
}

// installCRDs installs, server-side, the CRDs of every project deploy/
// targets, as each ships them in its own Go module (the bed's crds tool),
// and credinject's own, and waits until the API server serves them.
func installCRDs(ctx context.Context, t *testing.T, kubectl kubectlCmd) {
	t.Helper()
	dir, err := testenv.ToolDir("crds")
	if err != nil {
		t.Fatal(err)
	}
	list, err := os.ReadFile(filepath.Join(dir, "crds.txt"))
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"apply", "--server-side", "--force-conflicts", "--field-manager", "credinject-e2e", "-f", "deploy/crds/"}
	for _, f := range strings.Fields(string(list)) {
		args = append(args, "-f", filepath.Join(dir, f))
	}
	kubectl.must(ctx, t, nil, args...)
	kubectl.must(ctx, t, nil, "wait", "--for", "condition=Established", "--timeout", "120s", "crd", "--all")
}

// TestDeployManifestsAgainstTheirAPIs applies every example under deploy/
// (server-side dry run) to the bed's API server with the real CRDs of the
// projects they target installed: Gateway API, Istio, Envoy Gateway,
// cert-manager, the Prometheus Operator and credinject's own. A field the
// target API does not know, a wrong type or a refused value fails the test
// with the API server's message. Kustomize trees are rendered first; a file
// a kustomization does not name is applied alone; the Helm chart is
// TestHelmChart's.
func TestDeployManifestsAgainstTheirAPIs(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kubectl := newKubectl(t, env)
	installCRDs(ctx, t, kubectl)

	root := repoRoot(t)
	type unit struct {
		name string // a kustomize directory or a file, relative to the root
		docs []byte
	}
	var units []unit
	kustomized := map[string]string{} // file -> the kustomization that names it
	var loose, charts []string
	err := filepath.WalkDir(filepath.Join(root, "deploy"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			// A Helm chart's templates are not YAML until rendered:
			// TestHelmChart renders and applies them.
			if _, err := os.Stat(filepath.Join(path, "Chart.yaml")); err == nil {
				charts = append(charts, rel)
				return filepath.SkipDir
			}
			return nil
		}
		if d.Name() == "kustomization.yaml" {
			k, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			dir := filepath.Dir(rel)
			units = append(units, unit{name: dir, docs: []byte(kubectl.must(ctx, t, nil, "kustomize", dir))})
			entries, _ := os.ReadDir(filepath.Dir(path))
			for _, e := range entries {
				if bytes.Contains(k, []byte(e.Name())) {
					kustomized[filepath.Join(dir, e.Name())] = dir
				}
			}
			return nil
		}
		if strings.HasSuffix(path, ".yaml") {
			loose = append(loose, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range loose {
		if kustomized[f] != "" || notManifests[f] != "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if objs := objects(t, b); len(objs) > 0 {
			units = append(units, unit{name: f, docs: b})
		}
	}
	slices.SortFunc(units, func(a, b unit) int { return strings.Compare(a.name, b.name) })

	// A dry run cannot create objects in a namespace that does not exist.
	for _, u := range units {
		for _, o := range objects(t, u.docs) {
			if o.Metadata.Namespace == "" {
				continue
			}
			_, err := env.Kube.Client.CoreV1().Namespaces().Create(ctx,
				&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.Metadata.Namespace}}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	var names []string
	for _, u := range units {
		names = append(names, u.name)
		t.Run(u.name, func(t *testing.T) {
			out := kubectl.must(ctx, t, u.docs, "apply", "--server-side", "--dry-run=server", "--field-manager", "credinject-e2e", "-f", "-")
			t.Logf("%s", out)
		})
	}
	if !slices.Equal(charts, []string{"deploy/helm/credinject"}) {
		t.Errorf("Helm charts %v: TestHelmChart renders and applies deploy/helm/credinject only", charts)
	}
	// The examples the docs point at are among them.
	for _, want := range []string{"deploy/istio", "deploy/envoy-gateway/securitypolicy.yaml", "deploy/envoy-gateway/backendtlspolicy.yaml",
		"deploy/istio/destinationrule-credinject-tls.yaml", "deploy/monitoring/prometheusrule.yaml", "deploy/kubernetes/overlays/tls",
		"deploy/crds/credinject.io_credentialpolicies.yaml", "deploy/policies/httpbin-external.yaml"} {
		if !slices.Contains(names, want) {
			t.Errorf("%s was not applied (applied: %v)", want, names)
		}
	}
}

// object is what the test needs of a manifest's object.
type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
}

// objects decodes the Kubernetes objects of a multi-document YAML stream;
// documents without apiVersion and kind (Envoy bootstraps, promtool tests,
// configuration files) are not objects.
func objects(t *testing.T, b []byte) []object {
	t.Helper()
	var out []object
	dec := yaml.NewDecoder(bufio.NewReader(bytes.NewReader(b)))
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if o.APIVersion != "" && o.Kind != "" {
			out = append(out, o)
		}
	}
}
