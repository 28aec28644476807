// Package kube holds credinject's views of the Kubernetes API that more than
// one part uses: a cluster-wide ServiceAccount informer (the checker asks it
// whether a token's ServiceAccount still exists; the prefetcher discovers
// identities from it), metadata-only informers of the Pods, Secrets and Nodes
// tokens are bound to (the checker refuses a token whose object is gone), the
// TokenRequest minter the credential layer logs in to Vault with, and the REST
// configuration they are built from.
//
// It does not validate tokens and knows nothing of Vault or Envoy.
package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/credinject/credinject/authz"
)

// ServiceAccounts is a cluster-wide ServiceAccount informer. The checker asks
// it, with no I/O, whether a token's ServiceAccount still exists, and reads
// the API server through it (LookupServiceAccount) when the informer does
// not know one yet; the prefetcher discovers identities from it.
type ServiceAccounts struct {
	client   kubernetes.Interface
	factory  informers.SharedInformerFactory
	informer toolscache.SharedIndexInformer
	// removals counts ServiceAccounts deleted or replaced; see Removals.
	removals atomic.Uint64

	mu       sync.Mutex
	started  bool        // Run was called: no more handlers
	handlers []saHandler // AddHandler's, called by the one informer handler
}

// saHandler is one AddHandler registration.
type saHandler struct {
	onAdd, onDelete func(namespace, name string)
}

// NewServiceAccounts builds the informer (started by Run). It keeps each
// ServiceAccount trimmed to what Exists, List and the handlers read (name,
// namespace, uid, resourceVersion): at 100,000 ServiceAccounts per cluster
// their annotations, managed fields and secret lists would cost more than
// the credentials.
func NewServiceAccounts(client kubernetes.Interface, resync time.Duration) *ServiceAccounts {
	f := informers.NewSharedInformerFactoryWithOptions(client, resync, informers.WithTransform(trimServiceAccount))
	inf := f.Core().V1().ServiceAccounts().Informer()
	s := &ServiceAccounts{client: client, factory: f, informer: inf}
	// One informer handler, called after the store holds the change: it
	// moves the removal count first (Exists already answers the new state),
	// then tells AddHandler's callbacks. A handler of its own per callback
	// would run on a goroutine of its own, so a callback (the watcher
	// forgetting an identity) could act while Removals still let the
	// checker trust a cached token of the deleted ServiceAccount.
	_, _ = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if sa, ok := obj.(*corev1.ServiceAccount); ok {
				for _, h := range s.registered() {
					h.onAdd(sa.Namespace, sa.Name)
				}
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, n, ok := replaced(oldObj, newObj)
			if !ok {
				return
			}
			s.removals.Add(1)
			for _, h := range s.registered() {
				h.onDelete(o.Namespace, o.Name)
				h.onAdd(n.Namespace, n.Name)
			}
		},
		DeleteFunc: func(obj any) {
			s.removals.Add(1)
			if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if sa, ok := obj.(*corev1.ServiceAccount); ok {
				for _, h := range s.registered() {
					h.onDelete(sa.Namespace, sa.Name)
				}
			}
		},
	})
	return s
}

// replaced reports whether an informer's update is a ServiceAccount deleted
// and created again under its name (a new uid), and gives both.
func replaced(oldObj, newObj any) (o, n *corev1.ServiceAccount, ok bool) {
	o, ok1 := oldObj.(*corev1.ServiceAccount)
	n, ok2 := newObj.(*corev1.ServiceAccount)
	return o, n, ok1 && ok2 && o.UID != n.UID
}

// trimServiceAccount keeps what the informer's readers need; the informer
// stores the result.
func trimServiceAccount(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return obj, nil
	}
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: sa.Name, Namespace: sa.Namespace, UID: sa.UID, ResourceVersion: sa.ResourceVersion,
	}}, nil
}

// Run starts the informer and blocks until ctx ends.
func (s *ServiceAccounts) Run(ctx context.Context) {
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	s.factory.Start(ctx.Done())
	<-ctx.Done()
	s.factory.Shutdown()
}

// WaitForSync blocks until the informer holds the full list or ctx ends.
func (s *ServiceAccounts) WaitForSync(ctx context.Context) bool {
	return toolscache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced)
}

// HasSynced reports whether the first list is in.
func (s *ServiceAccounts) HasSynced() bool { return s.informer.HasSynced() }

// Exists reports whether the ServiceAccount "namespace/name" exists (with
// this uid, when uid is not empty). Before the first list is in, it answers
// false: fail closed.
func (s *ServiceAccounts) Exists(key, uid string) bool {
	obj, ok, err := s.informer.GetIndexer().GetByKey(key)
	if err != nil || !ok {
		return false
	}
	sa, isSA := obj.(*corev1.ServiceAccount)
	return isSA && (uid == "" || sa.UID == types.UID(uid))
}

// Removals counts the ServiceAccounts the informer has seen deleted or
// replaced (the same name with a new uid) since it started. It moves only
// after Exists answers the change, so a caller that read Removals, then saw
// Exists answer true, may trust that answer while Removals still returns
// what it read: the checker's cached token results skip Exists that way.
func (s *ServiceAccounts) Removals() uint64 { return s.removals.Load() }

// LookupServiceAccount reads the ServiceAccount namespace/name from the API
// server (a GET, past the informer; needs serviceaccounts get): its uid, or
// found false when there is none. err is a read that failed. The checker
// asks it when the informer does not know a valid token's ServiceAccount yet.
func (s *ServiceAccounts) LookupServiceAccount(ctx context.Context, namespace, name string) (uid string, found bool, err error) {
	sa, err := s.client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("get serviceaccount %s/%s: %w", namespace, name, err)
	}
	return string(sa.UID), true, nil
}

// AddHandler registers add/delete callbacks, called one at a time from the
// informer, in order, onDelete after Removals has moved (a replaced
// ServiceAccount: onDelete, then onAdd). It must be called before Run,
// which lists every ServiceAccount to onAdd first.
func (s *ServiceAccounts) AddHandler(onAdd, onDelete func(namespace, name string)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("kube: AddHandler after Run")
	}
	s.handlers = append(s.handlers, saHandler{onAdd: onAdd, onDelete: onDelete})
	return nil
}

// registered is AddHandler's callbacks.
func (s *ServiceAccounts) registered() []saHandler {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handlers
}

// List returns the ServiceAccount keys of a namespace from the informer.
func (s *ServiceAccounts) List(namespace string) []string {
	keys, _ := s.informer.GetIndexer().IndexKeys(toolscache.NamespaceIndex, namespace)
	slices.Sort(keys)
	return keys
}

// TokenRequester mints service-account tokens with TokenRequest (needs
// serviceaccounts/token create in the prefetch namespaces).
type TokenRequester struct {
	Client    kubernetes.Interface
	Audiences []string
	// TTL is the requested lifetime; the API server's minimum, 10 minutes,
	// applies below it.
	TTL time.Duration
}

// Token mints a token for id. It returns the token and its expiry, or the
// API server's error.
func (k TokenRequester) Token(ctx context.Context, id authz.Identity) (string, time.Time, error) {
	ttl := max(k.TTL, 10*time.Minute)
	secs := int64(ttl / time.Second)
	tr, err := k.Client.CoreV1().ServiceAccounts(id.Namespace).CreateToken(ctx, id.ServiceAccount, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: k.Audiences, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token request %s: %w", id, err)
	}
	return tr.Status.Token, tr.Status.ExpirationTimestamp.Time, nil
}

// RESTConfig is the API server client configuration: from the kubeconfig
// file when path is set, else in-cluster. Errors name the source tried.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not in a cluster and no kubeconfig given: %w", err)
	}
	return rc, nil
}
