package watcher

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/credinject/credinject/authz"
)

// ServiceAccounts is the informer the Prefetcher follows
// (*kube.ServiceAccounts satisfies it).
type ServiceAccounts interface {
	WaitForSync(ctx context.Context) bool
	List(namespace string) []string
	Exists(key, uid string) bool
	AddHandler(onAdd, onDelete func(namespace, name string)) error
}

// Prefetcher feeds the watcher the ServiceAccounts of the prefetch
// namespaces as the informer sees them and makes the watcher forget a
// deleted ServiceAccount. It does no credential work itself: each of its
// workers asks the watcher's executor for one identity's prefetch and waits
// for it, so the first pass puts at most `workers` identities ahead of a
// request's miss in the executor's queue (no thundering herd at start-up),
// and counts its progress. A prefetch that could not reach Vault is
// retried by the executor, with backoff, like any failed run.
type Prefetcher struct {
	w          *Watcher
	sas        ServiceAccounts
	namespaces map[string]bool
	workers    int
	log        *slog.Logger
	queue      workqueue.TypedInterface[string]

	initial sync.WaitGroup
	pending sync.Map // keys of the first pass not yet done
	ready   atomic.Bool
	// Progress of the first pass: ServiceAccounts in it, tried, failed.
	total, done, failed atomic.Int64
}

// progressEvery is how often the first pass logs its progress.
const progressEvery = 5 * time.Second

// NewPrefetcher wires w to the informer. workers bounds the identities
// prefetched at once (prefetch.concurrency; each mints a token, logs in to
// Vault and reads every route, Vault calls also bounded by the watcher's
// Concurrency). namespaces empty: nothing is prefetched, but deletions are
// still followed.
func NewPrefetcher(w *Watcher, sas ServiceAccounts, namespaces []string, workers int, log *slog.Logger) (*Prefetcher, error) {
	if workers <= 0 {
		workers = 4
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Prefetcher{
		w: w, sas: sas, namespaces: map[string]bool{}, workers: workers, log: log,
		queue: workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[string]{Name: "credinject-prefetch"}),
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
			id := authz.NewIdentity(ns, name)
			p.log.Info("serviceaccount deleted; evicting its credentials", "identity", id.Key())
			p.w.Forget(id)
		})
	return p, err
}

// Ready reports whether the first prefetch pass is done.
func (p *Prefetcher) Ready() bool { return p.ready.Load() }

// Progress is the first pass's progress: of total ServiceAccounts, done
// were tried once, failed of them failed (refused by Vault, or retried
// later with backoff). total is 0 until the informer has synced.
func (p *Prefetcher) Progress() (done, total, failed int64) {
	return p.done.Load(), p.total.Load(), p.failed.Load()
}

// Run processes the queue until ctx ends. The first pass is every
// ServiceAccount of the prefetch namespaces present when the informer
// synced; Ready turns true when each was tried once.
func (p *Prefetcher) Run(ctx context.Context) {
	defer p.queue.ShutDown()
	if !p.sas.WaitForSync(ctx) {
		return
	}
	var total int64
	for ns := range p.namespaces {
		for _, key := range p.sas.List(ns) {
			p.initial.Add(1)
			p.pending.Store(key, true)
			total++
		}
	}
	p.total.Store(total)
	clk := p.w.cfg.Clock
	start := clk.Now()
	p.log.Info("first prefetch pass started", "total", total, "workers", p.workers)
	first := make(chan struct{})
	go func() {
		p.initial.Wait()
		p.ready.Store(true)
		close(first)
		done, total, failed := p.Progress()
		p.log.Info("first prefetch pass done", "identities", p.w.Len(), "done", done, "total", total, "failed", failed, "took", clk.Since(start))
	}()
	var wg sync.WaitGroup
	wg.Go(func() {
		t := clk.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-first:
				return
			case <-t.C():
				done, total, failed := p.Progress()
				p.log.Info("prefetch progress", "done", done, "total", total, "failed", failed, "elapsed", clk.Since(start))
			}
		}
	})
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
	if ctx.Err() != nil {
		// Shutting down: the queue drains without prefetching what is
		// left (the first pass's waiter is still released).
		p.firstDone(key, true)
		return true
	}
	ns, name, _ := toolscache.SplitMetaNamespaceKey(key)
	if !p.sas.Exists(key, "") {
		p.firstDone(key, false)
		return true
	}
	err := p.w.Prefetch(ctx, authz.NewIdentity(ns, name))
	p.firstDone(key, err != nil)
	if err != nil && ctx.Err() == nil {
		p.log.Warn("prefetch failed", "identity", key, "error", err)
	}
	return true
}

func (p *Prefetcher) firstDone(key string, failed bool) {
	if _, ok := p.pending.LoadAndDelete(key); ok {
		if failed {
			p.failed.Add(1)
		}
		p.done.Add(1)
		p.initial.Done()
	}
}
