package policies

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/credinject/credinject/api/v1alpha1"
)

// recorder is an Applier that keeps the tables it was given; fail makes
// Apply refuse.
type recorder struct {
	mu     sync.Mutex
	tables []Table
	fail   bool
}

func (r *recorder) Apply(_ context.Context, t Table) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return context.DeadlineExceeded
	}
	r.tables = append(r.tables, t)
	return nil
}

func (r *recorder) last() (Table, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.tables) == 0 {
		return Table{}, false
	}
	return r.tables[len(r.tables)-1], true
}

func unstructuredPolicy(t *testing.T, p *v1alpha1.CredentialPolicy) *unstructured.Unstructured {
	t.Helper()
	p.TypeMeta = metav1.TypeMeta{APIVersion: "credinject.io/v1alpha1", Kind: "CredentialPolicy"}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
}

// TestController: the controller applies a table per change, watches
// HTTPRoutes, and writes status (observedGeneration, Accepted, Enforced)
// when it leads; a table the Applier refuses is reported Enforced=False.
func TestController(t *testing.T) {
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{
		PolicyResource:    "CredentialPolicyList",
		HTTPRouteResource: "HTTPRouteList",
	})
	kc := kubefake.NewClientset()
	kc.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{
		{GroupVersion: "credinject.io/v1alpha1", APIResources: []metav1.APIResource{{Name: "credentialpolicies"}}},
		{GroupVersion: "gateway.networking.k8s.io/v1", APIResources: []metav1.APIResource{{Name: "httproutes"}}},
	}
	rec := &recorder{}
	c, err := NewController(Config{Dynamic: dyn, Kube: kc, Config: *testConfig(t, "defaultRoute: false"), Applier: rec})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	eventually := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
	}
	res := dyn.Resource(PolicyResource).Namespace("gw")
	p := pol("gw", "ex", 0, func(s *v1alpha1.CredentialPolicySpec) {
		s.TargetRefs = []v1alpha1.TargetRef{{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute", Name: "r"}}
		s.Hosts = nil
	})
	if _, err := res.Create(ctx, unstructuredPolicy(t, p), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	status := func() (acc, enf *metav1.Condition, gen int64) {
		u, err := res.Get(ctx, "ex", metav1.GetOptions{})
		if err != nil {
			return nil, nil, 0
		}
		var got v1alpha1.CredentialPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &got); err != nil {
			t.Fatal(err)
		}
		return meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionAccepted),
			meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionEnforced), got.Status.ObservedGeneration
	}
	eventually("TargetNotFound in status", func() bool {
		acc, _, gen := status()
		return acc != nil && acc.Reason == v1alpha1.ReasonTargetNotFound && gen == 3
	})
	route := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": "r", "namespace": "gw"},
		"spec":     map[string]any{"hostnames": []any{"api.r.example"}},
	}}
	if _, err := dyn.Resource(HTTPRouteResource).Namespace("gw").Create(ctx, route, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("the HTTPRoute's host served", func() bool {
		tab, ok := rec.last()
		return ok && len(tab.Routes) == 1 && strings.Join(tab.Routes[0].Hosts, ",") == "api.r.example"
	})
	eventually("Accepted and Enforced", func() bool {
		acc, enf, _ := status()
		return acc != nil && acc.Status == metav1.ConditionTrue && enf != nil && enf.Status == metav1.ConditionTrue
	})
	if !c.Applied() || !c.Leader() {
		t.Errorf("applied %v, leader %v; want both", c.Applied(), c.Leader())
	}
	// A table the Applier refuses: the policy is not Enforced.
	rec.mu.Lock()
	rec.fail = true
	rec.mu.Unlock()
	c.SetConfig(*testConfig(t, "defaultRoute: false\nroutes: [{hosts: [other.example]}]"))
	eventually("Enforced=False", func() bool {
		_, enf, _ := status()
		return enf != nil && enf.Status == metav1.ConditionFalse && enf.Reason == v1alpha1.ReasonPending
	})
}
