package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/logbuf"
)

// TestServeBinary runs the real `credinject serve --config FILE` against the
// bed, as a user would, and checks readiness, gRPC health, a decision over
// ext_authz and /metrics, then a clean stop on SIGTERM.
func TestServeBinary(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	_, _, tok := boundIdentity(ctx, t, env, "serve", "sk-serve")
	kubeconfig, err := env.Kube.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	gp, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	hp, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
listen: {grpc: "127.0.0.1:1", http: "127.0.0.1:2"}
kubernetes:
  kubeconfig: %q
  tokenValidation: tokenreview
vault: {address: %q}
events: {natsURL: %q}
`, kubeconfig, env.Vault.Addr, env.NATS.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, "--config", cfgPath,
		"--grpc-addr", fmt.Sprintf("127.0.0.1:%d", gp), "--http-addr", fmt.Sprintf("127.0.0.1:%d", hp), "--log-level", "debug")
	base := fmt.Sprintf("http://127.0.0.1:%d", hp)
	apptest.Eventually(t, 30*time.Second, "/readyz", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// The bed's Vault is plaintext http://: outside credinject dev that is
	// a warning, in the log at start and on /readyz.
	rresp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	rbody, _ := io.ReadAll(rresp.Body)
	rresp.Body.Close()
	if !strings.Contains(string(rbody), "vault: warning: plaintext http://") {
		t.Fatalf("/readyz does not warn of the plaintext Vault:\n%s", rbody)
	}
	apptest.Eventually(t, 10*time.Second, "the plaintext Vault warning in the log", func() bool {
		return strings.Contains(srv.logs.String(), `"level":"WARN","msg":"vault: plaintext http://`)
	})
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", gp), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("grpc health: %v %v", h, err)
	}
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, apptest.Request("Bearer "+tok, "api.openai.com"))
	if err != nil {
		t.Fatal(err)
	}
	if got := apptest.Outcome(resp); got != "allow authorization=Bearer sk-serve" {
		t.Fatalf("check: %q", got)
	}
	mresp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(body), `credinject_check_total{identity_source="token",reason="",result="allow"} 1`) {
		t.Fatalf("metrics lack the allow:\n%.2000s", body)
	}
	srv.stop(t)
	out := srv.logs.String()
	if strings.Contains(out, tok) || strings.Contains(out, "sk-serve") {
		t.Fatal("the logs contain the SA token or the credential")
	}
	if !strings.Contains(out, `"msg":"decision"`) {
		t.Fatalf("no decision logged at debug level:\n%s", out)
	}
}

// serveRun is a running `credinject serve` (the built binary).
type serveRun struct {
	cmd    *exec.Cmd
	logs   *logbuf.Buffer // its stdout and stderr
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startServe runs `credinject serve ARGS...` from the built binary. It is
// killed at the end of the test if still running, and its output is logged
// when the test failed.
func startServe(t *testing.T, args ...string) *serveRun {
	t.Helper()
	s := &serveRun{logs: &logbuf.Buffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(credinjectBinary(t), append([]string{"serve"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			t.Logf("serve output:\n%s", s.logs.String())
		}
	})
	return s
}

// stop sends SIGTERM and fails the test unless serve exits cleanly (status
// 0) within 20s.
func (s *serveRun) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.exited:
		if s.err != nil {
			t.Fatalf("serve exited with %v", s.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
}

// TestServeRefusesAmbiguousPathTemplate: a route path in which a placeholder
// touches a character Kubernetes names contain (team/a-app and team-a/app
// would read one database role) stops `credinject serve` before it listens,
// with a message naming the key, the placeholder and the safe separators.
func TestServeRefusesAmbiguousPathTemplate(t *testing.T) {
	env := testenv.Get(t)
	kubeconfig, err := env.Kube.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	gp, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
listen: {grpc: "127.0.0.1:%d", http: "127.0.0.1:0"}
kubernetes: {kubeconfig: %q}
vault: {address: %q}
routes:
  - name: db-api
    hosts: [db-api.example.com]
    source: vault-read
    path: "database/creds/{namespace}-{serviceaccount}"
    inject: {header: x-db-credentials, value: "{username}:{password}"}
`, gp, kubeconfig, env.Vault.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, "--config", cfgPath)
	select {
	case <-srv.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("serve kept running with an ambiguous path template")
	}
	if srv.err == nil {
		t.Fatal("serve exited with status 0")
	}
	logs := srv.logs.String()
	for _, want := range []string{"routes[0].path", `{namespace} is followed by "-"`, "such as '_'"} {
		if !strings.Contains(logs, want) {
			t.Errorf("serve's output lacks %q:\n%s", want, logs)
		}
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", gp), time.Second); err == nil {
		c.Close()
		t.Error("serve listened on its gRPC port")
	}
}
