package e2e_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// metricName finds credinject's metric names in PromQL. Label names and
// values never start with "credinject_", and neither do PromQL's
// functions or keywords, so every match is a metric selector's name.
var metricName = regexp.MustCompile(`credinject_[a-z0-9_]+`)

// monitoringQueries returns every PromQL expression of the Grafana
// dashboard (panel targets and template variable queries) and of the
// PrometheusRule's alerts, each with where it was found.
func monitoringQueries(t *testing.T) map[string]string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "deploy", "monitoring")
	out := map[string]string{}
	raw, err := os.ReadFile(filepath.Join(dir, "credinject-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range dash.Panels {
		for i, tg := range p.Targets {
			out["dashboard panel "+p.Title+" #"+string(rune('A'+i))] = tg.Expr
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			out["dashboard variable "+v.Name] = v.Definition
		}
	}
	for _, r := range ruleGroups(t).Groups {
		for _, rule := range r.Rules {
			out["rule "+rule.Alert+rule.Record] = rule.Expr
		}
	}
	return out
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// ruleSpec is the PrometheusRule's spec: a Prometheus rule file.
func ruleSpec(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "monitoring", "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		APIVersion string    `yaml:"apiVersion"`
		Kind       string    `yaml:"kind"`
		Spec       yaml.Node `yaml:"spec"`
	}
	if err := yaml.Unmarshal(raw, &pr); err != nil {
		t.Fatalf("prometheusrule.yaml: %v", err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Fatalf("prometheusrule.yaml is a %s %s", pr.APIVersion, pr.Kind)
	}
	spec, err := yaml.Marshal(&pr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func ruleGroups(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.Unmarshal(ruleSpec(t), &rf); err != nil {
		t.Fatal(err)
	}
	if len(rf.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	return rf
}

// TestMonitoringMetricsExist starts credinject on the bed with every part
// the dashboard and the alerts watch (TLS listeners, tokenreview mode, NATS
// events), drives an allow, denies and a miss so the labelled series exist,
// scrapes /metrics, and checks that every metric name the dashboard and the
// alert rules use is there: a renamed metric, or a typo in a query, fails.
func TestMonitoringMetricsExist(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "monitoring", "sk-monitoring")
	p := newListenerPKI(t)
	cfg := tlsConfig(env, p, false)
	cfg.Events.NatsURL = env.NATS.URL
	cfg.Kubernetes.TokenValidation = "tokenreview"
	r := apptest.StartTLS(t, env, cfg, p.clientConfig())
	if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-monitoring" { // a miss
		t.Fatalf("miss: %q", got)
	}
	if got := r.Check(t, tok, "api.openai.com"); got != "allow authorization=Bearer sk-monitoring" { // a hit
		t.Fatalf("hit: %q", got)
	}
	if got := r.Check(t, "", "api.openai.com"); got != "deny 401 missing_token" {
		t.Fatalf("deny: %q", got)
	}
	apptest.Eventually(t, 10*time.Second, "NATS subscription", func() bool {
		return r.Counter(t, "credinject_events_connected", nil) == 1
	})

	resp, err := http.Get("http://" + r.App.HealthAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	have := map[string]bool{}
	for name, f := range fams {
		have[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				have[name+s] = true
			}
		}
	}
	used := map[string][]string{}
	for where, q := range monitoringQueries(t) {
		names := metricName.FindAllString(q, -1)
		if len(names) == 0 {
			t.Errorf("%s names no credinject metric: %q", where, q)
		}
		for _, n := range names {
			used[n] = append(used[n], where)
		}
	}
	var missing []string
	for n, where := range used {
		if !have[n] {
			sort.Strings(where)
			missing = append(missing, n+" (in "+strings.Join(where, "; ")+")")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("not on /metrics: %s", m)
	}
	t.Logf("%d metric names used by the dashboard and the rules, all on /metrics", len(used))
}

// TestMonitoringRulesPromtool checks the PrometheusRule's groups with
// Prometheus's own promtool: `check rules` (syntax, PromQL, templates) and
// `test rules` on deploy/monitoring/rules-test.yaml (each alert fires when
// it should, and not when it should not).
func TestMonitoringRulesPromtool(t *testing.T) {
	bin, err := testenv.ToolDir("promtool")
	if err != nil {
		t.Fatal(err)
	}
	promtool := filepath.Join(bin, "promtool")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), ruleSpec(t), 0o600); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "monitoring", "rules-test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules-test.yaml"), tests, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", "rules.yaml"}, {"test", "rules", "rules-test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
	// Every alert has a unit test.
	for _, g := range ruleGroups(t).Groups {
		for _, rule := range g.Rules {
			if rule.Alert != "" && !strings.Contains(string(tests), "alertname: "+rule.Alert+"\n") {
				t.Errorf("alert %s has no test in rules-test.yaml", rule.Alert)
			}
		}
	}
}
