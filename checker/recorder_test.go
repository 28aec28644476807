package checker_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/checker"
)

// TestRecorderToldOfEveryDecision: the Recorder hears of each decision once,
// allow or deny, with the identity, route, host, the served credential's
// version and a token tag, and never the token.
func TestRecorderToldOfEveryDecision(t *testing.T) {
	var (
		mu   sync.Mutex
		uses []checker.Use
	)
	r := newRigWith(t, []checker.Route{{Name: "anthropic", Hosts: []string{"api.anthropic.com"}}}, false,
		checker.RecorderFunc(func(u checker.Use) { mu.Lock(); uses = append(uses, u); mu.Unlock() }))
	now := r.clock.Now()
	if err := r.creds.Set(&cache.Entry{Route: "anthropic", Identity: authz.NewIdentity("team-a", "app"), Header: "x-api-key", Value: "ak-a",
		Version: 7, ReadAt: now, FreshUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	tokA := r.token(t, "team-a", "app")
	tokB := r.token(t, "team-b", "app")
	cases := []struct {
		authz, host string
		want        string // reason|identity|route|host|version|tagged
	}{
		{"Bearer " + tokA, "api.anthropic.com", "|team-a/app|anthropic|api.anthropic.com|7|true"},
		{"Bearer " + tokA, "api.anthropic.com", "|team-a/app|anthropic|api.anthropic.com|7|true"},
		{"Bearer " + tokA, "elsewhere.example", "no_route|team-a/app||elsewhere.example|0|true"},
		{"Bearer " + tokB, "api.anthropic.com", "vault_unavailable|team-b/app|anthropic|api.anthropic.com|0|true"},
		{"Bearer " + tokA[:len(tokA)-4] + "AAAA", "api.anthropic.com", "invalid_token|||api.anthropic.com|0|true"},
		{"", "api.anthropic.com", "missing_token|||api.anthropic.com|0|false"},
	}
	for _, c := range cases {
		check(t, r, c.authz, c.host)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(uses) != len(cases) {
		t.Fatalf("%d uses recorded for %d decisions", len(uses), len(cases))
	}
	for i, c := range cases {
		u := uses[i]
		got := fmt.Sprintf("%s|%s|%s|%s|%d|%v", u.Reason, u.Identity.Key(), u.Route, u.Host, u.Version, u.TokenTag != 0)
		if got != c.want {
			t.Errorf("decision %d: %s, want %s", i, got, c.want)
		}
		if !u.At.Equal(now) {
			t.Errorf("decision %d at %v, want %v", i, u.At, now)
		}
	}
	if uses[0].TokenTag != uses[1].TokenTag || uses[0].TokenTag == uses[3].TokenTag {
		t.Errorf("token tags %x %x %x: one token must keep its tag, two tokens differ", uses[0].TokenTag, uses[1].TokenTag, uses[3].TokenTag)
	}
}
