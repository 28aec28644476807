package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Part selects the servers a test binary needs.
type Part int

// The parts of the bed.
const (
	WithKube Part = 1 << iota
	WithVault
	WithNATS
	All = WithKube | WithVault | WithNATS
)

// Env is the running bed of this test binary.
type Env struct {
	Dir   string
	Kube  *Kube
	Vault *Vault
	NATS  *NATS
	pg    *Postgres
	hydra *Hydra
}

var current *Env

// Get returns the bed started by Main. It fails the test if Main did not
// start the needed part.
func Get(t testing.TB) *Env {
	t.Helper()
	if current == nil {
		t.Fatal("testenv: no bed; call testenv.Main from TestMain")
	}
	return current
}

// Main starts the parts, runs the tests, stops everything and removes the
// bed's folder unless a test failed (then its logs are kept and named).
func Main(m *testing.M, parts Part) {
	os.Exit(run(m, parts))
}

func run(m *testing.M, parts Part) int {
	dir, err := os.MkdirTemp("", "credinject-testenv-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	env, err := Start(context.Background(), dir, parts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: start: %v\n(logs kept in %s)\n", err, dir)
		return 1
	}
	current = env
	code := m.Run()
	env.Stop()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "testenv: a test failed; server logs kept in %s\n", dir)
		return code
	}
	_ = os.RemoveAll(dir)
	return code
}

// Start starts the parts in dir.
func Start(ctx context.Context, dir string, parts Part) (*Env, error) {
	env := &Env{Dir: dir}
	t0 := time.Now()
	ok := false
	defer func() {
		if !ok {
			env.Stop()
		}
	}()
	if parts&WithKube != 0 {
		d := filepath.Join(dir, "kube")
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		k, err := StartKube(ctx, d)
		if err != nil {
			return nil, err
		}
		env.Kube = k
	}
	if parts&WithVault != 0 {
		d := filepath.Join(dir, "vault")
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		v, err := StartVault(ctx, d, env.Kube)
		if err != nil {
			return nil, err
		}
		env.Vault = v
	}
	if parts&WithNATS != 0 {
		n, err := StartNATS(filepath.Join(dir, "nats"))
		if err != nil {
			return nil, err
		}
		env.NATS = n
	}
	if os.Getenv("CREDINJECT_TESTENV_QUIET") == "" {
		fmt.Fprintf(os.Stderr, "testenv: bed up in %v (%s)\n", time.Since(t0).Round(time.Millisecond), dir)
	}
	ok = true
	return env, nil
}

// Stop stops every part.
func (e *Env) Stop() {
	if e.pg != nil {
		e.pg.Stop()
	}
	if e.hydra != nil {
		e.hydra.Stop()
	}
	if e.NATS != nil {
		e.NATS.Stop()
	}
	if e.Vault != nil {
		e.Vault.Stop()
	}
	if e.Kube != nil {
		e.Kube.Stop()
	}
}
