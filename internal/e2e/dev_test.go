package e2e_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/credinject/credinject/internal/devstack"
	"github.com/credinject/credinject/internal/testenv"
	"github.com/credinject/credinject/internal/testenv/logbuf"
)

// devRun is a running `credinject dev`.
type devRun struct {
	cmd    *exec.Cmd
	lines  []string // stdout up to "ready"
	stderr *logbuf.Buffer
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startDev runs the built binary's `credinject dev` on free ports and a fresh
// data folder and waits for "ready" on its stdout.
func startDev(t *testing.T, grpcAddr, httpAddr string) *devRun {
	t.Helper()
	bin := credinjectBinary(t)
	d := &devRun{stderr: &logbuf.Buffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(bin, "dev",
		"--data", filepath.Join(t.TempDir(), "data"),
		"--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--vault-addr", "127.0.0.1:0", "--nats-addr", "127.0.0.1:0")
	d.cmd.Dir = repoRoot(t) // as `make run` does
	d.cmd.Stderr = d.stderr
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan []string, 1)
	go func() {
		var lines []string
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if sc.Text() == "ready" {
				ready <- lines
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		d.err = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("credinject dev stdout:\n%s\nstderr:\n%s", strings.Join(d.lines, "\n"), d.stderr.String())
		}
	})
	// Vault is cached by the bed's start; a cold build would take minutes.
	select {
	case d.lines = <-ready:
	case <-d.exited:
		t.Fatalf("credinject dev exited before ready: %v\n%s", d.err, d.stderr.String())
	case <-time.After(3 * time.Minute):
		t.Fatalf("credinject dev not ready after 3m:\n%s", d.stderr.String())
	}
	return d
}

// exports are the `export NAME='value'` lines of the guide.
func (d *devRun) exports() map[string]string {
	m := map[string]string{}
	for _, l := range d.lines {
		l = strings.TrimSpace(l)
		if rest, ok := strings.CutPrefix(l, "export "); ok {
			k, v, _ := strings.Cut(rest, "=")
			m[k] = strings.Trim(v, "'")
		}
	}
	return m
}

// line is the first guide line containing s.
func (d *devRun) line(t *testing.T, s string) string {
	t.Helper()
	for _, l := range d.lines {
		if strings.Contains(l, s) {
			return strings.TrimSpace(l)
		}
	}
	t.Fatalf("the guide has no line with %q", s)
	return ""
}

func check(t *testing.T, httpAddr, token string) reply {
	t.Helper()
	return get(t, &http.Client{Timeout: 10 * time.Second}, "http://"+httpAddr+"/check", token)
}

// TestDev runs `credinject dev` as a user would, follows its printed guide
// and stops it with Ctrl-C.
func TestDev(t *testing.T) {
	ports := make([]string, 2)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	grpcAddr, httpAddr := ports[0], ports[1]
	d := startDev(t, grpcAddr, httpAddr)
	tokens := d.exports()
	for _, v := range []string{"TOKEN_EGRESS_TEST", "TOKEN_WORKLOAD_B", "TOKEN_DEFAULT", "TOKEN_FEDERATED"} {
		if strings.Count(tokens[v], ".") != 2 {
			t.Fatalf("the guide exports no token %s: %v", v, tokens)
		}
	}

	t.Run("the printed curl commands answer as printed", func(t *testing.T) {
		for _, tc := range []struct {
			name, token string
			status      int
			authz       string
			reason      string
		}{
			{"egress-test/default", tokens["TOKEN_EGRESS_TEST"], 200, "Bearer sk-test-openai-key-for-egress", ""},
			{"workload-b/default", tokens["TOKEN_WORKLOAD_B"], 200, "Bearer sk-different-key-for-workload-b", ""},
			{"default/default (unbound)", tokens["TOKEN_DEFAULT"], 403, "", "vault_denied"},
			{"no token", "", 401, "", "missing_token"},
		} {
			r := check(t, httpAddr, tc.token)
			if r.status != tc.status {
				t.Fatalf("%s: status %d, want %d: %s", tc.name, r.status, tc.status, r.body)
			}
			if got := r.header.Get("Authorization"); got != tc.authz {
				t.Fatalf("%s: Authorization %q, want %q", tc.name, got, tc.authz)
			}
			if got := r.header.Get("X-Credinject-Reason"); got != tc.reason {
				t.Fatalf("%s: X-Credinject-Reason %q, want %q", tc.name, got, tc.reason)
			}
			if tc.status == 401 && r.header.Get("WWW-Authenticate") != "Bearer" {
				t.Fatalf("%s: WWW-Authenticate %q, want Bearer", tc.name, r.header.Get("WWW-Authenticate"))
			}
		}
	})

	t.Run("the printed curl of the minted source answers a Vault identity token", func(t *testing.T) {
		line := d.line(t, "Host: "+devstack.FederatedHost)
		if !strings.Contains(line, "$TOKEN_FEDERATED") {
			t.Fatalf("minted curl line: %q", line)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/check", nil)
		req.Header.Set("Authorization", "Bearer "+tokens["TOKEN_FEDERATED"])
		req.Host = devstack.FederatedHost
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		raw, ok := strings.CutPrefix(resp.Header.Get("Authorization"), "Bearer eyJ")
		if resp.StatusCode != http.StatusOK || !ok {
			t.Fatalf("status %d, Authorization %q; want 200 with a JWT", resp.StatusCode, resp.Header.Get("Authorization"))
		}
		claims := verifyVaultJWT(t, strings.Fields(d.line(t, "Vault "))[1], "eyJ"+raw)
		if sub, _ := claims["sub"].(string); sub == "" {
			t.Fatalf("claims %v name no entity", claims)
		}
	})

	t.Run("ext_authz over gRPC answers as printed", func(t *testing.T) {
		if !strings.Contains(d.line(t, "grpcurl -plaintext"), grpcAddr+" envoy.service.auth.v3.Authorization/Check") {
			t.Fatalf("grpcurl line does not target %s", grpcAddr)
		}
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, tc := range []struct {
			token string
			code  codes.Code
			authz string
		}{
			{tokens["TOKEN_EGRESS_TEST"], codes.OK, "Bearer sk-test-openai-key-for-egress"},
			{tokens["TOKEN_DEFAULT"], codes.PermissionDenied, ""},
		} {
			var req authv3.CheckRequest
			if err := protojson.Unmarshal([]byte(devstack.CheckRequestJSON("Bearer "+tc.token)), &req); err != nil {
				t.Fatal(err)
			}
			resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &req)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != tc.code {
				t.Fatalf("code %v, want %v", got, tc.code)
			}
			if tc.authz != "" {
				hs := resp.GetOkResponse().GetHeaders()
				if len(hs) != 1 || hs[0].GetHeader().GetKey() != "authorization" || hs[0].GetHeader().GetValue() != tc.authz {
					t.Fatalf("ok_response headers %v, want authorization: %s", hs, tc.authz)
				}
			}
		}
	})

	t.Run("the printed mesh checks answer as printed", func(t *testing.T) {
		d.line(t, "trusts loopback as its gateway")
		egress := devstack.Identity{Namespace: "egress-test", ServiceAccount: "default"}
		unbound := devstack.Identity{Namespace: "default", ServiceAccount: "default"}
		for _, tc := range []struct {
			id     devstack.Identity
			status int
			authz  string
			reason string
		}{
			{egress, 200, "Bearer sk-test-openai-key-for-egress", ""},
			{unbound, 403, "", "vault_denied"},
		} {
			xfcc := devstack.XFCC(tc.id)
			d.line(t, "-H 'x-forwarded-client-cert: "+xfcc+"'")
			req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/check", nil)
			req.Header.Set("X-Forwarded-Client-Cert", xfcc)
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.Header.Get("Authorization") != tc.authz || resp.Header.Get("X-Credinject-Reason") != tc.reason {
				t.Fatalf("%s: %d %v, want %d %q %q", tc.id.Name(), resp.StatusCode, resp.Header, tc.status, tc.authz, tc.reason)
			}
		}
		body := devstack.PeerCheckRequestJSON(egress.SPIFFE())
		d.line(t, "grpcurl -plaintext -d '"+body+"' "+grpcAddr)
		var req authv3.CheckRequest
		if err := protojson.Unmarshal([]byte(body), &req); err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, &req)
		if err != nil {
			t.Fatal(err)
		}
		if hs := resp.GetOkResponse().GetHeaders(); len(hs) != 1 || hs[0].GetHeader().GetValue() != "Bearer sk-test-openai-key-for-egress" {
			t.Fatalf("gRPC with source.principal only: %v", resp)
		}
	})

	t.Run("the printed rotate command rotates", func(t *testing.T) {
		// Run the line exactly as printed (a shell, as after copy-paste).
		rotate := d.line(t, " rotate --nats-url ")
		rotate = strings.Replace(rotate, "api_key=sk-rotated-1", "api_key=sk-rotated-e2e", 1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "sh", "-c", rotate).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", rotate, err, out)
		}
		waitUntil(t, 30*time.Second, "the rotated key", func() error {
			r := check(t, httpAddr, tokens["TOKEN_EGRESS_TEST"])
			if got := r.header.Get("Authorization"); got != "Bearer sk-rotated-e2e" {
				return fmt.Errorf("status %d, Authorization %q", r.status, got)
			}
			return nil
		})
	})

	// Ctrl-C stops everything and exits 0.
	vault := strings.Fields(d.line(t, "Vault "))[1]
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("credinject dev did not stop within 30s of SIGINT")
	}
	if d.err != nil {
		t.Fatalf("credinject dev exit after SIGINT: %v, want 0", d.err)
	}
	if !strings.Contains(d.stderr.String(), "credinject dev: stopped") {
		t.Fatalf("no 'stopped' on stderr:\n%s", d.stderr.String())
	}
	// Its loopback Vault is plaintext by design: no warning about it.
	if strings.Contains(d.stderr.String(), "plaintext http://") {
		t.Fatalf("credinject dev warns about its own Vault:\n%s", d.stderr.String())
	}
	for _, addr := range []string{"http://" + httpAddr + "/healthz", vault + "/v1/sys/health"} {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(addr)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s still answers after credinject dev stopped", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%s after stop: %v, want connection refused", addr, err)
		}
	}
}
