package watcher

import (
	"testing"
	"time"
)

func TestNextRefresh(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := map[string]struct {
		refresh  time.Duration
		tokenExp time.Time
		jitter   float64
		want     time.Duration
	}{
		"two thirds of refresh":         {5 * time.Minute, time.Time{}, 0, 200 * time.Second},
		"plus ten percent":              {5 * time.Minute, time.Time{}, 1, 220 * time.Second},
		"minus ten percent":             {5 * time.Minute, time.Time{}, -1, 180 * time.Second},
		"jitter clamped":                {5 * time.Minute, time.Time{}, 7, 220 * time.Second},
		"token shorter than refresh":    {5 * time.Minute, t0.Add(60 * time.Second), 0, 40 * time.Second},
		"token longer than refresh":     {5 * time.Minute, t0.Add(time.Hour), 0, 200 * time.Second},
		"token already expired":         {5 * time.Minute, t0.Add(-time.Second), 0, 0},
		"zero refresh reads at once":    {0, time.Time{}, 0, 0},
		"half-life jitter is symmetric": {90 * time.Second, time.Time{}, 0.5, 63 * time.Second},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := NextRefresh(t0, c.refresh, c.tokenExp, c.jitter).Sub(t0); got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestLifetimes(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f, e := lifetimes(t0, 5*time.Minute, 15*time.Minute)
	if f != t0.Add(5*time.Minute) || e != t0.Add(15*time.Minute) {
		t.Fatalf("got %v %v", f, e)
	}
	f, e = lifetimes(t0, 5*time.Minute, time.Minute)
	if e != f {
		t.Fatalf("a grace shorter than refresh must not expire a fresh entry: %v %v", f, e)
	}
}

func TestRender(t *testing.T) {
	cases := map[string]struct {
		tmpl string
		data map[string]any
		want string
		ok   bool
	}{
		"bearer":          {"Bearer {api_key}", map[string]any{"api_key": "sk-1"}, "Bearer sk-1", true},
		"bare":            {"{api_key}", map[string]any{"api_key": "k"}, "k", true},
		"two fields":      {"{user}:{pass}", map[string]any{"user": "u", "pass": "p"}, "u:p", true},
		"missing field":   {"Bearer {api_key}", map[string]any{"other": "x"}, "", false},
		"not a string":    {"Bearer {api_key}", map[string]any{"api_key": 42}, "", false},
		"empty value":     {"Bearer {api_key}", map[string]any{"api_key": ""}, "", false},
		"CRLF injection":  {"Bearer {api_key}", map[string]any{"api_key": "sk\r\nX-Evil: 1"}, "", false},
		"LF":              {"Bearer {api_key}", map[string]any{"api_key": "sk\nx"}, "", false},
		"NUL":             {"Bearer {api_key}", map[string]any{"api_key": "sk\x00"}, "", false},
		"DEL":             {"Bearer {api_key}", map[string]any{"api_key": "sk\x7f"}, "", false},
		"trailing space":  {"{api_key}", map[string]any{"api_key": "sk "}, "", false},
		"inner tab ok":    {"{api_key}", map[string]any{"api_key": "a\tb"}, "a\tb", true},
		"unbalanced tmpl": {"Bearer {api_key", map[string]any{"api_key": "x"}, "", false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := Render(c.tmpl, c.data)
			if (err == nil) != c.ok || got != c.want {
				t.Fatalf("Render = %q, %v; want %q ok=%v", got, err, c.want, c.ok)
			}
			if err != nil {
				for _, v := range c.data {
					if s, _ := v.(string); len(s) > 1 && containsStr(err.Error(), s) {
						t.Fatalf("error %q echoes the secret", err)
					}
				}
			}
		})
	}
}

func containsStr(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestTokenPlan: what a session does with its Vault token, and when it next
// has to.
func TestTokenPlan(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fresh := func(renewable bool) tokenLife {
		var l tokenLife
		l.loggedIn(t0, time.Hour, renewable, 0, 0)
		return l
	}
	renewedAt40 := fresh(true)
	renewedAt40.renewed(t0.Add(40*time.Minute), time.Hour, 0)
	capped := fresh(true)
	capped.capped = true
	cases := map[string]struct {
		life     tokenLife
		at       time.Duration
		canLogin bool
		relogin  time.Duration
		want     tokenAction
		next     time.Duration // when want is keepToken
	}{
		"no token":                                     {tokenLife{}, 0, true, 0, logInAgain, 0},
		"fresh: next is the renewal":                   {fresh(true), time.Minute, true, 0, keepToken, 40 * time.Minute},
		"renewed at two thirds":                        {fresh(true), 40 * time.Minute, true, 0, renewToken, 0},
		"relogin at the granted TTL":                   {renewedAt40, 60 * time.Minute, true, 0, logInAgain, 0},
		"after a renewal the relogin is next":          {renewedAt40, 41 * time.Minute, true, 0, keepToken, 60 * time.Minute},
		"a short relogin interval wins":                {fresh(true), time.Minute, true, 10 * time.Minute, keepToken, 10 * time.Minute},
		"relogin interval passed":                      {fresh(true), 10 * time.Minute, true, 10 * time.Minute, logInAgain, 0},
		"relogin due without a token: login":           {renewedAt40, 81 * time.Minute, false, 0, logInAgain, 0},
		"no login: next is the relogin":                {renewedAt40, 41 * time.Minute, false, 0, keepToken, 60 * time.Minute},
		"capped, no login: the relogin first":          {capped, 40 * time.Minute, false, 50 * time.Minute, keepToken, 50 * time.Minute},
		"not renewable: replaced":                      {fresh(false), 40 * time.Minute, true, 0, logInAgain, 0},
		"capped: replaced":                             {capped, 40 * time.Minute, true, 0, logInAgain, 0},
		"capped, no login: kept to its end":            {capped, 40 * time.Minute, false, 0, keepToken, 60*time.Minute - tokenMargin},
		"about to expire":                              {fresh(false), 60*time.Minute - tokenMargin, false, 0, logInAgain, 0},
		"relogin a sixth before the end: not renewed":  {fresh(true), 40 * time.Minute, true, 50 * time.Minute, keepToken, 50 * time.Minute},
		"relogin a sixth before the end: not replaced": {fresh(false), 40 * time.Minute, true, 50 * time.Minute, keepToken, 50 * time.Minute},
		"relogin in the last sixth: renewed first":     {fresh(true), 40 * time.Minute, true, 51 * time.Minute, renewToken, 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			act, next := c.life.plan(t0.Add(c.at), c.canLogin, c.relogin)
			if act != c.want || (act == keepToken && next != t0.Add(c.next)) {
				t.Fatalf("plan = %v, %v; want %v, %v", act, next.Sub(t0), c.want, c.next)
			}
		})
	}
}

func TestFullRefreshAt(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := FullRefreshAt(t0, time.Hour, time.Time{}, 0).Sub(t0); got != 40*time.Minute {
		t.Errorf("no token due: %v, want 40m", got)
	}
	if got := FullRefreshAt(t0, time.Hour, t0.Add(10*time.Minute), 0).Sub(t0); got != 10*time.Minute {
		t.Errorf("token due first: %v, want 10m", got)
	}
	if got := FullRefreshAt(t0, 5*time.Minute, t0.Add(10*time.Minute), 0).Sub(t0); got != 200*time.Second {
		t.Errorf("read due first: %v, want 200s", got)
	}
	if got := FullRefreshAt(t0, time.Hour, t0.Add(43*time.Minute), -1).Sub(t0); got != 43*time.Minute {
		t.Errorf("token due within the read's jitter window: %v, want 43m (one wake-up for both)", got)
	}
	if got := FullRefreshAt(t0, time.Hour, t0.Add(45*time.Minute), -1).Sub(t0); got != 36*time.Minute {
		t.Errorf("token due after the jitter window: %v, want 36m", got)
	}
}
