package watcher

import (
	"context"
	"testing"
)

// TestPrefetchProgress: the first pass reports how many ServiceAccounts it
// tried and how many failed, and is ready when each was tried once.
func TestPrefetchProgress(t *testing.T) {
	r := newRig(t)
	sas := &staticSAs{keys: map[string][]string{}, all: map[string]bool{}}
	for _, sa := range []string{"a", "b", "refused"} {
		key := "ns/" + sa
		sas.keys["ns"] = append(sas.keys["ns"], key)
		sas.all[key] = true
		if sa != "refused" {
			r.identity("ns", sa, "k-"+sa)
		}
	}
	p, err := NewPrefetcher(r.w, sas, []string{"ns"}, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if done, total, _ := p.Progress(); done != 0 || total != 0 {
		t.Fatalf("before Run: %d/%d", done, total)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { p.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran }()
	r.eventually("the first pass", p.Ready)
	if done, total, failed := p.Progress(); done != 3 || total != 3 || failed != 1 {
		t.Fatalf("progress %d/%d failed %d; want 3/3 failed 1", done, total, failed)
	}
	if r.w.Len() != 2 {
		t.Fatalf("watching %d identities, want the 2 Vault accepts", r.w.Len())
	}
}
