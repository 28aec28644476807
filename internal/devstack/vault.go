package devstack

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// RootToken is the fixed root token of the dev Vault (like `vault server -dev`).
const RootToken = "root"

// buildScript is where the test bed's tool builder lives, relative to the
// repository root.
const buildScript = "internal/testenv/tools/build.sh"

// VaultBinary returns the path of the vaultdev binary, building it first if
// the cache lacks it (tools/build.sh path vault; a cold build takes 10+
// minutes). The script's progress and a heartbeat go to progress.
// CREDINJECT_VAULT_DIR, as for the tests, names a folder holding vaultdev and
// skips the script.
func VaultBinary(ctx context.Context, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	if d := os.Getenv("CREDINJECT_VAULT_DIR"); d != "" {
		bin := filepath.Join(d, "vaultdev")
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("devstack: CREDINJECT_VAULT_DIR: %w", err)
		}
		return bin, nil
	}
	script, err := findBuildScript()
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script, "path", "vault")
	cmd.Stdout = &out
	cmd.Stderr = progress
	// The build runs in its own process group so that an interrupt stops go
	// build too, not only the script.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("devstack: %s: %w", script, err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { heartbeat(done, progress, 30*time.Second) })
	err = cmd.Wait()
	close(done)
	wg.Wait()
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("devstack: %s path vault: %w", script, err)
	}
	bin := filepath.Join(strings.TrimSpace(out.String()), "vaultdev")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("devstack: build script gave no vaultdev: %w", err)
	}
	return bin, nil
}

// heartbeat says the build is still running: go build is silent for minutes.
func heartbeat(done <-chan struct{}, w io.Writer, every time.Duration) {
	t0 := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			fmt.Fprintf(w, "vault: still building (%v so far)…\n", time.Since(t0).Round(time.Second))
		}
	}
}

// findBuildScript looks for the repository's build script above the working
// directory, above the executable, and at the place this file was compiled
// from.
func findBuildScript() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			p := filepath.Join(dir, buildScript)
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("devstack: cannot find %s: run credinject dev from the repository checkout, or set CREDINJECT_VAULT_DIR to a folder holding vaultdev", buildScript)
}

// VaultOptions configure StartVault.
type VaultOptions struct {
	// Bin is the vaultdev binary (VaultBinary).
	Bin string
	// Addr is host:port to listen on; port 0 picks a free one.
	Addr string
	// DataDir holds the storage, the unseal key and the log (vault.log); it
	// survives restarts.
	DataDir string
	// TLS, when set, makes Vault serve HTTPS.
	TLS *VaultTLS
	// Namespace, when set, makes vaultdev refuse requests without
	// X-Vault-Namespace: Namespace (Community Vault has no namespaces: this
	// only shows that a client sends it); the Client sends it.
	Namespace string
}

// VaultTLS makes vaultdev serve HTTPS (TLS 1.2 or later).
type VaultTLS struct {
	// CertFile and KeyFile are Vault's serving certificate.
	CertFile, KeyFile string
	// ClientCAFile, when set, makes Vault require client certificates
	// signed by it.
	ClientCAFile string
	// CAFile, ClientCertFile and ClientKeyFile are what StartVault's own
	// client (Vault.Client) trusts and presents.
	CAFile, ClientCertFile, ClientKeyFile string
}

// Vault is a running vaultdev process: the real Vault server core, unsealed,
// with file storage, root token RootToken and kv v2 at secret/.
type Vault struct {
	Addr   string
	Client *vaultapi.Client

	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	stopped sync.Once
}

// StartVault starts vaultdev and waits until it serves.
func StartVault(ctx context.Context, opts VaultOptions) (*Vault, error) {
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: vault data: %w", err)
	}
	v := &Vault{logPath: filepath.Join(opts.DataDir, "vault.log"), done: make(chan struct{})}
	logf, err := os.OpenFile(v.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("devstack: vault log: %w", err)
	}
	args := []string{"-addr", opts.Addr, "-data", filepath.Join(opts.DataDir, "data"), "-root-token", RootToken}
	if t := opts.TLS; t != nil {
		args = append(args, "-tls-cert", t.CertFile, "-tls-key", t.KeyFile)
		if t.ClientCAFile != "" {
			args = append(args, "-tls-client-ca", t.ClientCAFile)
		}
	}
	if opts.Namespace != "" {
		args = append(args, "-namespace", opts.Namespace)
	}
	cmd := exec.Command(opts.Bin, args...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	// Vault dies with us even if we are killed; its own group keeps a
	// terminal's Ctrl-C for us to handle in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("devstack: start vault: %w", err)
	}
	v.cmd = cmd
	ready := make(chan string, 1)
	var copied sync.WaitGroup
	copied.Go(func() {
		// vaultdev prints "vaultdev ready addr=http://…" once it serves.
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if a, ok := strings.CutPrefix(line, "vaultdev ready addr="); ok {
				select {
				case ready <- strings.TrimSpace(a):
				default:
				}
			}
		}
		_, _ = io.Copy(logf, stdout)
	})
	go func() {
		copied.Wait()
		_ = cmd.Wait()
		logf.Close()
		close(v.done)
	}()

	timer := time.NewTimer(2 * time.Minute)
	defer timer.Stop()
	select {
	case v.Addr = <-ready:
	case <-v.done:
		return nil, fmt.Errorf("devstack: vault exited at start (%s):\n%s", cmd.ProcessState, v.tail(20))
	case <-ctx.Done():
		v.Stop()
		return nil, ctx.Err()
	case <-timer.C:
		v.Stop()
		return nil, fmt.Errorf("devstack: vault not ready after 2m:\n%s", v.tail(20))
	}
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = 10 * time.Second
	if t := opts.TLS; t != nil {
		if err := cfg.ConfigureTLS(&vaultapi.TLSConfig{CACert: t.CAFile, ClientCert: t.ClientCertFile, ClientKey: t.ClientKeyFile}); err != nil {
			v.Stop()
			return nil, fmt.Errorf("devstack: vault client TLS: %w", err)
		}
	}
	if v.Client, err = vaultapi.NewClient(cfg); err != nil {
		v.Stop()
		return nil, fmt.Errorf("devstack: vault client: %w", err)
	}
	v.Client.SetToken(RootToken)
	if opts.Namespace != "" {
		v.Client.SetNamespace(opts.Namespace)
	}
	if err := v.waitHealthy(ctx); err != nil {
		v.Stop()
		return nil, err
	}
	return v, nil
}

func (v *Vault) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, v.Addr+"/v1/sys/health", nil)
		resp, err := v.Client.CloneConfig().HttpClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devstack: vault health: %v\n%s", err, v.tail(20))
		case <-v.done:
			return fmt.Errorf("devstack: vault exited:\n%s", v.tail(20))
		case <-t.C:
		}
	}
}

// LogPath is Vault's log file.
func (v *Vault) LogPath() string { return v.logPath }

// Done is closed when the process has exited.
func (v *Vault) Done() <-chan struct{} { return v.done }

// Stop asks Vault to shut down (SIGTERM), kills it after 10 s, and waits.
func (v *Vault) Stop() {
	v.stopped.Do(func() {
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-v.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
			<-v.done
		}
	})
}

func (v *Vault) tail(n int) string { return Tail(v.logPath, n) }

// Tail returns the last n lines of a log file ("" if it cannot be read).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
