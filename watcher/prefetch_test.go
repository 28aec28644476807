package watcher

import (
	"context"
	"fmt"
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

// TestPrefetchStopsAtShutdown: when credinject stops during the first pass,
// the ServiceAccounts still queued are not prefetched (a TokenRequest, an
// identity and its schedule each, with a cancelled context) on the way out.
func TestPrefetchStopsAtShutdown(t *testing.T) {
	r := newRig(t)
	r.vault.readGate = make(chan struct{}) // every read waits: the pass cannot finish
	sas := &staticSAs{keys: map[string][]string{}, all: map[string]bool{}}
	for i := range 50 {
		key := fmt.Sprintf("ns/sa%d", i)
		sas.keys["ns"] = append(sas.keys["ns"], key)
		sas.all[key] = true
		r.identity("ns", fmt.Sprintf("sa%d", i), "k")
	}
	const workers = 2
	p, err := NewPrefetcher(r.w, sas, []string{"ns"}, workers, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { p.Run(ctx); close(ran) }()
	r.eventually("the first reads waiting", func() bool { return r.minter.count() == workers })
	cancel()
	<-ran
	if n := r.minter.count(); n != workers {
		t.Errorf("%d service-account tokens minted, want %d (the reads in flight at shutdown)", n, workers)
	}
	if n := r.w.Len(); n > workers {
		t.Errorf("%d identities watched after the shutdown, want at most %d", n, workers)
	}
}
