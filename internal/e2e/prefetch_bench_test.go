package e2e_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// BenchmarkPrefetch1000 measures a cold start that prefetches 1,000
// ServiceAccounts against the real API server and Vault: time to ready, Vault
// calls made, heap per identity.
func BenchmarkPrefetch1000(b *testing.B) {
	const n = 1000
	env := testenv.Get(b)
	ctx := context.Background()
	ns := testenv.UniqueName("pf1k")
	if err := env.Kube.CreateNamespace(ctx, ns); err != nil {
		b.Fatal(err)
	}
	if err := env.Vault.BindNamespace(ctx, ns); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sa := fmt.Sprintf("sa-%d", i)
			if _, err := env.Kube.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
				b.Error(err)
			}
			if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-" + sa}); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	cfg := apptest.Config(env)
	cfg.Events.NatsURL = ""
	// The caches' fixed size (ristretto's counters) is not per identity:
	// measure an instance with nothing to prefetch first.
	empty := cfg
	empty.Prefetch.Namespaces = []string{testenv.UniqueName("pf-empty")}
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	h0 := heap()
	apptest.Start(b, env, empty)
	baseline := heap() - h0
	cfg.Prefetch.Namespaces = []string{ns}
	b.ResetTimer()
	for range b.N {
		before := heap()
		t0 := time.Now()
		srv := apptest.Start(b, env, cfg) // returns when ready
		ready := time.Since(t0)
		after := heap()
		if got := srv.Counter(b, "credinject_cache_entries", nil); got < n {
			b.Fatalf("ready with %v entries, want %d", got, n)
		}
		b.ReportMetric(ready.Seconds(), "s-to-ready")
		b.ReportMetric(srv.Counter(b, "credinject_vault_requests_total", nil)/n, "vault-calls/identity")
		b.ReportMetric(float64(after-before-baseline)/n, "heap-B/identity")
		b.ReportMetric(float64(baseline)/(1<<20), "baseline-heap-MiB")
	}
}
