package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/logbuf"
)

// TestAuditTrail drives a real credinject (real API server, Vault, NATS)
// through allows, denies of several kinds, a rotation by event and a
// deleted ServiceAccount, then reads its whole audit trail: the lifecycle
// records (fetched, rotated with both versions, refused, forgotten), usage
// counts equal to the answers given, and neither a token nor a key anywhere
// in the trail or in credinject's own (debug) log.
func TestAuditTrail(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	nsA, saA, tokA := boundIdentity(ctx, t, env, "aud-a", "sk-audit-a-v1")
	nsC, saC, tokC := boundIdentity(ctx, t, env, "aud-c", "sk-audit-c-v1")
	nsB, saB, tokB, err := env.Kube.Identity(ctx, "aud-unbound")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+nsB+"/"+saB, map[string]any{"api_key": "sk-audit-b"}); err != nil {
		t.Fatal(err)
	}
	wrongAud, err := env.Kube.Token(ctx, nsA, saA, []string{"https://not-the-api.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	idA, idB, idC := nsA+"/"+saA, nsB+"/"+saB, nsC+"/"+saC
	secrets := []string{"sk-audit-a-v1", "sk-audit-a-v2", "sk-audit-b", "sk-audit-c-v1", env.Vault.RootToken}
	tokens := []string{tokA, tokB, tokC, wrongAud}

	cfg := apptest.Config(env)
	cfg.Prefetch.Refresh = time.Hour // only the event explains a rotation
	cfg.Audit.Output = filepath.Join(t.TempDir(), "audit.jsonl")
	cfg.Audit.Interval = time.Second // several intervals: counts add up across them
	logs := &logbuf.Buffer{}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	r, done := apptest.RunWith(t, runCtx, env, cfg, func(o *app.Options) {
		o.Log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	defer r.Conn.Close()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(cfg.Audit.Output)
			t.Logf("audit trail:\n%s\ncredinject log:\n%s", b, logs.String())
		}
	}()
	apptest.Eventually(t, 10*time.Second, "NATS subscription", func() bool {
		return r.Counter(t, "credinject_events_connected", nil) == 1
	})

	// answers counts what credinject answered, by outcome.
	answers := map[string]int{}
	ask := func(authz string) string {
		got := r.CheckHeader(t, authz, "api.openai.com")
		answers[got]++
		return got
	}
	const (
		allowA1 = "allow authorization=Bearer sk-audit-a-v1"
		allowA2 = "allow authorization=Bearer sk-audit-a-v2"
		allowC  = "allow authorization=Bearer sk-audit-c-v1"
	)
	for range 5 {
		if got := ask("Bearer " + tokA); got != allowA1 {
			t.Fatalf("a: %q", got)
		}
	}
	for range 3 {
		ask("")
	}
	for range 2 {
		ask("Bearer ***.%%%.@@@")
	}
	for range 2 {
		if got := ask("Bearer " + wrongAud); got != "deny 401 invalid_token" {
			t.Fatalf("wrong audience: %q", got)
		}
	}
	for range 2 {
		if got := ask("Bearer " + tokB); got != "deny 403 vault_denied" {
			t.Fatalf("unbound: %q", got)
		}
	}

	// An interval ends on the real ticker: the counts below add up across
	// intervals.
	waitUntil(t, 10*time.Second, "an interval's flush", func() error {
		if len(auditRecords(t, cfg.Audit.Output, "flush")) == 0 {
			return errNotYet
		}
		return nil
	})

	// A rotation: a new KV version, announced on NATS.
	if _, err := env.Vault.PutCredential(ctx, "egress/"+nsA+"/"+saA, map[string]any{"api_key": "sk-audit-a-v2"}); err != nil {
		t.Fatal(err)
	}
	if err := publisher(t, env).Publish(ctx, events.Rotation{Namespace: nsA, ServiceAccount: saA}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the rotated key", func() error {
		if got := ask("Bearer " + tokA); got != allowA2 {
			return errors.New(got)
		}
		return nil
	})
	for range 4 {
		if got := ask("Bearer " + tokA); got != allowA2 {
			t.Fatalf("a after the rotation: %q", got)
		}
	}

	// A deleted ServiceAccount.
	if got := ask("Bearer " + tokC); got != allowC {
		t.Fatalf("c: %q", got)
	}
	if err := env.Kube.DeleteServiceAccount(ctx, nsC, saC); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the deleted SA refused and forgotten", func() error {
		if got := ask("Bearer " + tokC); got != "deny 401 unknown_serviceaccount" {
			return errors.New(got)
		}
		if len(auditRecords(t, cfg.Audit.Output, "forgotten")) == 0 {
			return errors.New("no forgotten record yet")
		}
		return nil
	})

	// Stop: the last interval is written at shutdown.
	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("app.Run: %v", err)
	}

	t.Run("lifecycle", func(t *testing.T) {
		want := []map[string]any{
			{"record": "fetched", "identity": idA, "route": "", "source": "kv", "path": "secret/data/egress/" + idA, "version": 1.0, "trigger": "miss"},
			{"record": "rotated", "identity": idA, "route": "", "source": "kv", "path": "secret/data/egress/" + idA, "version": 2.0, "oldVersion": 1.0, "trigger": "event"},
			{"record": "refused", "identity": idB, "route": "", "source": "kv", "path": "secret/data/egress/" + idB, "reason": "vault_denied", "trigger": "miss"},
			{"record": "fetched", "identity": idC, "route": "", "source": "kv", "path": "secret/data/egress/" + idC, "version": 1.0, "trigger": "miss"},
			{"record": "forgotten", "identity": idC, "route": "", "cause": "serviceaccount_deleted"},
		}
		var got []map[string]any
		for _, kind := range []string{"fetched", "rotated", "refused", "forgotten"} {
			for _, rec := range auditRecords(t, cfg.Audit.Output, kind) {
				delete(rec, "time")
				delete(rec, "log")
				got = append(got, rec)
			}
		}
		for _, w := range want {
			if !containsRecord(got, w) {
				t.Errorf("no record %v in\n%v", w, got)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%d lifecycle records, want %d:\n%v", len(got), len(want), got)
		}
	})

	t.Run("usage counts equal the answers", func(t *testing.T) {
		allows := map[string]float64{}
		for _, u := range auditRecords(t, cfg.Audit.Output, "usage") {
			if u["host"] != "api.openai.com" || u["route"] != "" || u["count"].(float64) < 1 ||
				u["first"].(string) > u["last"].(string) {
				t.Errorf("usage record %v", u)
			}
			allows[u["identity"].(string)+" v"+jsonInt(u["version"])] += u["count"].(float64)
		}
		wantAllows := map[string]float64{
			idA + " v1": float64(answers[allowA1]), idA + " v2": float64(answers[allowA2]), idC + " v1": float64(answers[allowC]),
		}
		if len(allows) != len(wantAllows) {
			t.Errorf("usage %v, want %v", allows, wantAllows)
		}
		for k, n := range wantAllows {
			if allows[k] != n || n == 0 {
				t.Errorf("usage %s: %v allows recorded, %v answered", k, allows[k], n)
			}
		}
		denies := map[string]float64{}
		for _, d := range auditRecords(t, cfg.Audit.Output, "denied") {
			key := d["reason"].(string)
			if id, ok := d["identity"].(string); ok {
				key += " " + id
			} else if tag, ok := d["tokenTag"].(string); ok && len(tag) != 8 {
				t.Errorf("token tag %q is not 8 hex digits", tag)
			}
			denies[key] += d["count"].(float64)
		}
		wantDenies := map[string]float64{
			"missing_token":          float64(answers["deny 401 missing_token"]),
			"malformed_token":        float64(answers["deny 401 malformed_token"]),
			"invalid_token":          float64(answers["deny 401 invalid_token"]),
			"vault_denied " + idB:    float64(answers["deny 403 vault_denied"]),
			"unknown_serviceaccount": float64(answers["deny 401 unknown_serviceaccount"]),
		}
		if len(denies) != len(wantDenies) {
			t.Errorf("denied %v, want %v", denies, wantDenies)
		}
		for k, n := range wantDenies {
			if denies[k] != n || n == 0 {
				t.Errorf("denied %s: %v recorded, %v answered", k, denies[k], n)
			}
		}
		var dropped float64
		flushes := auditRecords(t, cfg.Audit.Output, "flush")
		for _, f := range flushes {
			dropped += f["dropped"].(float64)
		}
		if len(flushes) < 2 || dropped != 0 {
			t.Errorf("%d flush records, %v dropped; want several, none dropped", len(flushes), dropped)
		}
	})

	t.Run("no token or key anywhere", func(t *testing.T) {
		trail, err := os.ReadFile(cfg.Audit.Output)
		if err != nil {
			t.Fatal(err)
		}
		outputs := map[string]string{"audit trail": string(trail), "credinject log": logs.String()}
		if len(trail) == 0 || !strings.Contains(logs.String(), idA) {
			t.Fatal("nothing to search")
		}
		var needles []string
		needles = append(needles, secrets...)
		for _, tok := range tokens {
			// The whole token, and its signature alone.
			needles = append(needles, tok, tok[strings.LastIndexByte(tok, '.')+1:])
		}
		for name, out := range outputs {
			for i, n := range needles {
				if strings.Contains(out, n) {
					t.Errorf("%s holds secret or token #%d", name, i)
				}
			}
		}
	})
}

// auditRecords reads the trail at path and returns its records of kind;
// every line must be a JSON object with "log":"audit".
func auditRecords(t *testing.T, path, kind string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil || m["log"] != "audit" {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if m["record"] == kind {
			out = append(out, m)
		}
	}
	return out
}

func containsRecord(recs []map[string]any, want map[string]any) bool {
	for _, r := range recs {
		if len(r) != len(want) {
			continue
		}
		same := true
		for k, v := range want {
			if r[k] != v {
				same = false
			}
		}
		if same {
			return true
		}
	}
	return false
}

func jsonInt(v any) string {
	f, _ := v.(float64)
	return fmt.Sprint(int64(f))
}
