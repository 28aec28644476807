package watcher

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// scaleVault is a stateless fake Vault for the scale benchmark: it holds
// nothing per identity, so what the heap grows by is the watcher's (and the
// cache's) own. Its tokens and values have the sizes of real ones: a Vault
// service token of 95 bytes, an API key of 51.
type scaleVault struct{ n atomic.Int64 }

func (v *scaleVault) Login(_ context.Context, jwt string) (vaultLogin, error) {
	if !strings.HasPrefix(jwt, "jwt:") {
		return vaultLogin{}, authz.Deny(authz.ReasonVaultDenied, errForbidden)
	}
	return vaultLogin{Token: fmt.Sprintf("hvs.%091d", v.n.Add(1)), TTL: time.Hour, Renewable: true}, nil
}

func (v *scaleVault) RenewSelf(context.Context, string) (time.Duration, error) { return time.Hour, nil }

func (v *scaleVault) Read(_ context.Context, _, path string) (*vaultapi.Secret, error) {
	return &vaultapi.Secret{Data: map[string]any{
		"data":     map[string]any{"api_key": fmt.Sprintf("sk-%048d", len(path))},
		"metadata": map[string]any{"version": json.Number("1")},
	}}, nil
}

func (v *scaleVault) RevokeSelf(context.Context, string) error { return nil }

func (v *scaleVault) RenewLease(context.Context, string, string, time.Duration) (time.Duration, error) {
	return time.Hour, nil
}

func (v *scaleVault) RevokeLease(context.Context, string, string) error { return nil }

// scaleMinter mints service-account tokens of size bytes (a real
// TokenRequest JWT is about 1 KiB), which the fake Vault accepts.
type scaleMinter struct{ size int }

func (m scaleMinter) Token(_ context.Context, id authz.Identity) (string, time.Time, error) {
	t := "jwt:" + id.Key() + ":"
	if pad := m.size - len(t); pad > 0 {
		t += strings.Repeat("x", pad)
	}
	return t, time.Now().Add(time.Hour), nil
}

// staticSAs is a ServiceAccount informer over a fixed list: its first sync
// announces every key, as a real informer's first list does.
type staticSAs struct {
	keys  map[string][]string // namespace -> keys
	all   map[string]bool
	onAdd func(namespace, name string)
}

func (s *staticSAs) WaitForSync(context.Context) bool {
	for _, keys := range s.keys {
		for _, k := range keys {
			ns, name, _ := strings.Cut(k, "/")
			s.onAdd(ns, name)
		}
	}
	return true
}

func (s *staticSAs) List(ns string) []string   { return s.keys[ns] }
func (s *staticSAs) Exists(key, _ string) bool { return s.all[key] }
func (s *staticSAs) AddHandler(onAdd, _ func(namespace, name string)) error {
	s.onAdd = onAdd
	return nil
}

// heapInUse is the live heap and the goroutine stacks after a full GC.
func heapInUse() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse
}

// BenchmarkPrefetchScale prefetches n identities through the real watcher
// and Prefetcher (fake Vault and TokenRequest, real credential cache, real
// clock) and reports what each identity costs once prefetched: heap-B/id
// (runtime.MemStats HeapAlloc after GC, before and after), stack-B/id
// (goroutine stacks), and the prefetch's wall time. satoken is the size of
// the minted service-account token a session keeps. Run it with
// -benchtime=1x: one iteration is a whole prefetch.
func BenchmarkPrefetchScale(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		for _, sat := range []int{1024, 32} {
			b.Run(fmt.Sprintf("identities=%d/satoken=%d", n, sat), func(b *testing.B) {
				benchPrefetch(b, n, sat)
			})
		}
	}
}

func benchPrefetch(b *testing.B, n, satSize int) {
	sas := &staticSAs{keys: map[string][]string{}, all: make(map[string]bool, n)}
	var namespaces []string
	const perNS = 100
	for i := range n {
		ns := fmt.Sprintf("ns-%d", i/perNS)
		if i%perNS == 0 {
			namespaces = append(namespaces, ns)
		}
		key := fmt.Sprintf("%s/sa-%d", ns, i%perNS)
		sas.keys[ns] = append(sas.keys[ns], key)
		sas.all[key] = true
	}
	m, err := newMetrics(nil)
	if err != nil {
		b.Fatal(err)
	}
	var heapPer, stackPer, secs float64
	for b.Loop() {
		b.StopTimer()
		creds, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: 1 << 18, DeniedCapacity: 1 << 10})
		if err != nil {
			b.Fatal(err)
		}
		w, err := newWatcher(Config{
			Routes:  []Route{{Name: "", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}"}},
			Refresh: 5 * time.Minute, StaleGrace: 15 * time.Minute, DeniedTTL: 10 * time.Second,
			KVMount: "secret", Concurrency: 16, Store: creds, Minter: scaleMinter{size: satSize}, Clock: clock.RealClock{},
		}, &scaleVault{}, nil, m)
		if err != nil {
			b.Fatal(err)
		}
		p, err := NewPrefetcher(w, sas, namespaces, 16, nil)
		if err != nil {
			b.Fatal(err)
		}
		heap0, stack0 := heapInUse()
		b.StartTimer()
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Minute, true,
			func(context.Context) (bool, error) { return p.Ready(), nil }); err != nil {
			b.Fatal(err)
		}
		secs += time.Since(start).Seconds()
		b.StopTimer()
		if got := w.Len(); got != n {
			b.Fatalf("watching %d identities, want %d", got, n)
		}
		heap1, stack1 := heapInUse()
		heapPer += (float64(heap1) - float64(heap0)) / float64(n)
		stackPer += (float64(stack1) - float64(stack0)) / float64(n)
		cancel()
		<-done
		w.Close()
		creds.Close()
		b.StartTimer()
	}
	runs := float64(b.N)
	b.ReportMetric(heapPer/runs, "heap-B/id")
	b.ReportMetric(stackPer/runs, "stack-B/id")
	b.ReportMetric(secs/runs, "prefetch-s")
}
