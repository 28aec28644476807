package watcher

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/wait"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// fakeVault models the part of Vault the watcher uses: logins with
// service-account tokens ("jwt:<namespace>/<serviceaccount>:<n>") for bound
// identities, tokens with a TTL, renewal, KV v2 reads of an identity's own
// path only, revocation, and an outage switch.
type fakeVault struct {
	clock *clocktesting.FakeClock
	ttl   time.Duration
	// maxTTL caps a token's renewals, counted from its login (0: none);
	// notRenewable makes logins grant tokens that cannot be renewed.
	maxTTL       time.Duration
	notRenewable bool

	mu       sync.Mutex
	down     bool
	bound    map[string]bool           // identity key -> may log in
	live     map[string]fakeToken      // Vault token -> its identity and expiry
	data     map[string]map[string]any // KV path (egress/ns/sa) -> fields
	version  map[string]int64
	n        int
	calls    map[string]int // by operation
	logins   []fakeLogin    // the logins Vault granted, in order
	readGate chan struct{}  // when set, every Read waits on it
	// stuck: identity keys whose reads hang until the caller gives up;
	// blocked counts the reads hanging now.
	stuck   map[string]bool
	blocked int

	// Leased secrets at creds/<namespace>/<serviceaccount>: a lease lives
	// leaseTTL, renewable up to leaseMax after it was read, and ends with
	// the token that read it.
	leaseTTL, leaseMax time.Duration
	leases             map[string]fakeLease
	// badTokens: identity tokens come back with a line break (not
	// injectable).
	badTokens bool
	// gone: service-account tokens Vault's TokenReview finds invalid (the
	// pod they are bound to was deleted); a login with one is refused.
	gone map[string]bool
}

// fakeLogin is a login Vault granted: whose, when, and with which
// service-account token.
type fakeLogin struct {
	identity string
	at       time.Time
	jwt      string
}

type fakeLease struct {
	token   string
	expires time.Time
	maxAt   time.Time
}

type fakeToken struct {
	identity string
	created  time.Time
	expires  time.Time
}

func newFakeVault(c *clocktesting.FakeClock) *fakeVault {
	return &fakeVault{clock: c, ttl: time.Hour, bound: map[string]bool{}, live: map[string]fakeToken{},
		data: map[string]map[string]any{}, version: map[string]int64{}, calls: map[string]int{}, stuck: map[string]bool{}, gone: map[string]bool{},
		leaseTTL: time.Minute, leaseMax: 5 * time.Minute, leases: map[string]fakeLease{}}
}

// liveTokens counts the Vault tokens Vault holds.
func (v *fakeVault) liveTokens() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.live)
}

// liveLeases counts the leases Vault holds.
func (v *fakeVault) liveLeases() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, l := range v.leases {
		if _, ok := v.token(l.token); ok && v.clock.Now().Before(l.expires) {
			n++
		}
	}
	return n
}

// minted answers the reads of leased secrets and identity tokens, as the
// token's own identity; ok is false for a KV path. Called with v.mu held.
func (v *fakeVault) minted(tok, path string) (s *vaultapi.Secret, ok bool, err error) {
	t, live := v.token(tok)
	now := v.clock.Now()
	switch {
	case strings.HasPrefix(path, "creds/"):
		if !live || path != "creds/"+t.identity {
			return nil, true, errForbidden
		}
		v.n++
		id := fmt.Sprintf("%s/l%d", path, v.n)
		v.leases[id] = fakeLease{token: tok, expires: now.Add(v.leaseTTL), maxAt: now.Add(v.leaseMax)}
		return &vaultapi.Secret{LeaseID: id, LeaseDuration: int(v.leaseTTL / time.Second), Renewable: true,
			Data: map[string]any{"username": fmt.Sprintf("u%d", v.n), "password": "p"}}, true, nil
	case strings.HasPrefix(path, "static/"):
		// A path without a lease (KV v1, a plugin's static secret).
		if !live || path != "static/"+t.identity {
			return nil, true, errForbidden
		}
		return &vaultapi.Secret{Data: map[string]any{"password": "static"}}, true, nil
	case strings.HasPrefix(path, "identity/oidc/token/"):
		if !live {
			return nil, true, errForbidden
		}
		v.n++
		tok := fmt.Sprintf("jwt.%s.%d", t.identity, v.n)
		if v.badTokens {
			tok += "\r\nx-injected: 1"
		}
		return &vaultapi.Secret{Data: map[string]any{"token": tok, "ttl": json.Number("60")}}, true, nil
	}
	return nil, false, nil
}

func (v *fakeVault) RenewLease(_ context.Context, tok, leaseID string, inc time.Duration) (time.Duration, error) {
	if err := v.enter("renew_lease"); err != nil {
		return 0, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	l, ok := v.leases[leaseID]
	if _, live := v.token(l.token); !ok || !live || l.token != tok || !v.clock.Now().Before(l.expires) {
		return 0, errForbidden
	}
	now := v.clock.Now()
	ttl := min(inc, l.maxAt.Sub(now))
	l.expires = now.Add(ttl)
	v.leases[leaseID] = l
	return ttl, nil
}

func (v *fakeVault) RevokeLease(_ context.Context, tok, leaseID string) error {
	if err := v.enter("revoke_lease"); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.leases, leaseID)
	return nil
}

func (v *fakeVault) put(key, apiKey string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.data["egress/"+key] = map[string]any{"api_key": apiKey}
	v.version["egress/"+key]++
}

func (v *fakeVault) bind(key string, ok bool) {
	v.mu.Lock()
	v.bound[key] = ok
	v.mu.Unlock()
}

// goneToken makes Vault refuse jwt from now on, as its TokenReview does once
// the pod the token is bound to is deleted.
func (v *fakeVault) goneToken(jwt string) {
	v.mu.Lock()
	v.gone[jwt] = true
	v.mu.Unlock()
}

func (v *fakeVault) setDown(down bool) {
	v.mu.Lock()
	v.down = down
	v.mu.Unlock()
}

// forgetTokens drops every live token, as a Vault restart with in-memory
// storage does.
func (v *fakeVault) forgetTokens() {
	v.mu.Lock()
	v.live = map[string]fakeToken{}
	v.mu.Unlock()
}

// granted is a copy of the logins Vault granted so far.
func (v *fakeVault) granted() []fakeLogin {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]fakeLogin(nil), v.logins...)
}

func (v *fakeVault) count(op string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.calls[op]
}

func (v *fakeVault) enter(op string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.calls[op]++
	if v.down {
		return authz.Deny(authz.ReasonVaultUnavailable, fmt.Errorf("%s: connection refused", op))
	}
	return nil
}

func (v *fakeVault) Login(_ context.Context, jwt string) (vaultLogin, error) {
	if err := v.enter("login"); err != nil {
		return vaultLogin{}, err
	}
	parts := strings.Split(jwt, ":")
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(parts) != 3 || parts[0] != "jwt" || !v.bound[parts[1]] || v.gone[jwt] {
		return vaultLogin{}, authz.Deny(authz.ReasonVaultDenied, fmt.Errorf("login refused: %w", errForbidden))
	}
	v.n++
	tok := fmt.Sprintf("hvs.%d", v.n)
	v.live[tok] = fakeToken{identity: parts[1], created: v.clock.Now(), expires: v.clock.Now().Add(v.ttl)}
	v.logins = append(v.logins, fakeLogin{identity: parts[1], at: v.clock.Now(), jwt: jwt})
	return vaultLogin{Token: tok, TTL: v.ttl, Renewable: !v.notRenewable}, nil
}

func (v *fakeVault) token(tok string) (fakeToken, bool) {
	t, ok := v.live[tok]
	if !ok || !v.clock.Now().Before(t.expires) {
		return fakeToken{}, false
	}
	return t, true
}

func (v *fakeVault) RenewSelf(_ context.Context, tok string) (time.Duration, error) {
	if err := v.enter("renew"); err != nil {
		return 0, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	t, ok := v.token(tok)
	if !ok || v.notRenewable {
		return 0, errForbidden
	}
	ttl := v.ttl
	if v.maxTTL > 0 {
		ttl = min(ttl, t.created.Add(v.maxTTL).Sub(v.clock.Now()))
	}
	t.expires = v.clock.Now().Add(ttl)
	v.live[tok] = t
	return ttl, nil
}

func (v *fakeVault) Read(ctx context.Context, tok, path string) (*vaultapi.Secret, error) {
	if err := v.enter("read"); err != nil {
		return nil, err
	}
	v.mu.Lock()
	gate := v.readGate
	if t, ok := v.token(tok); ok && v.stuck[t.identity] {
		v.blocked++
		v.mu.Unlock()
		<-ctx.Done()
		v.mu.Lock()
		v.blocked--
		v.mu.Unlock()
		return nil, authz.Deny(authz.ReasonVaultUnavailable, ctx.Err())
	}
	v.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, authz.Deny(authz.ReasonVaultUnavailable, ctx.Err())
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok, err := v.minted(tok, path); ok {
		return s, err
	}
	t, ok := v.token(tok)
	kv, _ := strings.CutPrefix(path, "secret/data/")
	if !ok || kv != "egress/"+t.identity {
		return nil, errForbidden
	}
	d := v.data[kv]
	if d == nil {
		return nil, errNotFound
	}
	return &vaultapi.Secret{Data: map[string]any{
		"data":     d,
		"metadata": map[string]any{"version": json.Number(fmt.Sprint(v.version[kv]))},
	}}, nil
}

func (v *fakeVault) RevokeSelf(_ context.Context, tok string) error {
	if err := v.enter("revoke"); err != nil {
		return err
	}
	v.mu.Lock()
	delete(v.live, tok)
	for id, l := range v.leases {
		if l.token == tok {
			delete(v.leases, id)
		}
	}
	v.mu.Unlock()
	return nil
}

// fakeMinter mints service-account tokens the fake Vault accepts.
type fakeMinter struct {
	clock *clocktesting.FakeClock
	mu    sync.Mutex
	n     int
}

func (m *fakeMinter) Token(_ context.Context, id authz.Identity) (string, time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	return fmt.Sprintf("jwt:%s:m%d", id.Key(), m.n), m.clock.Now().Add(time.Hour), nil
}

func (m *fakeMinter) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

// rig is a Watcher over the fake Vault, a real credential cache and a fake
// clock.
type rig struct {
	t      *testing.T
	clock  *clocktesting.FakeClock
	vault  *fakeVault
	minter *fakeMinter
	creds  *cache.Credentials
	w      *Watcher
	audit  *recAuditor
	reg    *prometheus.Registry // the watcher's metrics
}

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func newRig(t *testing.T, routes ...Route) *rig {
	t.Helper()
	return newRigWith(t, nil, routes...)
}

// newRigWith is newRig with the watcher's Config changed by configure.
func newRigWith(t *testing.T, configure func(*Config), routes ...Route) *rig {
	t.Helper()
	return newRigProviders(t, configure, nil, routes...)
}

// newRigProviders is newRigWith with the providers ps returns (given the
// rig, its fake Vault made) in place of the built-in ones of their sources.
func newRigProviders(t *testing.T, configure func(*Config), ps func(*rig) map[Source]Provider, routes ...Route) *rig {
	t.Helper()
	if len(routes) == 0 {
		routes = []Route{{Name: "", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}"}}
	}
	c := clocktesting.NewFakeClock(t0)
	r := &rig{t: t, clock: c, vault: newFakeVault(c), minter: &fakeMinter{clock: c}, audit: &recAuditor{}, reg: prometheus.NewRegistry()}
	var err error
	if r.creds, err = cache.NewCredentials(cache.CredentialsConfig{Capacity: 1024, DeniedCapacity: 1 << 10}); err != nil {
		t.Fatal(err)
	}
	m, err := newMetrics(r.reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Routes: routes, Refresh: 5 * time.Minute, StaleGrace: 15 * time.Minute, DeniedTTL: 10 * time.Second,
		KVMount: "secret", Concurrency: 4, Store: r.creds, Minter: r.minter, Clock: c, Jitter: func() float64 { return 0 },
		ReloginPhase: func() float64 { return 0 }, // the relogin at the full interval, the bound's extreme
		Auditor:      r.audit,
	}
	if configure != nil {
		configure(&cfg)
	}
	var override map[Source]Provider
	if ps != nil {
		override = ps(r)
	}
	r.w, err = newWatcher(cfg, r.vault, override, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.w.Close(); r.creds.Close() })
	return r
}

// identity binds ns/sa in the fake Vault with apiKey and returns it with a
// presented token.
func (r *rig) identity(ns, sa, apiKey string) (authz.Identity, string) {
	id := authz.NewIdentity(ns, sa)
	r.vault.bind(id.Key(), true)
	if apiKey != "" {
		r.vault.put(id.Key(), apiKey)
	}
	return id, "jwt:" + id.Key() + ":presented"
}

func (r *rig) miss(route string, id authz.Identity, token string) (*cache.Entry, error) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.w.Credential(ctx, route, id, token, r.clock.Now().Add(time.Hour))
}

// entry is the cached entry of (route, id), or nil.
func (r *rig) entry(route string, id authz.Identity) *cache.Entry {
	e, ok := r.creds.Get(route, id.Key())
	if !ok {
		return nil
	}
	return e
}

// eventually polls cond until it holds or 10 s pass.
func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, 10*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		r.t.Fatalf("timed out waiting for %s: %v", what, err)
	}
}

// step moves the fake clock once the refresher goroutines wait on it.
func (r *rig) step(d time.Duration) {
	r.t.Helper()
	r.eventually("a refresher waiting on the clock", r.clock.HasWaiters)
	r.clock.Step(d)
}
