package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// HydraAccessTokenTTL is the lifetime of the bed's Hydra's access tokens:
// short, so tests see tokens refreshed before they expire.
const HydraAccessTokenTTL = 20 * time.Second

// Hydra is a running Ory Hydra v2 OAuth2 server (built by tools/build.sh
// into the tools cache), in-memory storage, plain HTTP on loopback: the
// public port serves /oauth2/token, the admin port clients and
// introspection.
type Hydra struct {
	// TokenURL is the client credentials endpoint.
	TokenURL string
	admin    string
	proc     *proc
	dir      string
}

var (
	hydraOnce sync.Once
	hydra     *Hydra
	hydraErr  error
)

// Hydra starts Hydra once per test binary, on first use; Main stops it.
func (e *Env) Hydra(t testing.TB) *Hydra {
	t.Helper()
	hydraOnce.Do(func() {
		hydra, hydraErr = StartHydra(context.Background())
		e.hydra = hydra
	})
	if hydraErr != nil {
		t.Fatalf("testenv: hydra: %v", hydraErr)
	}
	return hydra
}

// StartHydra runs `hydra serve all --dev` with DSN=memory on free ports and
// waits until it is ready.
func StartHydra(ctx context.Context) (*Hydra, error) {
	bin, err := ToolDir("hydra")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "credinject-hydra-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	pub, adm := ports[0], ports[1]
	public := "http://127.0.0.1:" + strconv.Itoa(pub)
	h := &Hydra{TokenURL: public + "/oauth2/token", admin: "http://127.0.0.1:" + strconv.Itoa(adm), dir: dir}
	h.proc = &proc{
		name: "hydra", bin: filepath.Join(bin, "hydra"), args: []string{"serve", "all", "--dev", "--sqa-opt-out"},
		logPath: filepath.Join(dir, "hydra.log"),
		env: []string{
			"DSN=memory", "HOME=" + dir, "LOG_LEVEL=warn", "LOG_LEAK_SENSITIVE_VALUES=false",
			"SERVE_PUBLIC_HOST=127.0.0.1", "SERVE_PUBLIC_PORT=" + strconv.Itoa(pub),
			"SERVE_ADMIN_HOST=127.0.0.1", "SERVE_ADMIN_PORT=" + strconv.Itoa(adm),
			"URLS_SELF_ISSUER=" + public, "SECRETS_SYSTEM=credinject-test-hydra-system-secret",
			"TTL_ACCESS_TOKEN=" + HydraAccessTokenTTL.String(),
		},
	}
	if err := h.proc.start(); err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(ctx, h.proc, "hydra", 60*time.Second, httpOK(client, h.admin+"/health/ready")); err != nil {
		h.Stop()
		return nil, err
	}
	return h, nil
}

// Stop stops Hydra and removes its folder.
func (h *Hydra) Stop() {
	if h.proc != nil {
		h.proc.stop()
	}
	_ = os.RemoveAll(h.dir)
}

// CreateClient registers a client credentials client with scope (space
// separated) and authMethod (client_secret_basic or client_secret_post).
func (h *Hydra) CreateClient(ctx context.Context, id, secret, scope, authMethod string) error {
	body, _ := json.Marshal(map[string]any{
		"client_id": id, "client_secret": secret, "scope": scope,
		"grant_types": []string{"client_credentials"}, "token_endpoint_auth_method": authMethod,
		"access_token_strategy": "opaque",
	})
	return h.do(ctx, http.MethodPost, "/admin/clients", "application/json", bytes.NewReader(body), http.StatusCreated, nil)
}

// DeleteClient removes a client (Hydra refuses its credentials from then on).
func (h *Hydra) DeleteClient(ctx context.Context, id string) error {
	return h.do(ctx, http.MethodDelete, "/admin/clients/"+url.PathEscape(id), "", nil, http.StatusNoContent, nil)
}

// Introspection is what Hydra says about an access token (RFC 7662).
type Introspection struct {
	Active   bool   `json:"active"`
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	Exp      int64  `json:"exp"`
}

// Introspect asks Hydra whether token is live and whose it is.
func (h *Hydra) Introspect(ctx context.Context, token string) (Introspection, error) {
	var in Introspection
	form := url.Values{"token": {token}}.Encode()
	err := h.do(ctx, http.MethodPost, "/admin/oauth2/introspect", "application/x-www-form-urlencoded", strings.NewReader(form), http.StatusOK, &in)
	return in, err
}

func (h *Hydra) do(ctx context.Context, method, path, ctype string, body io.Reader, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, h.admin+path, body)
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("hydra %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return fmt.Errorf("hydra %s %s: status %d: %s", method, path, resp.StatusCode, b.String())
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}
