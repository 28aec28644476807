package e2e_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// TestDebugPprof: with debug.listen, /debug/pprof/ answers there (the
// index, a goroutine dump, a short CPU profile) and nowhere else; without
// it there is no debug listener at all.
func TestDebugPprof(t *testing.T) {
	env := testenv.Get(t)
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}

	off := apptest.Start(t, env, apptest.Config(env))
	if a := off.App.DebugAddr(); a != "" {
		t.Fatalf("debug listener %s without debug.listen", a)
	}
	if code, _ := get(off.HTTPURL + "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ on the HTTP listener: %d, want 404", code)
	}

	cfg := apptest.Config(env)
	cfg.Debug.Listen = "127.0.0.1:0"
	on := apptest.Start(t, env, cfg)
	base := "http://" + on.App.DebugAddr()
	if code, body := get(base + "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("index: %d %.200q", code, body)
	}
	if code, body := get(base + "/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("goroutine dump: %d %.200q", code, body)
	}
	if code, body := get(base + "/debug/pprof/profile?seconds=1"); code != http.StatusOK || len(body) == 0 {
		t.Errorf("CPU profile: %d, %d bytes", code, len(body))
	}
	// Only pprof there: no decisions, no metrics.
	for _, p := range []string{"/check", "/metrics"} {
		if code, _ := get(base + p); code != http.StatusNotFound {
			t.Errorf("%s on the debug listener: %d, want 404", p, code)
		}
	}
	if code, _ := get(on.HTTPURL + "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ on the HTTP listener: %d, want 404", code)
	}
}
