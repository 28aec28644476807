package app

import (
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/api/v1alpha1"
	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/policies"
)

// BenchmarkPolicyMemory reports the heap a policy holds once served: its
// compiled route, its place in the checker's router and its watcher route
// (not the credentials cached for it, which are per identity), over 1,000
// policies on 1,000 hosts with a path prefix and subjects.
func BenchmarkPolicyMemory(b *testing.B) {
	cfg, err := config.Parse(strings.NewReader("defaultRoute: false"))
	if err != nil {
		b.Fatal(err)
	}
	const n = 1_000
	pols := make([]*v1alpha1.CredentialPolicy, n)
	for i := range n {
		pols[i] = &v1alpha1.CredentialPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "gw", Name: fmt.Sprintf("p-%d", i), CreationTimestamp: metav1.NewTime(time.Unix(int64(i), 0))},
			Spec: v1alpha1.CredentialPolicySpec{
				Hosts: []string{fmt.Sprintf("api-%d.example.com", i)}, Paths: []string{"/v1/"},
				Subjects: &v1alpha1.Subjects{Namespaces: []string{fmt.Sprintf("team-%d", i)}},
				Source:   v1alpha1.Source{Type: "kv", Path: "egress/{namespace}/{serviceaccount}"},
				Inject:   v1alpha1.Inject{Header: "authorization", Value: "Bearer {api_key}"},
			},
		}
	}
	var kept []any
	var ms0, ms1 runtime.MemStats
	for b.Loop() {
		kept = nil
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		t := policies.Compile(&cfg, pols, func(string, string) ([]string, bool) { return nil, false })
		t.Conditions = nil // status only
		r, err := checker.NewRouter(checkerRoutesOf(t), t.HasDefault)
		if err != nil {
			b.Fatal(err)
		}
		kept = append(kept, t, r, watcherRoutesOf(t))
		runtime.GC()
		runtime.ReadMemStats(&ms1)
	}
	b.ReportMetric(float64(ms1.HeapAlloc-ms0.HeapAlloc)/n, "B/policy")
	runtime.KeepAlive(kept)
}

// TestRestartKeys: a reload names every changed key it does not apply, and
// none of those it applies.
func TestRestartKeys(t *testing.T) {
	parse := func(s string) config.Config {
		t.Helper()
		c, err := config.Parse(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	old := parse("routes: [{hosts: [a.example]}]")
	next := parse(`
listen: {grpc: "0.0.0.0:9191"}
vault: {role: other, path: "x/{namespace}/{serviceaccount}"}
cache: {deniedTTL: 1m}
defaultRoute: false
inject: {header: x-key, value: "{api_key}"}
routes: [{hosts: [b.example]}]
`)
	if got := strings.Join(restartKeys(old, next), ","); got != "listen.grpc,vault.role,cache.deniedTTL" {
		t.Errorf("restart keys %q", got)
	}
	live := old
	liveRoutes(&live, next)
	if live.Listen.GRPC != old.Listen.GRPC || live.Vault.Role != old.Vault.Role || live.Vault.Path != next.Vault.Path ||
		live.Routes[0].Hosts[0] != "b.example" || live.HasDefaultRoute() || !reflect.DeepEqual(live.Inject, next.Inject) {
		t.Errorf("applied %+v", live)
	}
}
