package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/poll"
)

// The steady-state cost of credinject on Vault and the API server: with
// nothing happening (no requests, no rotations), how many logins, token
// renewals, KV reads and revocations Vault receives, and how many
// TokenReviews (one per Vault login: Vault's Kubernetes auth asks the API
// server) and TokenRequests (one per login of a prefetched identity) the API
// server receives, per identity per hour per replica, counted by Vault's own
// audit device and the API server's own apiserver_request_total.
//
// Time is scaled: every duration credinject and Vault use is divided by
// scale (the role's token TTL 1h, prefetch.refresh 5m,
// prefetch.refreshWithEvents 1h, prefetch.staleGrace 15m; the relogin
// interval is the default, the token's TTL), and so "an hour" is
// 1h/scale of wall clock. Only the TokenRequest's TTL is not scaled (the API
// server's minimum is 10 min); it does not drive any schedule.

// costParams sizes one measurement.
type costParams struct {
	identities int
	namespaces int
	scale      int     // 1h becomes 1h/scale
	warmup     float64 // scaled hours after ready, not counted
	hours      float64 // scaled hours counted
	events     bool    // NATS rotation events connected
}

// costResult is per identity per (scaled) hour.
type costResult struct {
	logins, renewals, reads, revokes float64 // Vault, from its audit log
	tokenReviews, tokenRequests      float64 // API server, from its metrics
	// loginPeak is how flat the logins are: the most logins in one twelfth
	// of a scaled hour (5 scaled minutes) of the window over the mean per
	// twelfth (1: flat; 12: an hour's logins at once).
	loginPeak float64
}

func (r costResult) String() string {
	return fmt.Sprintf("per identity per hour: logins %.2f, renewals %.2f, reads %.2f, revokes %.2f; TokenReviews %.2f, TokenRequests %.2f; login peak/mean per 5 min %.2f",
		r.logins, r.renewals, r.reads, r.revokes, r.tokenReviews, r.tokenRequests, r.loginPeak)
}

// costBed is the identities, the Vault role and the audit device shared by
// the measurements of one test or benchmark.
type costBed struct {
	env   *testenv.Env
	role  string
	nss   []string
	n     int
	audit string
}

var auditOnce sync.Mutex

// newCostBed creates n ServiceAccounts with a credential each in p.namespaces
// namespaces, a Vault role binding them with a token TTL of 1h/scale, and a
// file audit device (removed at the end).
func newCostBed(tb testing.TB, p costParams) *costBed {
	tb.Helper()
	env := testenv.Get(tb)
	ctx := context.Background()
	c := &costBed{env: env, role: testenv.UniqueName("cost"), n: p.identities}
	for i := range p.namespaces {
		ns := testenv.UniqueName(fmt.Sprintf("cost%d", i))
		if err := env.Kube.CreateNamespace(ctx, ns); err != nil {
			tb.Fatal(err)
		}
		c.nss = append(c.nss, ns)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range p.identities {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ns, sa := c.nss[i%len(c.nss)], fmt.Sprintf("sa-%d", i)
			if _, err := env.Kube.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
				tb.Error(err)
			}
			if _, err := env.Vault.PutCredential(ctx, "egress/"+ns+"/"+sa, map[string]any{"api_key": "sk-" + sa}); err != nil {
				tb.Error(err)
			}
		}()
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
	ttl := time.Hour / time.Duration(p.scale)
	if _, err := env.Vault.Client.Logical().WriteWithContext(ctx, "auth/"+testenv.VaultKubeMount+"/role/"+c.role, map[string]any{
		"bound_service_account_names":      "*",
		"bound_service_account_namespaces": strings.Join(c.nss, ","),
		"token_policies":                   testenv.VaultPolicy,
		"ttl":                              int(ttl / time.Second),
	}); err != nil {
		tb.Fatal(err)
	}
	auditOnce.Lock()
	c.audit = filepath.Join(env.Dir, c.role+"-audit.log")
	if err := env.Vault.Client.Sys().EnableAuditWithOptionsWithContext(ctx, c.role, &vaultapi.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": c.audit},
	}); err != nil {
		auditOnce.Unlock()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		defer auditOnce.Unlock()
		if err := env.Vault.Client.Sys().DisableAuditWithContext(context.Background(), c.role); err != nil {
			tb.Errorf("disable audit: %v", err)
		}
		_ = os.Remove(c.audit)
	})
	return c
}

// measure runs one credinject (one replica) at the scaled defaults with
// events on or off, and counts what it costs over p.hours scaled hours.
func (c *costBed) measure(tb testing.TB, p costParams) costResult {
	tb.Helper()
	ctx := context.Background()
	hour := time.Hour / time.Duration(p.scale)
	cfg := apptest.Config(c.env)
	cfg.Vault.Role = c.role
	cfg.Prefetch.Namespaces = c.nss
	cfg.Prefetch.Refresh = 5 * time.Minute / time.Duration(p.scale)
	cfg.Prefetch.RefreshWithEvents = time.Hour / time.Duration(p.scale)
	cfg.Prefetch.StaleGrace = 15 * time.Minute / time.Duration(p.scale)
	if !p.events {
		cfg.Events.NatsURL = ""
	}
	srv := apptest.Start(tb, c.env, cfg) // returns when the first prefetch pass is done
	if got := srv.Counter(tb, "credinject_cache_entries", nil); int(got) < c.n {
		tb.Fatalf("ready with %v entries, want %d", got, c.n)
	}
	if p.events {
		waitUntilTB(tb, 30*time.Second, "events connected", func() bool {
			return srv.Counter(tb, "credinject_events_connected", nil) == 1
		})
	}
	pause(hours(hour, p.warmup))
	// The window runs from the first count's start to the second's: the
	// time the first count takes is not added to it (with logins spread
	// over the hour, an identity logging in just after the first count
	// would be counted twice).
	from := time.Now()
	start := c.count(tb, ctx)
	window := hours(hour, p.hours)
	pause(time.Until(from.Add(window)))
	end := c.count(tb, ctx)
	per := float64(c.n) * p.hours
	return costResult{
		loginPeak:     c.loginPeak(tb, from, from.Add(window), hour/12),
		logins:        (end.logins - start.logins) / per,
		renewals:      (end.renewals - start.renewals) / per,
		reads:         (end.reads - start.reads) / per,
		revokes:       (end.revokes - start.revokes) / per,
		tokenReviews:  (end.tokenReviews - start.tokenReviews) / per,
		tokenRequests: (end.tokenRequests - start.tokenRequests) / per,
	}
}

// loginPeak reads the logins in [from, to) from Vault's audit log and
// returns the most in one bucket of width over the mean per bucket.
func (c *costBed) loginPeak(tb testing.TB, from, to time.Time, width time.Duration) float64 {
	tb.Helper()
	n := int(to.Sub(from) / width)
	if n == 0 {
		return 0
	}
	b := make([]int, n)
	total := 0
	c.responses(tb, func(e *auditResponse) {
		if e.Request.Path != "auth/"+testenv.VaultKubeMount+"/login" {
			return
		}
		if i := int(e.Time.Sub(from) / width); !e.Time.Before(from) && i < n {
			b[i]++
			total++
		}
	})
	if total == 0 {
		return 0
	}
	return float64(slices.Max(b)) / (float64(total) / float64(n))
}

// auditResponse is what the cost bench reads of a Vault audit log entry.
type auditResponse struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Request struct {
		Path      string `json:"path"`
		Operation string `json:"operation"`
	} `json:"request"`
}

// responses calls f with every response entry of Vault's audit log so far.
func (c *costBed) responses(tb testing.TB, f func(*auditResponse)) {
	tb.Helper()
	file, err := os.Open(c.audit)
	if err != nil {
		tb.Fatal(err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e auditResponse
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Type != "response" {
			continue
		}
		f(&e)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
}

func hours(hour time.Duration, h float64) time.Duration {
	return time.Duration(float64(hour) * h)
}

// pause lets d of wall clock pass: the measurement window itself, not a
// wait for a condition.
func pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	<-t.C
}

// waitUntilTB polls cond until it holds or timeout passes (poll.True).
func waitUntilTB(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	poll.True(tb, timeout, what, cond)
}

// count reads the totals so far: Vault's audit log (responses, by path) and
// the API server's apiserver_request_total.
func (c *costBed) count(tb testing.TB, ctx context.Context) costResult {
	tb.Helper()
	var r costResult
	c.responses(tb, func(e *auditResponse) {
		switch path := e.Request.Path; {
		case path == "auth/"+testenv.VaultKubeMount+"/login":
			r.logins++
		case path == "auth/token/renew-self":
			r.renewals++
		case path == "auth/token/revoke-self":
			r.revokes++
		case strings.HasPrefix(path, testenv.VaultKVMount+"/data/egress/") && e.Request.Operation == "read":
			r.reads++
		}
	})
	var err error
	if r.tokenReviews, err = c.env.Kube.RequestCountOf(ctx, "tokenreviews", ""); err != nil {
		tb.Fatal(err)
	}
	if r.tokenRequests, err = c.env.Kube.RequestCountOf(ctx, "serviceaccounts", "token"); err != nil {
		tb.Fatal(err)
	}
	return r
}

func envInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: a positive integer", name, v)
	}
	return n
}

// BenchmarkSteadyStateCost measures the cost of 1,000 prefetched identities
// (CREDINJECT_COST_IDENTITIES) on Vault and the API server at the defaults,
// scaled in time by CREDINJECT_COST_SCALE (60: an hour is a minute), over
// CREDINJECT_COST_HOURS scaled hours (2) after a quarter of an hour, with
// events on and off. It reports per identity per hour per replica; run it
// with `make bench-cost`.
func BenchmarkSteadyStateCost(b *testing.B) {
	p := costParams{
		identities: envInt(b, "CREDINJECT_COST_IDENTITIES", 1000), namespaces: 4,
		scale: envInt(b, "CREDINJECT_COST_SCALE", 60), warmup: 0.25,
		hours: float64(envInt(b, "CREDINJECT_COST_HOURS", 2)),
	}
	bed := newCostBed(b, p)
	for _, events := range []bool{true, false} {
		p.events = events
		b.Run(fmt.Sprintf("events=%v", events), func(b *testing.B) {
			r := bed.measure(b, p)
			b.Logf("%d identities, scale %d, events %v: %v", p.identities, p.scale, events, r)
			b.ReportMetric(r.logins, "logins/id/h")
			b.ReportMetric(r.renewals, "renewals/id/h")
			b.ReportMetric(r.reads, "reads/id/h")
			b.ReportMetric(r.revokes, "revokes/id/h")
			b.ReportMetric(r.tokenReviews, "tokenreviews/id/h")
			b.ReportMetric(r.tokenRequests, "tokenrequests/id/h")
			b.ReportMetric(r.loginPeak, "login-peak/mean")
		})
	}
}

// TestSteadyStateCostShort is the benchmark's short form, in make test: 40
// identities, an hour scaled to 30 s, events on. With nothing happening, a
// replica logs in about once per identity per hour (the relogin interval,
// the token's TTL) and renews in between: far from one login per refresh
// (18 an hour at the 5 min default, before renewal replaced them).
func TestSteadyStateCostShort(t *testing.T) {
	p := costParams{identities: 40, namespaces: 2, scale: 120, warmup: 0.25, hours: 1, events: true}
	bed := newCostBed(t, p)
	r := bed.measure(t, p)
	t.Logf("%v", r)
	// Counts, not timings: a slow machine makes fewer calls, never more.
	if r.logins > 2 || r.tokenReviews > 2 || r.tokenRequests > 2 {
		t.Errorf("logins %.2f, TokenReviews %.2f, TokenRequests %.2f per identity per hour; want at most 2 (about 1)", r.logins, r.tokenReviews, r.tokenRequests)
	}
	if r.renewals == 0 || r.reads == 0 {
		t.Errorf("renewals %.2f, reads %.2f: the schedule did not run", r.renewals, r.reads)
	}
}
