package app

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/policies"
	"github.com/credinject/credinject/watcher"
)

// routing serves route tables (policies.Applier) and reloads the config
// file: the one place the checker's router and the watcher's routes change
// after start.
type routing struct {
	a *App
	// mu orders Apply calls (the controller's and a reload's).
	mu      sync.Mutex
	current config.Config // the configuration in force, guarded by mu
	// controller is nil when policies are off.
	controller *policies.Controller
	reloads    *prometheus.CounterVec
	// lastSum is the config file's last content read (sha256).
	lastSum [32]byte
	// base bounds the watcher's background reconciles (run's context).
	base context.Context
}

var _ policies.Applier = (*routing)(nil)

// newRouting builds the route applier and, with policies.enabled, the
// policy controller.
func (a *App) newRouting(kc kubernetes.Interface, rc *rest.Config) error {
	r := &routing{a: a, current: a.cfg, base: context.Background()}
	r.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "credinject_config_reloads_total",
		Help: "Reloads of the config file (on change and SIGHUP) by result: ok (applied), unchanged, error (refused; the previous configuration stays)."}, []string{"result"})
	for _, res := range []string{"ok", "unchanged", "error"} {
		r.reloads.WithLabelValues(res)
	}
	if err := a.reg.Register(r.reloads); err != nil {
		return err
	}
	if a.opts.ConfigPath != "" {
		if raw, err := os.ReadFile(a.opts.ConfigPath); err == nil {
			r.lastSum = sha256.Sum256(raw)
		}
	}
	a.routing = r
	p := a.cfg.Policies
	if !p.Enabled {
		return nil
	}
	if kc == nil {
		return fmt.Errorf("policies.enabled: needs a Kubernetes API server")
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("policies: %w", err)
	}
	r.controller, err = policies.NewController(policies.Config{
		Dynamic: dc, Kube: kc, Namespaces: p.Namespaces, LeaderElection: p.LeaderElectionEnabled(),
		LeaseNamespace: a.opts.leaseNamespace(), Identity: a.opts.leaseIdentity(),
		LeaseDuration: a.opts.LeaseDuration, RenewDeadline: a.opts.LeaseDuration * 2 / 3, RetryPeriod: a.opts.LeaseDuration / 5,
		Config: a.cfg, Applier: r, Log: a.log.With("component", "policies"), Registerer: a.reg,
	})
	return err
}

// leaseNamespace is where the status Lease lives: Options.LeaseNamespace,
// else $POD_NAMESPACE, else the ServiceAccount's namespace, else default.
func (o Options) leaseNamespace() string {
	if o.LeaseNamespace != "" {
		return o.LeaseNamespace
	}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil && len(b) > 0 {
		return strings.TrimSpace(string(b))
	}
	return "default"
}

// leaseIdentity names this replica in the Lease: $POD_NAME or the host
// name, and a random suffix (two processes never share one).
func (o Options) leaseIdentity() string {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	return name + "_" + string(uuid.NewUUID())
}

// Apply serves t: the watcher's routes first (a miss on an added route is
// served at once), then the checker's router; the watcher's reconcile (a
// removed route's entries evicted, its leases revoked; a changed route
// re-read) runs in the background. An invalid table changes nothing.
func (r *routing) Apply(ctx context.Context, t policies.Table) error {
	router, err := checker.NewRouter(checkerRoutesOf(t), t.HasDefault)
	if err != nil {
		return err
	}
	wait, err := r.a.watcher.ReplaceRoutes(watcherRoutesOf(t))
	if err != nil {
		return err
	}
	r.a.checker.SetRouter(router)
	go func() {
		if err := wait(r.base); err != nil && r.base.Err() == nil {
			r.a.log.Warn("routes changed; some identities could not reconcile yet (they retry)", "error", err)
		}
	}()
	return nil
}

// checkerRoutesOf is t's routes as the checker's router takes them.
func checkerRoutesOf(t policies.Table) []checker.Route {
	var rs []checker.Route
	for _, r := range t.Routes {
		if r.Name == "" {
			continue // the default route
		}
		cr := checker.Route{Name: r.Name, Hosts: r.Hosts, Paths: r.Paths}
		if r.Subjects != nil {
			cr.Subjects = &checker.Subjects{Namespaces: r.Subjects.Namespaces, ServiceAccounts: r.Subjects.ServiceAccounts}
		}
		rs = append(rs, cr)
	}
	return rs
}

// watcherRoutesOf is t's routes as the watcher takes them.
func watcherRoutesOf(t policies.Table) []watcher.Route {
	rs := make([]watcher.Route, 0, len(t.Routes))
	for _, r := range t.Routes {
		c := r.Config
		wr := watcher.Route{
			Name: r.Name, Source: watcher.Source(c.Source), Path: c.Path, Header: c.Inject.Header, Value: c.Inject.Value,
			Shapes: watcherShapes(c.Inject),
			Vault:  watcher.VaultOverride{Role: r.Vault.Role, AuthMount: r.Vault.AuthMount, KVMount: r.Vault.KVMount, Namespace: r.Vault.Namespace},
		}
		if o := c.OAuth2; o != nil {
			wr.TokenURL, wr.Scopes, wr.ClientAuth = o.TokenURL, o.Scopes, watcher.ClientAuth(o.ClientAuth)
		}
		rs = append(rs, wr)
	}
	return rs
}

// run reloads the config file when it changes (checked every
// Options.ReloadInterval, default 5s) and on SIGHUP, and runs the policy
// controller, until ctx ends.
func (r *routing) run(ctx context.Context) error {
	r.mu.Lock()
	r.base = ctx
	r.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	if r.controller != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.controller.Run(ctx); err != nil && ctx.Err() == nil {
				r.a.log.Error("policy controller stopped", "error", err)
			}
		}()
	}
	if r.a.opts.ConfigPath == "" {
		<-ctx.Done()
		return nil
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	every := r.a.opts.ReloadInterval
	if every <= 0 {
		every = 5 * time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			r.Reload(ctx, true)
		case <-tick.C:
			r.Reload(ctx, false)
		}
	}
}

// Reload reads the config file and applies its routes when it changed
// (always, with force). A file that does not load is refused, logged with
// the key at fault, and the configuration in force stays; a change to a key
// that only a restart applies is logged as such.
func (r *routing) Reload(ctx context.Context, force bool) {
	path := r.a.opts.ConfigPath
	raw, err := os.ReadFile(path)
	if err != nil {
		r.refuse(err)
		return
	}
	sum := sha256.Sum256(raw)
	r.mu.Lock()
	defer r.mu.Unlock()
	if sum == r.lastSum && !force {
		return
	}
	r.lastSum = sum
	cfg, err := config.Parse(strings.NewReader(string(raw)))
	if err != nil {
		r.refuse(fmt.Errorf("config %s: %w", path, err))
		return
	}
	if reflect.DeepEqual(cfg, r.current) {
		r.reloads.WithLabelValues("unchanged").Inc()
		return
	}
	if keys := restartKeys(r.current, cfg); len(keys) > 0 {
		r.a.log.Warn("config reload: these keys changed and take effect only after a restart; the rest is applied", "keys", strings.Join(keys, ", "))
	}
	// Only the routes apply live: the rest of the configuration in force
	// stays as it started.
	next := r.current
	liveRoutes(&next, cfg)
	if r.controller != nil {
		r.controller.SetConfig(next)
	} else if err := r.Apply(ctx, policies.Compile(&next, nil, noTargets)); err != nil {
		r.refuse(fmt.Errorf("config %s: %w", path, err))
		return
	}
	r.current = next
	r.reloads.WithLabelValues("ok").Inc()
	r.a.log.Info("config reloaded", "path", path, "routes", len(next.Routes))
}

// ReloadConfig reloads the config file now, as SIGHUP does.
func (a *App) ReloadConfig(ctx context.Context) { a.routing.Reload(ctx, true) }

// PolicyLeader reports whether this replica writes CredentialPolicy status
// (false with policies off).
func (a *App) PolicyLeader() bool {
	return a.routing.controller != nil && a.routing.controller.Leader()
}

func (r *routing) refuse(err error) {
	r.reloads.WithLabelValues("error").Inc()
	r.a.log.Error("config reload refused; the configuration in force stays", "error", err)
}

func noTargets(string, string) ([]string, bool) { return nil, false }

// liveRoutes copies into dst the keys a reload applies: the routes and
// the default route's (source and its OAuth2 keys, vault.path, inject,
// defaultRoute).
func liveRoutes(dst *config.Config, src config.Config) {
	dst.Routes, dst.DefaultRoute = src.Routes, src.DefaultRoute
	dst.Source, dst.OAuth2 = src.Source, src.OAuth2
	dst.Inject, dst.Vault.Path = src.Inject, src.Vault.Path
}

// restartKeys names the keys that differ between a and b and that a
// reload does not apply (listen.*, vault.* but path, ...).
func restartKeys(a, b config.Config) []string {
	liveRoutes(&a, b)
	var keys []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := range va.NumField() {
		f := va.Type().Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		fa, fb := va.Field(i), vb.Field(i)
		if reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			continue
		}
		if fa.Kind() != reflect.Struct {
			keys = append(keys, name)
			continue
		}
		for j := range fa.NumField() {
			if !reflect.DeepEqual(fa.Field(j).Interface(), fb.Field(j).Interface()) {
				sub, _, _ := strings.Cut(fa.Type().Field(j).Tag.Get("yaml"), ",")
				keys = append(keys, name+"."+sub)
			}
		}
	}
	return keys
}
