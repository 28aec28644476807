package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
)

// podMeta is a Pod's metadata as a Deployment's pod carries it: labels,
// annotations, an owner and managed fields, all of which the informer drops.
func podMeta(i int) *metav1.PartialObjectMetadata {
	ns := fmt.Sprintf("ns-%d", i%100)
	return &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("app-7d9f8b6c4-%05d", i), Namespace: ns, UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i)),
			ResourceVersion: fmt.Sprint(1000 + i),
			Labels:          map[string]string{"app": "app", "pod-template-hash": "7d9f8b6c4", "team": ns},
			Annotations:     map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-11-29T09:00:00Z", "prometheus.io/scrape": "true"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "app-7d9f8b6c4", UID: "rs-uid", Controller: new(bool)}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(strings.Repeat(`{"f:metadata":{}}`, 20))}},
		},
	}
}

func testScheme() *kruntime.Scheme {
	s := metadatafake.NewTestScheme()
	metav1.AddMetaToScheme(s)
	return s
}

// runBound runs b until the returned stop is called; stop returns once
// Run has.
func runBound(b *BoundObjects) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// eventually polls cond every 5 ms for up to 10 s and says whether it
// became true.
func eventually(cond func() bool) bool {
	return wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil }) == nil
}

func startBound(tb testing.TB, clk clock.PassiveClock, objs ...kruntime.Object) (*BoundObjects, *metadatafake.FakeMetadataClient) {
	tb.Helper()
	client := metadatafake.NewSimpleMetadataClient(testScheme(), objs...)
	b, err := NewBoundObjects(client, clk, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(runBound(b))
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if !b.WaitForSync(sctx) {
		tb.Fatal("bound-object informers did not sync")
	}
	return b, client
}

func TestBoundObjectsExists(t *testing.T) {
	pod := podMeta(1)
	node := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}, ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "node-uid"}}
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	// A terminating pod: its grace period ended 30 s ago.
	ending := podMeta(2)
	ending.DeletionTimestamp = &metav1.Time{Time: clk.Now().Add(-30 * time.Second)}
	b, client := startBound(t, clk, pod, node, ending)
	endingKey := ending.Namespace + "/" + ending.Name
	podKey := pod.Namespace + "/" + pod.Name
	cases := map[string]struct {
		kind, key, uid string
		want           bool
	}{
		"pod":           {"Pod", podKey, string(pod.UID), true},
		"pod other uid": {"Pod", podKey, "other", false},
		"no such pod":   {"Pod", "ns-1/gone", "x", false},
		"node":          {"Node", "n1", "node-uid", true},
		"no secret":     {"Secret", podKey, string(pod.UID), false},
		"unknown kind":  {"ConfigMap", podKey, string(pod.UID), false},
		"terminating":   {"Pod", endingKey, string(ending.UID), true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := b.Exists(c.kind, c.key, c.uid); got != c.want {
				t.Fatalf("Exists(%s, %s, %s) = %v", c.kind, c.key, c.uid, got)
			}
		})
	}
	// The hot path asks this for every cached bound token: no allocation.
	if n := testing.AllocsPerRun(100, func() { b.Exists("Pod", podKey, string(pod.UID)) }); n != 0 {
		t.Fatalf("Exists allocates %v times", n)
	}
	clk.SetTime(clk.Now().Add(31 * time.Second))
	if b.Exists("Pod", endingKey, string(ending.UID)) {
		t.Fatal("a pod 61 s past its deletion still vouches for its tokens")
	}
	if err := client.Resource(boundResources[0].gvr).Namespace(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { return !b.Exists("Pod", podKey, string(pod.UID)) }) {
		t.Fatal("the deleted pod is still known")
	}
}

// TestBoundObjectsStatus: a failing list shows in Status (and /readyz), and
// the informer never syncs, so bound tokens stay refused.
func TestBoundObjectsStatus(t *testing.T) {
	client := metadatafake.NewSimpleMetadataClient(testScheme())
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, kruntime.Object, error) {
		return true, nil, errors.New("pods is forbidden")
	})
	b, err := NewBoundObjects(client, clock.RealClock{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer runBound(b)()
	if !eventually(func() bool { return strings.Contains(b.Status(), "pods is forbidden") }) {
		t.Fatalf("status %q", b.Status())
	}
	if b.HasSynced() || !strings.HasPrefix(b.Status(), "synced=false; last list/watch error: pods at ") {
		t.Fatalf("status %q", b.Status())
	}
}

func TestCheckAccess(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, kruntime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authzv1.SelfSubjectAccessReview)
		ra := r.Spec.ResourceAttributes
		r.Status.Allowed = !(ra.Resource == "nodes" && ra.Verb == "watch")
		return true, r, nil
	})
	err := CheckAccess(context.Background(), client)
	if err == nil || !strings.Contains(err.Error(), "missing: nodes (watch)") || !strings.Contains(err.Error(), `resources: ["pods", "secrets", "nodes"]`) {
		t.Fatalf("got %v", err)
	}
}

// BenchmarkBoundObjectsHeap measures the heap the informers keep per 10,000
// pods (metadata only, trimmed to name, namespace, uid and resourceVersion).
func BenchmarkBoundObjectsHeap(b *testing.B) {
	const n = 10_000
	objs := make([]kruntime.Object, n)
	for i := range objs {
		objs[i] = podMeta(i)
	}
	for range b.N {
		client := metadatafake.NewSimpleMetadataClient(testScheme(), objs...)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		bo, err := NewBoundObjects(client, clock.RealClock{}, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		stop := runBound(bo)
		if !bo.WaitForSync(context.Background()) || bo.Len() != n {
			b.Fatalf("synced %d objects", bo.Len())
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc)-float64(before.HeapAlloc), "heap-B/10k-pods")
		runtime.KeepAlive(client)
		stop()
	}
}
