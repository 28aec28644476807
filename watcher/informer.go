package watcher

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// ServiceAccounts is a cluster-wide ServiceAccount informer. The checker asks
// it, with no I/O, whether a token's ServiceAccount still exists; the
// prefetcher discovers identities from it.
type ServiceAccounts struct {
	factory  informers.SharedInformerFactory
	informer toolscache.SharedIndexInformer
}

// NewServiceAccounts builds the informer (started by Run).
func NewServiceAccounts(client kubernetes.Interface, resync time.Duration) *ServiceAccounts {
	f := informers.NewSharedInformerFactory(client, resync)
	inf := f.Core().V1().ServiceAccounts().Informer()
	return &ServiceAccounts{factory: f, informer: inf}
}

// Run starts the informer and blocks until ctx ends.
func (s *ServiceAccounts) Run(ctx context.Context) {
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

// AddHandler registers add/delete callbacks.
func (s *ServiceAccounts) AddHandler(onAdd, onDelete func(namespace, name string)) error {
	_, err := s.informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if sa, ok := obj.(*corev1.ServiceAccount); ok {
				onAdd(sa.Namespace, sa.Name)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.ServiceAccount)
			n, ok2 := newObj.(*corev1.ServiceAccount)
			if ok1 && ok2 && o.UID != n.UID {
				onDelete(o.Namespace, o.Name)
				onAdd(n.Namespace, n.Name)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if sa, ok := obj.(*corev1.ServiceAccount); ok {
				onDelete(sa.Namespace, sa.Name)
			}
		},
	})
	return err
}

// List returns the ServiceAccount keys of a namespace from the informer.
func (s *ServiceAccounts) List(namespace string) []string {
	keys, _ := s.informer.GetIndexer().IndexKeys(toolscache.NamespaceIndex, namespace)
	slices.Sort(keys)
	return keys
}

// KubeTokens mints service-account tokens with TokenRequest (needs
// serviceaccounts/token create in the prefetch namespaces).
type KubeTokens struct {
	Client    kubernetes.Interface
	Audiences []string
	TTL       time.Duration
}

// Token mints a token for namespace/serviceAccount.
func (k KubeTokens) Token(ctx context.Context, namespace, serviceAccount string) (string, time.Time, error) {
	ttl := k.TTL
	if ttl < 10*time.Minute {
		ttl = 10 * time.Minute
	}
	secs := int64(ttl / time.Second)
	tr, err := k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: k.Audiences, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token request %s/%s: %w", namespace, serviceAccount, err)
	}
	return tr.Status.Token, tr.Status.ExpirationTimestamp.Time, nil
}

// Prefetcher feeds the watcher the ServiceAccounts of the prefetch
// namespaces as the informer sees them, through a rate-limited work queue
// with a bounded number of workers (no thundering herd at start-up), and
// makes every watched identity forget a deleted ServiceAccount.
type Prefetcher struct {
	w          *Watcher
	sas        *ServiceAccounts
	namespaces map[string]bool
	workers    int
	log        *slog.Logger
	queue      workqueue.TypedRateLimitingInterface[string]

	initial sync.WaitGroup
	pending sync.Map // keys of the first pass not yet done
	ready   atomic.Bool
}

// NewPrefetcher wires w to the informer. namespaces empty: nothing is
// prefetched, but deletions are still followed.
func NewPrefetcher(w *Watcher, sas *ServiceAccounts, namespaces []string, workers int, log *slog.Logger) (*Prefetcher, error) {
	if workers <= 0 {
		workers = 4
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Prefetcher{
		w: w, sas: sas, namespaces: map[string]bool{}, workers: workers, log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "credinject-prefetch"}),
	}
	for _, ns := range namespaces {
		p.namespaces[ns] = true
	}
	err := sas.AddHandler(
		func(ns, name string) {
			if p.namespaces[ns] {
				p.queue.Add(ns + "/" + name)
			}
		},
		func(ns, name string) {
			p.log.Info("serviceaccount deleted; evicting its credentials", "identity", ns+"/"+name)
			p.w.Forget(ns, name)
		})
	return p, err
}

// Ready reports whether the first prefetch pass is done.
func (p *Prefetcher) Ready() bool { return p.ready.Load() }

// Run processes the queue until ctx ends. The first pass is every
// ServiceAccount of the prefetch namespaces present when the informer
// synced; Ready turns true when each was tried once.
func (p *Prefetcher) Run(ctx context.Context) {
	defer p.queue.ShutDown()
	if !p.sas.WaitForSync(ctx) {
		return
	}
	for ns := range p.namespaces {
		for _, key := range p.sas.List(ns) {
			p.initial.Add(1)
			p.pending.Store(key, true)
		}
	}
	go func() {
		p.initial.Wait()
		p.ready.Store(true)
		p.log.Info("first prefetch pass done", "identities", p.w.Len())
	}()
	var wg sync.WaitGroup
	for i := 0; i < p.workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p.work(ctx) {
			}
		}()
	}
	<-ctx.Done()
	p.queue.ShutDown()
	wg.Wait()
}

func (p *Prefetcher) work(ctx context.Context) bool {
	key, quit := p.queue.Get()
	if quit {
		return false
	}
	defer p.queue.Done(key)
	ns, name, _ := toolscache.SplitMetaNamespaceKey(key)
	if !p.sas.Exists(key, "") {
		p.queue.Forget(key)
		p.firstDone(key)
		return true
	}
	err := p.w.Prefetch(ctx, ns, name)
	p.firstDone(key)
	if err != nil && ctx.Err() == nil {
		p.log.Warn("prefetch failed", "identity", key, "error", err)
		if isRetryable(err) {
			p.queue.AddRateLimited(key)
			return true
		}
	}
	p.queue.Forget(key)
	return true
}

func (p *Prefetcher) firstDone(key string) {
	if _, ok := p.pending.LoadAndDelete(key); ok {
		p.initial.Done()
	}
}
