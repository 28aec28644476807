package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Postgres is a PostgreSQL server from the distribution's packages
// (Debian's postgresql: initdb and postgres under /usr/lib/postgresql/<v>/bin),
// in a fresh data folder on a free loopback port, password (SCRAM)
// authentication over TCP, for Vault's database secrets engine. The
// superuser is postgres with password SuperPassword.
type Postgres struct {
	Port int
	// Bin is the folder of PostgreSQL's programs (psql for the tests).
	Bin  string
	dir  string
	proc *proc
}

// SuperPassword is the password of the postgres superuser.
const SuperPassword = "credinject-test-pg"

var (
	pgOnce sync.Once
	pg     *Postgres
	pgErr  error
)

// Postgres starts PostgreSQL once per test binary, on first use (only the
// tests of leased credentials need it); Main stops it.
func (e *Env) Postgres(t testing.TB) *Postgres {
	t.Helper()
	pgOnce.Do(func() {
		pg, pgErr = StartPostgres(context.Background())
		e.pg = pg
	})
	if pgErr != nil {
		t.Fatalf("testenv: postgres: %v", pgErr)
	}
	return pg
}

// pgBin finds PostgreSQL's program folder: PG_BIN, the newest
// /usr/lib/postgresql/<v>/bin, or initdb on the PATH.
func pgBin() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL not found: apt-get install -y --no-install-recommends postgresql (or set PG_BIN)")
}

func pgVersion(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// pgUser is who runs PostgreSQL: the postgres user when we are root (it
// refuses root), else ourselves.
func pgUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// StartPostgres runs initdb in a new folder and starts postgres on a free
// port, waiting until it accepts connections.
func StartPostgres(ctx context.Context) (*Postgres, error) {
	bin, err := pgBin()
	if err != nil {
		return nil, err
	}
	cred, err := pgUser()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "credinject-pg-")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(SuperPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(pwfile, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth-local=trust",
		"--auth-host=scram-sha-256", "--pwfile="+pwfile, "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	p := &Postgres{Port: port, Bin: bin, dir: dir, proc: &proc{
		name: "postgres", bin: filepath.Join(bin, "postgres"), cred: cred,
		args:    []string{"-D", data, "-p", strconv.Itoa(port), "-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"},
		logPath: filepath.Join(dir, "postgres.log"),
	}}
	if err := p.proc.start(); err != nil {
		return nil, err
	}
	err = waitFor(ctx, p.proc, "postgres", 30*time.Second, func(ctx context.Context) error {
		return p.Exec(ctx, "postgres", SuperPassword, "select 1")
	})
	if err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// URL is a connection URL for user.
func (p *Postgres) URL(user, password string) string {
	u := url.URL{Scheme: "postgresql", User: url.UserPassword(user, password), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)),
		Path: "/postgres", RawQuery: "sslmode=disable"}
	return u.String()
}

// Exec runs sql with psql as user over TCP, with password.
func (p *Postgres) Exec(ctx context.Context, user, password, sql string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(p.Bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, p.URL(user, password))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("psql as %s: %w: %s", user, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Stop stops postgres and removes its folder.
func (p *Postgres) Stop() {
	if p.proc != nil {
		p.proc.stop()
	}
	_ = os.RemoveAll(p.dir)
}
