package app

import (
	"strings"
	"testing"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/watcher"
)

// TestRoutesFromConfig: the watcher gets every route, the default one (no
// name) first with the top-level keys; the router gets the named ones.
func TestRoutesFromConfig(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader(`
routes:
  - {name: partner, hosts: [api.partner.example], source: oauth2-client-credentials, tokenURL: "https://auth.example/t", scopes: [read], clientAuth: post}
  - {hosts: [kv.example]}
`))
	if err != nil {
		t.Fatal(err)
	}
	ws := watcherRoutes(cfg)
	if len(ws) != 3 || ws[0].Name != "" || ws[0].Source != watcher.Source(config.SourceKV) || ws[0].Value != "Bearer {api_key}" {
		t.Fatalf("watcher routes %+v", ws)
	}
	if p := ws[1]; p.Name != "partner" || p.TokenURL != "https://auth.example/t" || len(p.Scopes) != 1 || p.ClientAuth != "post" || p.Value != "Bearer {access_token}" {
		t.Errorf("oauth2 route %+v", p)
	}
	if k := ws[2]; k.Name != "kv.example" || k.TokenURL != "" || k.ClientAuth != "" {
		t.Errorf("kv route %+v", k)
	}
	cs := checkerRoutes(cfg)
	if len(cs) != 2 || cs[0].Name != "partner" || cs[1].Name != "kv.example" {
		t.Errorf("checker routes %+v", cs)
	}
}

// TestEventDefaultsAgree: events.subject's default is the subject the
// event format names (events/FORMAT.md), which rotate and the audit bridge
// publish on.
func TestEventDefaultsAgree(t *testing.T) {
	if got := config.Default().Events.Subject; got != events.DefaultSubject {
		t.Errorf("events.subject default %q, the format's %q", got, events.DefaultSubject)
	}
}
