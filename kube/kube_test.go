package kube

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	toolscache "k8s.io/client-go/tools/cache"
)

// serviceAccount is a ServiceAccount as kubectl apply leaves it: the
// last-applied annotation, a label and managed fields, which the informer
// drops.
func serviceAccount(i int) *corev1.ServiceAccount {
	ns, name := fmt.Sprintf("ns-%d", i/100), fmt.Sprintf("sa-%d", i%100)
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: name, Namespace: ns, UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i)),
		ResourceVersion: fmt.Sprint(1000 + i),
		Labels:          map[string]string{"app.kubernetes.io/part-of": "payments"},
		Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": fmt.Sprintf(
			`{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"annotations":{},"labels":{"app.kubernetes.io/part-of":"payments"},"name":%q,"namespace":%q}}`, name, ns)},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl-client-side-apply", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
			FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{"f:annotations":{".":{},"f:kubectl.kubernetes.io/last-applied-configuration":{}},"f:labels":{".":{},"f:app.kubernetes.io/part-of":{}}}}`)}},
	}}
}

func startServiceAccounts(tb testing.TB, objs ...kruntime.Object) *ServiceAccounts {
	tb.Helper()
	return startServiceAccountsOn(tb, fake.NewClientset(objs...))
}

// startServiceAccountsOn runs the informer on client until the test ends,
// once it holds the full list.
func startServiceAccountsOn(tb testing.TB, client kubernetes.Interface) *ServiceAccounts {
	tb.Helper()
	return startWith(tb, NewServiceAccounts(client, 0))
}

// startWith runs s until the test ends, once its informer has synced.
func startWith(tb testing.TB, s *ServiceAccounts) *ServiceAccounts {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	if !s.WaitForSync(ctx) {
		tb.Fatal("informer did not sync")
	}
	return s
}

// TestServiceAccountsTrimmed: the informer keeps name, namespace and uid
// (Exists, List and the handlers still work) and drops the rest.
func TestServiceAccountsTrimmed(t *testing.T) {
	sa := serviceAccount(1)
	s := startServiceAccounts(t, sa)
	key := sa.Namespace + "/" + sa.Name
	if !s.Exists(key, string(sa.UID)) || s.Exists(key, "other-uid") || s.Exists("ns-0/nobody", "") {
		t.Fatal("Exists does not tell the ServiceAccount by name and uid")
	}
	if got := s.List(sa.Namespace); len(got) != 1 || got[0] != key {
		t.Fatalf("List = %v", got)
	}
	obj, ok, err := s.informer.GetIndexer().GetByKey(key)
	if err != nil || !ok {
		t.Fatalf("GetByKey: %v, %v", ok, err)
	}
	kept := obj.(*corev1.ServiceAccount)
	if kept.Annotations != nil || kept.Labels != nil || kept.ManagedFields != nil {
		t.Fatalf("kept %+v; want name, namespace, uid and resourceVersion only", kept.ObjectMeta)
	}
}

// BenchmarkServiceAccountsHeap measures the heap the ServiceAccount
// informer keeps per ServiceAccount at 100,000, as credinject builds it
// (trimmed) and as client-go's plain informer would (untrimmed).
func BenchmarkServiceAccountsHeap(b *testing.B) {
	const n = 100_000
	objs := make([]kruntime.Object, n)
	for i := range objs {
		objs[i] = serviceAccount(i)
	}
	for _, trimmed := range []bool{true, false} {
		b.Run(fmt.Sprintf("trimmed=%v", trimmed), func(b *testing.B) {
			for range b.N {
				client := fake.NewClientset(objs...)
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				var inf toolscache.SharedIndexInformer
				var f informers.SharedInformerFactory
				if trimmed {
					s := NewServiceAccounts(client, 0)
					f, inf = s.factory, s.informer
				} else {
					f = informers.NewSharedInformerFactory(client, 0)
					inf = f.Core().V1().ServiceAccounts().Informer()
				}
				ctx, cancel := context.WithCancel(context.Background())
				f.Start(ctx.Done())
				if !toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) || len(inf.GetIndexer().ListKeys()) != n {
					b.Fatal("informer did not sync")
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/n, "heap-B/sa")
				runtime.KeepAlive(client)
				cancel()
				f.Shutdown()
			}
		})
	}
}

// TestServiceAccountRemovals: deleting a ServiceAccount, or replacing it
// (same name, new uid), moves Removals, and by then Exists already answers
// the change; adding or updating one in place does not move it.
func TestServiceAccountRemovals(t *testing.T) {
	sa := serviceAccount(1)
	client := fake.NewClientset(sa)
	s := startServiceAccountsOn(t, client)
	ctx := context.Background()
	key := sa.Namespace + "/" + sa.Name
	// waitFor polls until Removals is n and checks what Exists says then.
	waitFor := func(n uint64, present func() bool) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			return s.Removals() >= n, nil
		})
		if err != nil || s.Removals() != n {
			t.Fatalf("Removals = %d, want %d (%v)", s.Removals(), n, err)
		}
		if !present() {
			t.Fatalf("Removals moved to %d before Exists answered the change", n)
		}
	}
	sas := client.CoreV1().ServiceAccounts(sa.Namespace)

	// An add and an in-place update move nothing: both are seen (List,
	// the label) before the next removal is counted as the first.
	added := serviceAccount(2)
	if _, err := client.CoreV1().ServiceAccounts(added.Namespace).Create(ctx, added, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	updated := sa.DeepCopy()
	updated.ResourceVersion = ""
	updated.Labels = map[string]string{"changed": "yes"}
	if _, err := sas.Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Replaced: same name, new uid.
	replaced := sa.DeepCopy()
	replaced.ResourceVersion = ""
	replaced.UID = "new-uid"
	if _, err := sas.Update(ctx, replaced, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(1, func() bool { return !s.Exists(key, string(sa.UID)) && s.Exists(key, "new-uid") })
	if !s.Exists(added.Namespace+"/"+added.Name, string(added.UID)) {
		t.Fatal("the added ServiceAccount is not there")
	}

	if err := sas.Delete(ctx, sa.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(2, func() bool { return !s.Exists(key, "") })
}

// TestHandlersHearRemovalsAfterTheCount: AddHandler's onDelete runs once
// Removals has moved and Exists answers the removal, so what a callback
// does (the watcher forgetting the identity) is never seen by a checker
// still trusting a cached token of that ServiceAccount; a handler added
// after Run is refused.
func TestHandlersHearRemovalsAfterTheCount(t *testing.T) {
	sa := serviceAccount(1)
	client := fake.NewClientset(sa)
	s := NewServiceAccounts(client, 0)
	key := sa.Namespace + "/" + sa.Name
	type seen struct {
		removals uint64
		exists   bool
	}
	deleted := make(chan seen, 4)
	added := make(chan string, 4)
	if err := s.AddHandler(func(ns, name string) { added <- ns + "/" + name },
		func(ns, name string) { deleted <- seen{s.Removals(), s.Exists(ns+"/"+name, "")} }); err != nil {
		t.Fatal(err)
	}
	startWith(t, s)
	within := func(what string) {
		t.Helper()
		t.Fatalf("no %s within 10s", what)
	}
	var got string
	select {
	case got = <-added:
	case <-time.After(10 * time.Second):
		within("add")
	}
	if got != key {
		t.Fatalf("the initial list added %q, want %q", got, key)
	}
	if err := s.AddHandler(func(string, string) {}, func(string, string) {}); err == nil {
		t.Error("AddHandler after Run was accepted")
	}
	if err := client.CoreV1().ServiceAccounts(sa.Namespace).Delete(context.Background(), sa.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var d seen
	select {
	case d = <-deleted:
	case <-time.After(10 * time.Second):
		within("delete")
	}
	if got := d; got.removals != 1 || got.exists {
		t.Fatalf("onDelete saw Removals %d and Exists %v, want 1 and false", got.removals, got.exists)
	}
}

// TestLookupServiceAccount: the lookup reads the API server, not the
// informer: a ServiceAccount the informer has not seen is found with its
// uid, a missing one is not found (no error), and a failed read is an error.
func TestLookupServiceAccount(t *testing.T) {
	client := fake.NewClientset()
	// Not started: the informer knows nothing.
	s := NewServiceAccounts(client, 0)
	ctx := context.Background()
	if _, err := client.CoreV1().ServiceAccounts("ns-0").Create(ctx, serviceAccount(1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if s.Exists("ns-0/sa-1", "") {
		t.Fatal("the informer was not started, yet knows the ServiceAccount")
	}
	uid, found, err := s.LookupServiceAccount(ctx, "ns-0", "sa-1")
	if err != nil || !found || uid != string(serviceAccount(1).UID) {
		t.Fatalf("existing: %q %v %v", uid, found, err)
	}
	if uid, found, err := s.LookupServiceAccount(ctx, "ns-0", "ghost"); err != nil || found || uid != "" {
		t.Fatalf("missing: %q %v %v", uid, found, err)
	}
	client.PrependReactor("get", "serviceaccounts", func(k8stesting.Action) (bool, kruntime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if _, found, err := s.LookupServiceAccount(ctx, "ns-0", "sa-1"); err == nil || found {
		t.Fatalf("failed read: found %v, error %v", found, err)
	}
}
