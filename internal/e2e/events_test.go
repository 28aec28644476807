package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/nats-io/nats.go"

	"github.com/credinject/credinject/auditbridge"
	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/testenv"
)

// boundIdentity makes ns/sa with key in Vault and returns its token.
func boundIdentity(ctx context.Context, t testing.TB, env *testenv.Env, prefix, key string) (ns, sa, tok string) {
	t.Helper()
	ns, sa, tok, err := env.Kube.Identity(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Vault.BindNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": key}); err != nil {
		t.Fatal(err)
	}
	return ns, sa, tok
}

// eventReplica starts a credinject whose refresh interval is an hour, so only
// an event can explain a change, checks that tok gets key, and waits for its
// NATS subscription.
func eventReplica(tb testing.TB, env *testenv.Env, tok, key string) *apptest.Running {
	tb.Helper()
	return eventReplicaWith(tb, env, tok, key, nil)
}

// eventReplicaWith is eventReplica with the configuration changed by adjust.
func eventReplicaWith(tb testing.TB, env *testenv.Env, tok, key string, adjust func(*config.Config)) *apptest.Running {
	tb.Helper()
	cfg := apptest.Config(env)
	cfg.Prefetch.Refresh = time.Hour
	if adjust != nil {
		adjust(&cfg)
	}
	r := apptest.Start(tb, env, cfg)
	if got := r.Check(tb, tok, "api.openai.com"); got != "allow authorization=Bearer "+key {
		tb.Fatalf("before: %q", got)
	}
	apptest.Eventually(tb, 10*time.Second, "NATS subscription", func() bool {
		return r.Counter(tb, "credinject_events_connected", nil) == 1
	})
	return r
}

func publisher(t testing.TB, env *testenv.Env) *events.Publisher {
	t.Helper()
	nc, err := nats.Connect(env.NATS.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return events.NewPublisher(nc, "credinject.rotated", "e2e-test")
}

// TestRotationReachesEveryReplica: `credinject rotate` writes Vault and
// publishes; two credinject instances serve the new key on the next Check,
// long before any refresh interval.
func TestRotationReachesEveryReplica(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns, sa, tok := boundIdentity(ctx, t, env, "rot", "sk-v1")
	r1 := eventReplica(t, env, tok, "sk-v1")
	r2 := eventReplica(t, env, tok, "sk-v1")
	cmd := exec.Command(credinjectBinary(t), "rotate", "--vault-addr", env.Vault.Addr, "--nats-url", env.NATS.URL, ns+"/"+sa, "api_key=sk-v2")
	cmd.Env = append(cmd.Environ(), "VAULT_TOKEN="+env.Vault.RootToken)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("credinject rotate: %v\n%s", err, out)
	}
	for i, r := range []*apptest.Running{r1, r2} {
		apptest.Eventually(t, 5*time.Second, fmt.Sprintf("replica %d to serve the new key", i+1), func() bool {
			return r.Check(t, tok, "api.openai.com") == "allow authorization=Bearer sk-v2"
		})
	}

	t.Run("malformed events are dropped and counted", func(t *testing.T) {
		nc, err := nats.Connect(env.NATS.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		before := r1.Counter(t, "credinject_events_dropped_total", nil)
		for _, bad := range []string{"not json", `{"specversion":"0.3"}`, `{"specversion":"1.0","type":"x"}`} {
			if err := nc.Publish("credinject.rotated", []byte(bad)); err != nil {
				t.Fatal(err)
			}
		}
		apptest.Eventually(t, 5*time.Second, "3 drops counted", func() bool {
			return r1.Counter(t, "credinject_events_dropped_total", nil) >= before+3
		})
		// The subscriber keeps working.
		if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-v3"}); err != nil {
			t.Fatal(err)
		}
		if err := publisher(t, env).Publish(ctx, events.Rotation{Namespace: ns, ServiceAccount: sa}); err != nil {
			t.Fatal(err)
		}
		apptest.Eventually(t, 5*time.Second, "sk-v3 after malformed events", func() bool {
			return r1.Check(t, tok, "api.openai.com") == "allow authorization=Bearer sk-v3"
		})
	})
}

// TestNATSOutageResync: the drop itself re-reads everything once; while
// NATS is down a rotation event is lost; on reconnect credinject re-reads
// everything it holds, so the new key is served without waiting for the
// (long) refresh interval.
func TestNATSOutageResync(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns, sa, tok := boundIdentity(ctx, t, env, "nats-out", "sk-before")
	r := eventReplica(t, env, tok, "sk-before")
	resyncs := func(trigger string) float64 {
		return r.Counter(t, "credinject_events_resyncs_total", map[string]string{"trigger": trigger})
	}
	reread := func() float64 {
		return r.Counter(t, "credinject_watcher_refreshes_total", map[string]string{"trigger": "event"})
	}
	before := reread()

	env.NATS.Stop()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = env.NATS.Start()
		}
	})
	apptest.Eventually(t, 10*time.Second, "disconnect seen", func() bool { return r.Counter(t, "credinject_events_connected", nil) == 0 })
	if !r.App.Ready() {
		t.Fatal("NATS down must not make credinject unready")
	}
	// The drop's re-read (of the old key) is done before the rotation below.
	apptest.Eventually(t, 10*time.Second, "the drop's re-read", func() bool { return reread() > before })
	if got := resyncs(events.TriggerDisconnect); got != 1 {
		t.Fatalf("resyncs{trigger=disconnect} = %v after one drop, want 1", got)
	}
	// Rotated while NATS is down: the event is lost.
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-during-outage"}); err != nil {
		t.Fatal(err)
	}
	if got := r.Check(t, tok, "h"); got != "allow authorization=Bearer sk-before" {
		t.Fatalf("kept serving during the outage: %q", got)
	}
	if err := env.NATS.Start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	apptest.Eventually(t, 20*time.Second, "resync after reconnect", func() bool {
		return r.Check(t, tok, "h") == "allow authorization=Bearer sk-during-outage"
	})
	if got, drops := resyncs(events.TriggerReconnect), resyncs(events.TriggerDisconnect); got != 1 || drops != 1 {
		t.Fatalf("resyncs{trigger=reconnect} = %v, {trigger=disconnect} = %v; want 1, 1", got, drops)
	}
}

// BenchmarkRotationPropagation: from the event's publish to the first Check
// that returns the new key, over many rotations; reports p50 and p99. The
// rotations follow each other at once, so events.minInterval is made tiny:
// this measures one event's path, not the coalescing of a burst
// (TestEventFloodIsBounded).
func BenchmarkRotationPropagation(b *testing.B) {
	env := testenv.Get(b)
	ctx := context.Background()
	ns, sa, tok := boundIdentity(ctx, b, env, "prop", "sk-0")
	r := eventReplicaWith(b, env, tok, "sk-0", func(c *config.Config) { c.Events.MinInterval = time.Millisecond })
	pub := publisher(b, env)
	n := max(b.N, 200)
	lat := make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := 1; i <= n; i++ {
		key := fmt.Sprintf("sk-%d", i)
		if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": key}); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := pub.Publish(ctx, events.Rotation{Namespace: ns, ServiceAccount: sa}); err != nil {
			b.Fatal(err)
		}
		want := "allow authorization=Bearer " + key
		for r.Check(b, tok, "h") != want {
			if time.Since(t0) > 10*time.Second {
				b.Fatalf("rotation %d never arrived", i)
			}
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(len(lat)), "rotations")
}

// TestPlainVaultWritePropagates: with the audit bridge between Vault's
// socket audit device and NATS, a plain KV write (as `vault kv put` makes)
// reaches credinject with no extra step.
func TestPlainVaultWritePropagates(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	br, err := auditbridge.New(auditbridge.Config{Listener: ln, NATSURL: env.NATS.URL})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- br.Run(ctx) }()
	apptest.Eventually(t, 10*time.Second, "bridge connected to NATS", br.Connected)
	const device = "e2e-bridge"
	if err := env.Vault.Client.Sys().EnableAuditWithOptions(device, &vaultapi.EnableAuditOptions{
		Type: "socket", Options: map[string]string{"address": ln.Addr().String(), "socket_type": "tcp", "format": "json"},
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Vault refuses requests it cannot audit: remove the device first.
		if err := env.Vault.Client.Sys().DisableAudit(device); err != nil {
			t.Error(err)
		}
		cancel()
		<-done
	}()

	ns, sa, tok := boundIdentity(ctx, t, env, "bridge", "sk-plain-1")
	r := eventReplica(t, env, tok, "sk-plain-1")
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-plain-2"}); err != nil {
		t.Fatal(err)
	}
	apptest.Eventually(t, 10*time.Second, "the plain write to reach credinject", func() bool {
		return r.Check(t, tok, "h") == "allow authorization=Bearer sk-plain-2"
	})
}

// TestRefreshFollowsEventsConnection: while events are connected the
// schedule is prefetch.refreshWithEvents (an hour: a change without an event
// is not seen); when NATS goes away every identity is re-read at once, then
// every 2/3 of prefetch.refresh (seconds here) until it is back.
func TestRefreshFollowsEventsConnection(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	ns, sa, tok := boundIdentity(ctx, t, env, "evsched", "sk-1")
	cfg := apptest.Config(env)
	cfg.Prefetch.Refresh = 3 * time.Second
	cfg.Prefetch.RefreshWithEvents = time.Hour
	// The identity's first relogin at the full token TTL (an hour), not at
	// a random point of it: a relogin is a full refresh (TriggerSchedule)
	// that would see the change without an event, about once in 600 runs.
	r := apptest.StartWith(t, env, cfg, func(o *app.Options) { o.ReloginPhase = func() float64 { return 0 } })
	apptest.Eventually(t, 10*time.Second, "NATS subscription", func() bool {
		return r.Counter(t, "credinject_events_connected", nil) == 1
	})
	// Read once the subscription is up: scheduled by refreshWithEvents.
	if got := r.Check(t, tok, "h"); got != "allow authorization=Bearer sk-1" {
		t.Fatalf("before: %q", got)
	}
	put := func(key string) {
		if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": key}); err != nil {
			t.Fatal(err)
		}
	}
	put("sk-2") // no event
	scheduled := func() float64 {
		return r.Counter(t, "credinject_watcher_refreshes_total", map[string]string{"trigger": "schedule"})
	}
	before := scheduled()
	// Longer than prefetch.refresh: nothing scheduled, the old key served.
	pause(2 * cfg.Prefetch.Refresh)
	if got, n := r.Check(t, tok, "h"), scheduled(); got != "allow authorization=Bearer sk-1" || n != before {
		t.Fatalf("events connected, after %v: %q, %v scheduled refreshes (want sk-1, none)", 2*cfg.Prefetch.Refresh, got, n-before)
	}

	env.NATS.Stop()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = env.NATS.Start()
		}
	})
	apptest.Eventually(t, 10*time.Second, "the drop's re-read", func() bool {
		return r.Check(t, tok, "h") == "allow authorization=Bearer sk-2"
	})
	if got := r.Counter(t, "credinject_events_resyncs_total", map[string]string{"trigger": events.TriggerDisconnect}); got != 1 {
		t.Fatalf("resyncs{trigger=disconnect} = %v after one drop, want 1", got)
	}
	put("sk-3") // no event can come
	apptest.Eventually(t, 10*time.Second, "the short schedule while NATS is down", func() bool {
		return r.Check(t, tok, "h") == "allow authorization=Bearer sk-3"
	})
	if err := env.NATS.Start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
}
