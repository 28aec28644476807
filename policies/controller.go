package policies

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/workqueue"

	"github.com/credinject/credinject/api/v1alpha1"
	"github.com/credinject/credinject/internal/config"
)

// The resources the controller watches.
var (
	PolicyResource    = schema.GroupVersionResource{Group: "credinject.io", Version: "v1alpha1", Resource: "credentialpolicies"}
	HTTPRouteResource = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
)

// Applier serves a route table: internal/app swaps the checker's router and
// the watcher's routes. Apply returns once requests are routed by t, or an
// error when t cannot be served (the previous table stays).
type Applier interface {
	Apply(ctx context.Context, t Table) error
}

// ApplierFunc adapts a function to Applier.
type ApplierFunc func(ctx context.Context, t Table) error

// Apply calls f.
func (f ApplierFunc) Apply(ctx context.Context, t Table) error { return f(ctx, t) }

// Config configures a Controller.
type Config struct {
	Dynamic dynamic.Interface
	// Kube makes the leader election Lease and asks discovery whether
	// HTTPRoutes are served.
	Kube kubernetes.Interface
	// Namespaces whose policies are obeyed (policies.namespaces); empty:
	// all.
	Namespaces []string
	// LeaderElection: status is written by the holder of the Lease
	// LeaseNamespace/LeaseName (policies.leaderElection); false: by this
	// replica.
	LeaderElection bool
	LeaseNamespace string
	LeaseName      string
	// Identity names this replica in the Lease (the pod name).
	Identity string
	// LeaseDuration, RenewDeadline, RetryPeriod: client-go's leader
	// election timing (defaults 15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Config is the validated configuration whose routes come first;
	// SetConfig replaces it.
	Config  config.Config
	Applier Applier
	Log     *slog.Logger
	// Registerer receives credinject_policies and
	// credinject_policies_applies_total (nil: not registered).
	Registerer prometheus.Registerer
}

// Controller watches CredentialPolicies and the HTTPRoutes they target;
// every change recompiles the route table, hands it to the Applier, and, on
// the leader, writes each policy's status. Every replica serves every
// policy; only status writing moves with the Lease.
type Controller struct {
	cfg     Config
	conf    atomic.Pointer[config.Config]
	queue   workqueue.TypedRateLimitingInterface[string]
	leader  atomic.Bool
	metrics *controllerMetrics

	policies []toolscache.GenericLister
	routes   []toolscache.GenericLister // nil: HTTPRoutes are not served
	synced   []toolscache.InformerSynced
	start    []func(<-chan struct{})

	mu      sync.Mutex
	applied *Table // the table last served; nil before the first
}

// syncKey is the one key of the work queue: every change recompiles
// everything (policies are few), and changes that wait together coalesce.
const syncKey = "sync"

// NewController builds a controller. It fails when the CredentialPolicy
// resource is not served (the CRD is not installed); without Gateway API's
// HTTPRoute, every policy with targetRefs is TargetNotFound.
func NewController(cfg Config) (*Controller, error) {
	if cfg.Dynamic == nil || cfg.Kube == nil || cfg.Applier == nil {
		return nil, errors.New("policies: Dynamic, Kube and Applier are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.LeaseName == "" {
		cfg.LeaseName = "credinject-policies"
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod = 15*time.Second, 10*time.Second, 2*time.Second
	}
	m, err := newControllerMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, metrics: m,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "credinject-policies"})}
	conf := cfg.Config
	c.conf.Store(&conf)
	if !served(cfg.Kube, PolicyResource) {
		return nil, fmt.Errorf("policies.enabled: %s.%s/%s is not served: install deploy/crds", PolicyResource.Resource, PolicyResource.Group, PolicyResource.Version)
	}
	withRoutes := served(cfg.Kube, HTTPRouteResource)
	if !withRoutes {
		cfg.Log.Warn("Gateway API HTTPRoutes are not served; policies with targetRefs are TargetNotFound (restart after installing the CRDs)")
	}
	namespaces := cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.queue.Add(syncKey) },
		UpdateFunc: func(any, any) { c.queue.Add(syncKey) },
		DeleteFunc: func(any) { c.queue.Add(syncKey) },
	}
	for _, ns := range namespaces {
		f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(cfg.Dynamic, 0, ns, nil)
		pi := f.ForResource(PolicyResource)
		if _, err := pi.Informer().AddEventHandler(handler); err != nil {
			return nil, err
		}
		c.policies = append(c.policies, pi.Lister())
		c.synced = append(c.synced, pi.Informer().HasSynced)
		if withRoutes {
			ri := f.ForResource(HTTPRouteResource)
			if _, err := ri.Informer().AddEventHandler(handler); err != nil {
				return nil, err
			}
			c.routes = append(c.routes, ri.Lister())
			c.synced = append(c.synced, ri.Informer().HasSynced)
		}
		c.start = append(c.start, f.Start)
	}
	return c, nil
}

// served reports whether the API server serves gvr.
func served(kc kubernetes.Interface, gvr schema.GroupVersionResource) bool {
	rl, err := kc.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, r := range rl.APIResources {
		if r.Name == gvr.Resource {
			return true
		}
	}
	return false
}

// SetConfig replaces the configuration whose routes come first (a reloaded
// file) and recompiles.
func (c *Controller) SetConfig(cfg config.Config) {
	c.conf.Store(&cfg)
	c.queue.Add(syncKey)
}

// Applied reports whether a table compiled from the policies has been
// served once (readiness waits for it: a replica that started serves no
// policy before).
func (c *Controller) Applied() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied != nil
}

// Leader reports whether this replica writes status.
func (c *Controller) Leader() bool { return c.leader.Load() }

// Run watches until ctx ends: it applies the first table once the
// informers have synced, then every change; with leader election it
// campaigns for the Lease and writes status while it holds it.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	for _, start := range c.start {
		start(ctx.Done())
	}
	if !toolscache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return ctx.Err()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if c.cfg.LeaderElection {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: &resourcelock.LeaseLock{
				LeaseMeta:  metav1.ObjectMeta{Namespace: c.cfg.LeaseNamespace, Name: c.cfg.LeaseName},
				Client:     c.cfg.Kube.CoordinationV1(),
				LockConfig: resourcelock.ResourceLockConfig{Identity: c.cfg.Identity},
			},
			LeaseDuration: c.cfg.LeaseDuration, RenewDeadline: c.cfg.RenewDeadline, RetryPeriod: c.cfg.RetryPeriod,
			ReleaseOnCancel: true, Name: c.cfg.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					c.cfg.Log.Info("leading: writing CredentialPolicy status", "lease", c.cfg.LeaseNamespace+"/"+c.cfg.LeaseName, "identity", c.cfg.Identity)
					c.leader.Store(true)
					c.metrics.leader.Set(1)
					c.queue.Add(syncKey)
				},
				OnStoppedLeading: func() {
					c.leader.Store(false)
					c.metrics.leader.Set(0)
				},
			},
		})
		if err != nil {
			return fmt.Errorf("policies: leader election: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Run returns when leadership is lost; campaign again.
			for ctx.Err() == nil {
				le.Run(ctx)
			}
		}()
	} else {
		c.leader.Store(true)
		c.metrics.leader.Set(1)
	}
	c.queue.Add(syncKey)
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for c.next(ctx) {
	}
	return nil
}

// next handles one key of the queue; false once the queue is shut down.
func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.sync(ctx); err != nil {
		c.cfg.Log.Warn("policies: sync failed; retrying", "error", err)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// sync compiles the table of the current policies and configuration,
// applies it and, on the leader, writes status.
func (c *Controller) sync(ctx context.Context) error {
	objs, pols, err := c.list()
	if err != nil {
		return err
	}
	t := Compile(c.conf.Load(), pols, c.hostnames)
	c.metrics.count(t)
	enforced := true
	if err := c.cfg.Applier.Apply(ctx, t); err != nil {
		c.metrics.applies.WithLabelValues("error").Inc()
		c.cfg.Log.Error("policies: the route table could not be served; the previous one stays", "error", err)
		enforced = false
	} else {
		c.metrics.applies.WithLabelValues("ok").Inc()
		c.mu.Lock()
		c.applied = &t
		c.mu.Unlock()
	}
	if !c.leader.Load() {
		return nil
	}
	var errs []error
	for i, p := range pols {
		if err := c.writeStatus(ctx, objs[i], p, t.Conditions[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}], enforced); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// list returns every policy of the watched namespaces, as read and as
// typed; a policy that does not decode is logged and left out.
func (c *Controller) list() ([]*unstructured.Unstructured, []*v1alpha1.CredentialPolicy, error) {
	var (
		objs []*unstructured.Unstructured
		pols []*v1alpha1.CredentialPolicy
	)
	for _, l := range c.policies {
		items, err := l.List(labels.Everything())
		if err != nil {
			return nil, nil, err
		}
		for _, it := range items {
			u, ok := it.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			p := &v1alpha1.CredentialPolicy{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p); err != nil {
				c.cfg.Log.Warn("policies: a CredentialPolicy does not decode; ignored", "policy", u.GetNamespace()+"/"+u.GetName(), "error", err)
				continue
			}
			objs, pols = append(objs, u), append(pols, p)
		}
	}
	return objs, pols, nil
}

// hostnames is Hostnames over the HTTPRoute informers.
func (c *Controller) hostnames(namespace, name string) ([]string, bool) {
	for _, l := range c.routes {
		obj, err := l.ByNamespace(namespace).Get(name)
		if err != nil {
			continue
		}
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		hs, _, _ := unstructured.NestedStringSlice(u.Object, "spec", "hostnames")
		return hs, true
	}
	return nil, false
}

// writeStatus writes p's observedGeneration and its Accepted and Enforced
// conditions, unless they already say so.
func (c *Controller) writeStatus(ctx context.Context, u *unstructured.Unstructured, p *v1alpha1.CredentialPolicy, cond Condition, enforced bool) error {
	st := v1alpha1.CredentialPolicyStatus{ObservedGeneration: p.Generation, Conditions: slices.Clone(p.Status.Conditions)}
	accepted := metav1.Condition{Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionFalse, Reason: cond.Reason,
		Message: cond.Message, ObservedGeneration: p.Generation}
	if cond.Accepted {
		accepted.Status = metav1.ConditionTrue
	}
	enf := metav1.Condition{Type: v1alpha1.ConditionEnforced, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonPending,
		ObservedGeneration: p.Generation, Message: "not accepted"}
	switch {
	case cond.Accepted && enforced:
		enf.Status, enf.Reason, enf.Message = metav1.ConditionTrue, v1alpha1.ReasonEnforced, "served"
	case cond.Accepted:
		enf.Message = "the route table could not be served; see credinject's log"
	}
	meta.SetStatusCondition(&st.Conditions, accepted)
	meta.SetStatusCondition(&st.Conditions, enf)
	if p.Status.ObservedGeneration == st.ObservedGeneration && sameConditions(p.Status.Conditions, st.Conditions) {
		return nil
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
	if err != nil {
		return err
	}
	out := u.DeepCopy()
	out.Object["status"] = m
	_, err = c.cfg.Dynamic.Resource(PolicyResource).Namespace(p.Namespace).UpdateStatus(ctx, out, metav1.UpdateOptions{FieldManager: "credinject"})
	switch {
	case apierrors.IsNotFound(err):
		return nil // deleted meanwhile
	case err != nil:
		c.metrics.statusWrites.WithLabelValues("error").Inc()
		return fmt.Errorf("status of %s/%s: %w", p.Namespace, p.Name, err)
	}
	c.metrics.statusWrites.WithLabelValues("ok").Inc()
	return nil
}

// sameConditions compares conditions without their transition times.
func sameConditions(a, b []metav1.Condition) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		y := meta.FindStatusCondition(b, x.Type)
		if y == nil || y.Status != x.Status || y.Reason != x.Reason || y.Message != x.Message || y.ObservedGeneration != x.ObservedGeneration {
			return false
		}
	}
	return true
}
