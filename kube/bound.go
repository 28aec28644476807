package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// The kinds a service-account token can be bound to, with their resources.
var boundResources = []struct {
	kind string
	gvr  schema.GroupVersionResource
}{
	{"Pod", schema.GroupVersionResource{Version: "v1", Resource: "pods"}},
	{"Secret", schema.GroupVersionResource{Version: "v1", Resource: "secrets"}},
	{"Node", schema.GroupVersionResource{Version: "v1", Resource: "nodes"}},
}

// BoundObjects follows the Pods, Secrets and Nodes that service-account tokens
// can be bound to, so the checker can refuse, with no I/O, a token whose
// object is gone or was re-created under the same name. It watches metadata
// only (PartialObjectMetadata) and keeps name, namespace and uid of each
// object: a few hundred bytes per object however large its spec.
type BoundObjects struct {
	factory   metadatainformer.SharedInformerFactory
	informers map[string]toolscache.SharedIndexInformer
	clock     clock.PassiveClock
	// lastErr is the last list/watch failure, for Status.
	lastErr atomic.Pointer[string]
}

// deletionLeeway: an object being deleted still vouches for its tokens until
// this long after its deletionTimestamp, as the API server's authenticator
// decides (jwt.DefaultLeeway), so a terminating pod can finish its work.
const deletionLeeway = time.Minute

// NewBoundObjects builds the informers (started by Run). log receives list
// and watch errors (a missing permission shows there, and in CheckAccess).
func NewBoundObjects(client metadata.Interface, clk clock.PassiveClock, log *slog.Logger) (*BoundObjects, error) {
	f := metadatainformer.NewSharedInformerFactoryWithOptions(client, 0, metadatainformer.WithTransform(trimMetadata))
	b := &BoundObjects{factory: f, informers: map[string]toolscache.SharedIndexInformer{}, clock: clk}
	for _, r := range boundResources {
		inf := f.ForResource(r.gvr).Informer()
		res := r.gvr.Resource
		if err := inf.SetWatchErrorHandler(func(_ *toolscache.Reflector, err error) {
			// Until the first list is in, tokens bound to these objects are
			// refused; after it, deletions are not seen until the watch
			// recovers.
			log.Error("bound-object informer: list/watch failed", "resource", res, "error", err)
			msg := fmt.Sprintf("%s at %s: %v", res, clk.Now().UTC().Format(time.RFC3339), err)
			b.lastErr.Store(&msg)
		}); err != nil {
			return nil, fmt.Errorf("bound objects: %s: %w", res, err)
		}
		b.informers[r.kind] = inf
	}
	return b, nil
}

// trimMetadata keeps what Exists needs: the informer stores the result.
func trimMetadata(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp,
	}}, nil
}

// Run starts the informers and blocks until ctx ends.
func (b *BoundObjects) Run(ctx context.Context) {
	b.factory.Start(ctx.Done())
	<-ctx.Done()
	b.factory.Shutdown()
}

// HasSynced reports whether the first list of every kind is in.
func (b *BoundObjects) HasSynced() bool {
	for _, inf := range b.informers {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// Exists reports whether the object of kind ("Pod", "Secret", "Node") with
// key ("namespace/name", or a Node's name) exists with this uid and is not
// past deletionLeeway after its deletion began. Before the first list is in,
// and for an unknown kind, it answers false: fail closed.
func (b *BoundObjects) Exists(kind, key, uid string) bool {
	inf, ok := b.informers[kind]
	if !ok {
		return false
	}
	obj, ok, err := inf.GetIndexer().GetByKey(key)
	if err != nil || !ok {
		return false
	}
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok || string(m.UID) != uid {
		return false
	}
	return m.DeletionTimestamp == nil || !m.DeletionTimestamp.Time.Before(b.clock.Now().Add(-deletionLeeway))
}

// Status is a line for /readyz: whether the first lists are in, and the
// last list/watch failure, if any.
func (b *BoundObjects) Status() string {
	s := fmt.Sprintf("synced=%v", b.HasSynced())
	if e := b.lastErr.Load(); e != nil {
		s += "; last list/watch error: " + *e
	}
	return s
}

// Len is the number of objects held, all kinds together.
func (b *BoundObjects) Len() int {
	n := 0
	for _, inf := range b.informers {
		n += len(inf.GetIndexer().ListKeys())
	}
	return n
}

// ErrForbidden is wrapped by CheckAccess when a permission is missing.
var ErrForbidden = errors.New("missing RBAC permission")

// CheckAccess asks the API server (SelfSubjectAccessReview) whether this
// client may get, list and watch pods, secrets and nodes cluster-wide, as
// BoundObjects needs. The error names the missing rule.
func CheckAccess(ctx context.Context, client kubernetes.Interface) error {
	var missing []string
	for _, r := range boundResources {
		var verbs []string
		for _, verb := range []string{"get", "list", "watch"} {
			res, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
				Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
					Group: r.gvr.Group, Version: r.gvr.Version, Resource: r.gvr.Resource, Verb: verb,
				}},
			}, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("access review %s %s: %w", verb, r.gvr.Resource, err)
			}
			if !res.Status.Allowed {
				verbs = append(verbs, verb)
			}
		}
		if len(verbs) > 0 {
			missing = append(missing, fmt.Sprintf("%s (%s)", r.gvr.Resource, strings.Join(verbs, ", ")))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf(`%w: the rule {apiGroups: [""], resources: ["pods", "secrets", "nodes"], verbs: ["get", "list", "watch"]} is needed cluster-wide to revoke bound tokens; missing: %s (deploy/kubernetes/base/rbac.yaml grants it)`,
			ErrForbidden, strings.Join(missing, "; "))
	}
	return nil
}

// WaitForSync blocks until every informer holds its first list, or ctx ends.
func (b *BoundObjects) WaitForSync(ctx context.Context) bool {
	return toolscache.WaitForCacheSync(ctx.Done(), b.HasSynced)
}
