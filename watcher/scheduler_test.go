package watcher

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
)

// TestStuckIdentityDoesNotDelayOthers: an identity whose Vault reads hang
// holds one worker; the other identities due at the same time are
// refreshed meanwhile.
func TestStuckIdentityDoesNotDelayOthers(t *testing.T) {
	r := newRig(t)
	stuck, tok := r.identity("ns", "stuck", "s1")
	if _, err := r.miss("", stuck, tok); err != nil {
		t.Fatal(err)
	}
	var others []authz.Identity
	for i := range 5 {
		id, tok := r.identity("ns", fmt.Sprintf("sa-%d", i), "v1")
		if _, err := r.miss("", id, tok); err != nil {
			t.Fatal(err)
		}
		r.vault.put(id.Key(), "v2")
		others = append(others, id)
	}
	r.vault.mu.Lock()
	r.vault.stuck[stuck.Key()] = true
	r.vault.mu.Unlock()
	r.step(201 * time.Second) // every identity is due
	// First the stuck identity's read hangs (its worker may reach it before
	// or after the others start), then the others are refreshed meanwhile.
	r.eventually("the stuck identity's read in flight", func() bool {
		r.vault.mu.Lock()
		defer r.vault.mu.Unlock()
		return r.vault.blocked == 1
	})
	r.eventually("the others refreshed while one hangs", func() bool {
		for _, id := range others {
			if e := r.entry("", id); e == nil || e.Value != "Bearer v2" {
				return false
			}
		}
		return true
	})
	r.vault.mu.Lock()
	blocked := r.vault.blocked
	r.vault.mu.Unlock()
	if blocked != 1 {
		t.Fatalf("%d reads hanging; want the stuck identity's still in flight", blocked)
	}
}

// TestResyncRestartsSchedule: a resync re-reads at once, and the next
// scheduled refresh counts from it, not from the read before.
func TestResyncRestartsSchedule(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "k1")
	if _, err := r.miss("", id, tok); err != nil { // next refresh at +200 s
		t.Fatal(err)
	}
	r.step(100 * time.Second)
	r.vault.put(id.Key(), "k2")
	if err := r.w.ResyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.eventually("the resync", func() bool { return r.entry("", id).Value == "Bearer k2" })
	reads := r.vault.count("read")
	r.step(101 * time.Second) // +201 s: the old schedule's time, not the new one's
	if got := r.vault.count("read"); got != reads {
		t.Fatalf("reads %d -> %d at the superseded time", reads, got)
	}
	r.vault.put(id.Key(), "k3")
	r.step(100 * time.Second) // +301 s: 200 s after the resync
	r.eventually("the rescheduled refresh", func() bool { return r.entry("", id).Value == "Bearer k3" })
}

// TestRefreshersShareGoroutines: watching more identities does not start
// more goroutines; the refreshers share the scheduler's workers.
func TestRefreshersShareGoroutines(t *testing.T) {
	r := newRig(t)
	before := runtime.NumGoroutine()
	for i := range 300 {
		id, _ := r.identity("ns", fmt.Sprintf("sa-%d", i), "k")
		if err := r.w.Prefetch(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	if r.w.Len() != 300 {
		t.Fatalf("watching %d, want 300", r.w.Len())
	}
	if after := runtime.NumGoroutine(); after-before > 20 {
		t.Fatalf("goroutines %d -> %d for 300 identities", before, after)
	}
}

// TestStuckMissDoesNotDelayOtherMisses: a request's miss for an identity
// whose Vault reads hang waits for its own caller only; misses of other
// identities are answered meanwhile, and the hung one ends when its caller
// gives up.
func TestStuckMissDoesNotDelayOtherMisses(t *testing.T) {
	r := newRig(t)
	stuck, stuckTok := r.identity("ns", "stuck", "s1")
	r.vault.mu.Lock()
	r.vault.stuck[stuck.Key()] = true
	r.vault.mu.Unlock()
	ctx, giveUp := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.w.Credential(ctx, "", stuck, stuckTok, r.clock.Now().Add(time.Hour))
		done <- err
	}()
	r.eventually("the stuck identity's read to hang", func() bool {
		r.vault.mu.Lock()
		defer r.vault.mu.Unlock()
		return r.vault.blocked == 1
	})
	for i := range 20 {
		id, tok := r.identity("ns", fmt.Sprintf("sa-%d", i), fmt.Sprintf("k%d", i))
		e, err := r.miss("", id, tok)
		if err != nil || e.Value != fmt.Sprintf("Bearer k%d", i) {
			t.Fatalf("%s while another identity hangs: %v %v", id.Key(), e, err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the stuck miss returned before its caller gave up: %v", err)
	default:
	}
	giveUp()
	if err := <-done; authz.ReasonOf(err) != authz.ReasonVaultUnavailable {
		t.Fatalf("the stuck miss after its caller gave up: %v", err)
	}
}
