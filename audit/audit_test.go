package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/util/wait"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// buffer is a goroutine-safe output.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// records parses every line; each must be a JSON object with "log":"audit".
func (b *buffer) records(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.b.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if m["log"] != "audit" {
			t.Fatalf("line %q has no \"log\":\"audit\"", sc.Text())
		}
		out = append(out, m)
	}
	return out
}

func ofKind(recs []map[string]any, kind string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["record"] == kind {
			out = append(out, r)
		}
	}
	return out
}

type rig struct {
	clock *clocktesting.FakeClock
	out   *buffer
	reg   *prometheus.Registry
	log   *Log
}

func newRig(t *testing.T, maxKeys int) *rig {
	t.Helper()
	r := &rig{clock: clocktesting.NewFakeClock(t0), out: &buffer{}, reg: prometheus.NewRegistry()}
	var err error
	r.log, err = New(Config{Output: r.out, Interval: time.Minute, MaxKeys: maxKeys, Clock: r.clock, Registerer: r.reg})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func allow(at time.Time, id, route, host string, version int64) Use {
	return Use{At: at, Identity: id, Route: route, Host: host, Version: version, TokenTag: 0xdeadbeef}
}

// TestUsageAggregates: allows per (identity, route, version, host) and
// denies per (reason, identity, route), or per reason without an identity
// (the last token's tag as a sample), each with its count, first and last
// time, then a flush record for the interval.
func TestUsageAggregates(t *testing.T) {
	r := newRig(t, 100)
	for i := range 3 {
		r.log.Use(allow(t0.Add(time.Duration(i)*time.Second), "ns/a", "", "api.openai.com", 3))
	}
	r.log.Use(allow(t0.Add(5*time.Second), "ns/a", "", "api.openai.com", 4)) // a new version
	r.log.Use(allow(t0.Add(6*time.Second), "ns/a", "", "other.example", 4))  // another host
	r.log.Use(allow(t0.Add(7*time.Second), "ns/b", "github", "api.github.com", 1))
	// Denies: two forged tokens (no identity) and one identity refused by Vault.
	for i := range 4 {
		r.log.Use(Use{At: t0.Add(time.Duration(i) * time.Second), Reason: authz.ReasonInvalidToken, TokenTag: 0x0a0b0c0d})
	}
	r.log.Use(Use{At: t0, Reason: authz.ReasonInvalidToken, TokenTag: 0x01020304})
	r.log.Use(Use{At: t0.Add(2 * time.Second), Reason: authz.ReasonVaultDenied, Identity: "ns/c", TokenTag: 0x99})
	r.log.Use(Use{At: t0.Add(3 * time.Second), Reason: authz.ReasonVaultDenied, Identity: "ns/c", TokenTag: 0x98})
	r.log.Use(Use{At: t0, Reason: authz.ReasonMissingToken})
	r.clock.Step(time.Minute)
	r.log.Flush()

	recs := r.out.records(t)
	type usage struct {
		id, route, host string
		version         float64
		count           float64
		first, last     time.Duration
	}
	var got []usage
	for _, u := range ofKind(recs, KindUsage) {
		got = append(got, usage{u["identity"].(string), u["route"].(string), u["host"].(string), u["version"].(float64), u["count"].(float64),
			parse(t, u["first"]).Sub(t0), parse(t, u["last"]).Sub(t0)})
	}
	want := []usage{
		{"ns/a", "", "api.openai.com", 3, 3, 0, 2 * time.Second},
		{"ns/a", "", "api.openai.com", 4, 1, 5 * time.Second, 5 * time.Second},
		{"ns/a", "", "other.example", 4, 1, 6 * time.Second, 6 * time.Second},
		{"ns/b", "github", "api.github.com", 1, 1, 7 * time.Second, 7 * time.Second},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("usage records\n got %v\nwant %v", got, want)
	}
	var denied []string
	for _, d := range ofKind(recs, KindDenied) {
		denied = append(denied, fmt.Sprintf("%v|%v|%v|%v|%v-%v", d["reason"], d["identity"], d["tokenTag"], d["count"],
			parse(t, d["first"]).Sub(t0), parse(t, d["last"]).Sub(t0)))
	}
	wantDenied := []string{
		"invalid_token|<nil>|0a0b0c0d|5|0s-3s",
		"missing_token|<nil>|<nil>|1|0s-0s",
		"vault_denied|ns/c|<nil>|2|2s-3s",
	}
	if fmt.Sprint(denied) != fmt.Sprint(wantDenied) {
		t.Errorf("denied records\n got %v\nwant %v", denied, wantDenied)
	}
	flush := ofKind(recs, KindFlush)
	if len(flush) != 1 || flush[0]["usage"] != 4.0 || flush[0]["denied"] != 3.0 || flush[0]["dropped"] != 0.0 ||
		!parse(t, flush[0]["from"]).Equal(t0) || !parse(t, flush[0]["to"]).Equal(t0.Add(time.Minute)) {
		t.Errorf("flush records %v", flush)
	}
	if n := testutil.ToFloat64(r.log.metrics.records[KindUsage]); n != 4 {
		t.Errorf("credinject_audit_records_total{record=usage} = %v, want 4", n)
	}

	// The next interval starts empty.
	r.log.Use(allow(t0.Add(time.Minute+time.Second), "ns/a", "", "api.openai.com", 4))
	r.clock.Step(time.Minute)
	r.log.Flush()
	recs = r.out.records(t)
	last := recs[len(recs)-2:]
	if last[0]["record"] != KindUsage || last[0]["count"] != 1.0 || last[1]["record"] != KindFlush || last[1]["usage"] != 1.0 {
		t.Errorf("second interval: %v", last)
	}
}

func parse(t *testing.T, v any) time.Time {
	t.Helper()
	s, _ := v.(string)
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("time %v: %v", v, err)
	}
	return tm
}

// TestUsageBound: beyond MaxKeys allow keys in an interval new allow keys
// are dropped and counted (metric and flush record), and so are deny keys
// beyond MaxKeys of their own; keys already held keep counting; the next
// interval takes new keys again.
func TestUsageBound(t *testing.T) {
	r := newRig(t, 2)
	r.log.Use(allow(t0, "ns/a", "", "h", 1))
	r.log.Use(Use{At: t0, Reason: authz.ReasonVaultDenied, Identity: "ns/d0"})
	for i := range 5 {
		r.log.Use(allow(t0, fmt.Sprintf("ns/x%d", i), "", "h", 1)) // the first held, 4 dropped
	}
	for i := range 3 {
		r.log.Use(Use{At: t0, Reason: authz.ReasonVaultDenied, Identity: fmt.Sprintf("ns/d%d", i+1)}) // the first held, 2 dropped
	}
	r.log.Use(allow(t0.Add(time.Second), "ns/a", "", "h", 1)) // held: counted
	if n := testutil.ToFloat64(r.log.metrics.dropped); n != 6 {
		t.Fatalf("credinject_audit_dropped_total = %v, want 6", n)
	}
	r.log.Flush()
	recs := r.out.records(t)
	u, d, f := ofKind(recs, KindUsage), ofKind(recs, KindDenied), ofKind(recs, KindFlush)
	if len(u) != 2 || u[0]["count"] != 2.0 || len(d) != 2 || len(f) != 1 || f[0]["dropped"] != 6.0 {
		t.Fatalf("usage %v denied %v flush %v", u, d, f)
	}
	r.log.Use(allow(t0, "ns/x1", "", "h", 1))
	r.log.Use(allow(t0, "ns/x2", "", "h", 1))
	r.log.Use(allow(t0, "ns/x3", "", "h", 1)) // dropped
	r.log.Flush()
	recs = r.out.records(t)
	f = ofKind(recs, KindFlush)
	if got := f[len(f)-1]; got["usage"] != 2.0 || got["dropped"] != 1.0 {
		t.Fatalf("second interval flush %v", got)
	}
}

// TestDenyFloodKeepsEveryAllow: in one interval, 10 times MaxKeys denies
// with distinct forged tokens, then 10 times MaxKeys denies of distinct
// refused identities, interleaved with allows of MaxKeys identities: every
// allow is in a usage record with its count, the forged tokens make one
// denied record per reason, and only the refused identities beyond MaxKeys
// deny keys are dropped.
func TestDenyFloodKeepsEveryAllow(t *testing.T) {
	const maxKeys = 100
	r := newRig(t, maxKeys)
	for i := range 10 * maxKeys {
		r.log.Use(Use{At: t0, Reason: authz.ReasonInvalidToken, TokenTag: uint32(i*2654435761) | 1})
		if i%10 == 0 {
			r.log.Use(allow(t0, fmt.Sprintf("ns/ok-%d", i/10), "", "h", 1))
		}
	}
	for i := range 10 * maxKeys {
		r.log.Use(Use{At: t0, Reason: authz.ReasonVaultDenied, Identity: fmt.Sprintf("ns/refused-%d", i)})
		if i%10 == 0 {
			r.log.Use(allow(t0, fmt.Sprintf("ns/ok-%d", i/10), "", "h", 1))
		}
	}
	r.log.Flush()
	recs := r.out.records(t)
	u := ofKind(recs, KindUsage)
	if len(u) != maxKeys {
		t.Fatalf("%d usage records, want one for each of the %d identities allowed", len(u), maxKeys)
	}
	for _, rec := range u {
		if rec["count"] != 2.0 {
			t.Fatalf("usage %v: want count 2", rec)
		}
	}
	forged, refused := 0.0, 0
	for _, d := range ofKind(recs, KindDenied) {
		switch d["reason"] {
		case string(authz.ReasonInvalidToken):
			if d["identity"] != nil {
				t.Fatalf("a forged token's record names an identity: %v", d)
			}
			forged += d["count"].(float64)
		case string(authz.ReasonVaultDenied):
			refused++
		}
	}
	// The forged tokens' key may be held once per shard, never per token.
	if forged != 10*maxKeys {
		t.Fatalf("forged-token denies counted %v, want %d", forged, 10*maxKeys)
	}
	if n := len(ofKind(recs, KindDenied)) - refused; n != 1 {
		t.Fatalf("%d denied records for the forged tokens, want 1 (per reason)", n)
	}
	if refused > maxKeys {
		t.Fatalf("%d refused identities held, want at most %d", refused, maxKeys)
	}
	f := ofKind(recs, KindFlush)[0]
	if want := float64(10*maxKeys - refused); f["dropped"] != want {
		t.Fatalf("flush %v: want dropped %v (the refused identities not held only)", f, want)
	}
}

// TestUseDoesNotAllocate: a decision whose key the interval already holds
// costs no allocation, in this interval and the next (the maps are reused).
func TestUseDoesNotAllocate(t *testing.T) {
	r := newRig(t, 100)
	u := allow(t0, "ns/a", "", "api.openai.com", 3)
	d := Use{At: t0, Reason: authz.ReasonInvalidToken, TokenTag: 42}
	r.log.Use(u)
	r.log.Use(d)
	if n := testing.AllocsPerRun(1000, func() { r.log.Use(u); r.log.Use(d) }); n != 0 {
		t.Errorf("Use of held keys: %v allocs, want 0", n)
	}
	r.log.Flush()
	if n := testing.AllocsPerRun(1000, func() { r.log.Use(u); r.log.Use(d) }); n != 0 {
		t.Errorf("Use after a flush: %v allocs, want 0", n)
	}
}

// TestRunFlushesOnTickAndShutdown: Run writes an interval's records when
// the clock's ticker fires, and Close the rest at shutdown.
func TestRunFlushesOnTickAndShutdown(t *testing.T) {
	r := newRig(t, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.log.Run(ctx); close(done) }()
	r.log.Use(allow(t0, "ns/a", "", "h", 1))
	poll(t, "the ticker", r.clock.HasWaiters)
	r.clock.Step(time.Minute)
	poll(t, "the tick's flush", func() bool { return len(ofKind(r.out.records(t), KindFlush)) == 1 })
	if u := ofKind(r.out.records(t), KindUsage); len(u) != 1 {
		t.Fatalf("usage after the tick: %v", u)
	}
	r.log.Use(allow(t0.Add(time.Minute), "ns/b", "", "h", 1))
	cancel()
	<-done
	if u := ofKind(r.out.records(t), KindUsage); len(u) != 1 {
		t.Fatalf("Run flushed when it stopped: %v", u)
	}
	r.log.Close()
	recs := r.out.records(t)
	if u, f := ofKind(recs, KindUsage), ofKind(recs, KindFlush); len(u) != 2 || u[1]["identity"] != "ns/b" || len(f) != 2 {
		t.Fatalf("after shutdown: usage %v flush %v", u, f)
	}
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, 10*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("timed out waiting for %s: %v", what, err)
	}
}

// TestLifecycleRecord: a lifecycle event is one line, stamped with the
// clock, with the fields its kind has and no others.
func TestLifecycleRecord(t *testing.T) {
	r := newRig(t, 10)
	r.log.Lifecycle(Event{Kind: KindRotated, Identity: "ns/a", Route: "", Source: "kv", Path: "secret/data/egress/ns/a",
		Version: 4, OldVersion: 3, Trigger: "event"})
	r.log.Lifecycle(Event{Kind: KindForgotten, Identity: "ns/a", Cause: "serviceaccount_deleted"})
	r.out.mu.Lock()
	lines := r.out.b.String()
	r.out.mu.Unlock()
	want := `{"time":"2026-11-29T12:00:00Z","log":"audit","record":"rotated","identity":"ns/a","route":"","source":"kv","path":"secret/data/egress/ns/a","version":4,"oldVersion":3,"trigger":"event"}
{"time":"2026-11-29T12:00:00Z","log":"audit","record":"forgotten","identity":"ns/a","route":"","cause":"serviceaccount_deleted"}
`
	if lines != want {
		t.Errorf("got\n%s\nwant\n%s", lines, want)
	}
	if n := testutil.ToFloat64(r.log.metrics.records[KindRotated]); n != 1 {
		t.Errorf("records_total{record=rotated} = %v", n)
	}
}

// failing fails every write.
type failing struct{ n int }

func (f *failing) Write([]byte) (int, error) { f.n++; return 0, errors.New("disk full") }

// TestWriteErrorCounted: a record that cannot be written is counted, and the
// next one is tried again.
func TestWriteErrorCounted(t *testing.T) {
	out := &failing{}
	l, err := New(Config{Output: out, Interval: time.Minute, MaxKeys: 1, Clock: clocktesting.NewFakeClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	l.Lifecycle(Event{Kind: KindFetched, Identity: "ns/a"})
	l.Lifecycle(Event{Kind: KindFetched, Identity: "ns/b"})
	if n := testutil.ToFloat64(l.metrics.writeErrors); n != 2 || out.n != 2 {
		t.Fatalf("write errors %v, writes %d; want 2, 2", n, out.n)
	}
	if n := testutil.ToFloat64(l.metrics.records[KindFetched]); n != 0 {
		t.Fatalf("records_total counts %v unwritten records", n)
	}
}

// TestOpen: stdout, off, and a file created private and appended to.
func TestOpen(t *testing.T) {
	if w, _, err := Open("stdout"); err != nil || w != os.Stdout {
		t.Fatalf("stdout: %v %v", w, err)
	}
	if w, _, err := Open("off"); err != nil || w != nil {
		t.Fatalf("off: %v %v", w, err)
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for _, line := range []string{"a\n", "b\n"} {
		w, closeFn, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		if err := closeFn(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "a\nb\n" {
		t.Fatalf("file %q, %v", b, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if _, _, err := Open(filepath.Join(t.TempDir(), "no", "such", "dir", "a")); err == nil {
		t.Fatal("a file in a missing folder opened")
	}
}

// BenchmarkUse is the hot path's cost of auditing a decision whose key is
// held, from one goroutine per core across 1,000 identities.
func BenchmarkUse(b *testing.B) {
	l, err := New(Config{Output: &buffer{}, Interval: time.Minute, MaxKeys: 10_000, Clock: clocktesting.NewFakeClock(t0)})
	if err != nil {
		b.Fatal(err)
	}
	uses := make([]Use, 1000)
	for i := range uses {
		uses[i] = allow(t0, fmt.Sprintf("ns-%d/sa", i), "", "api.openai.com", 1)
		l.Use(uses[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Use(uses[i%len(uses)])
			i += 7
		}
	})
}

// TestLongHostsDoNotPinRequests: a host is kept to maxHostLen bytes of its
// own, not as a slice of the request's (up to a megabyte through net/http,
// 60 KiB through Envoy) string: audit.maxKeys keys of huge hosts, all
// allowed on the default route, must cost about maxKeys × maxHostLen.
func TestLongHostsDoNotPinRequests(t *testing.T) {
	const n, size = 200, 256 << 10
	r := newRig(t, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		host := fmt.Sprintf("%08d.", i) + strings.Repeat("a", size)
		r.log.Use(allow(t0, "ns/a", "", host, 1))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if held := int64(after.HeapAlloc) - int64(before.HeapAlloc); held > 8<<20 {
		t.Fatalf("%d keys of %d-byte hosts hold %d MiB of heap; want about %d KiB", n, size, held>>20, n*maxHostLen>>10)
	}
	r.log.Flush()
	u := ofKind(r.out.records(t), KindUsage)
	if len(u) != n {
		t.Fatalf("%d usage records, want %d", len(u), n)
	}
	for _, rec := range u {
		if h, _ := rec["host"].(string); len(h) != maxHostLen {
			t.Fatalf("host of %d bytes recorded, want %d", len(h), maxHostLen)
		}
	}
}

// TestUsageByIdentitySource: one identity's decisions from its token and
// from its mesh peer are kept apart, each record naming its source.
func TestUsageByIdentitySource(t *testing.T) {
	r := newRig(t, 100)
	for _, src := range []string{"token", "peer", "peer"} {
		u := allow(t0, "ns/a", "", "api.openai.com", 1)
		u.IdentitySource = src
		r.log.Use(u)
	}
	r.log.Use(Use{At: t0, Reason: authz.ReasonInvalidPeer, IdentitySource: "peer", TokenTag: 0x11})
	r.clock.Step(time.Minute)
	r.log.Flush()
	recs := r.out.records(t)
	var got []string
	for _, u := range ofKind(recs, KindUsage) {
		got = append(got, fmt.Sprintf("%v|%v|%v", u["identity"], u["identity_source"], u["count"]))
	}
	if want := []string{"ns/a|peer|2", "ns/a|token|1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("usage records %v, want %v", got, want)
	}
	if d := ofKind(recs, KindDenied); len(d) != 1 || d[0]["reason"] != "invalid_peer" || d[0]["identity_source"] != "peer" {
		t.Errorf("denied records %v", d)
	}
}
