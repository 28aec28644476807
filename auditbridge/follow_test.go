package auditbridge

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/utils/clock"
)

type followRun struct {
	lines chan emitted
	notes chan string
	stop  func()
}

func startFollower(t *testing.T, path string, fromStart bool) *followRun {
	t.Helper()
	r := &followRun{lines: make(chan emitted, 100), notes: make(chan string, 100)}
	f := &follower{
		clock: clock.RealClock{}, path: path, fromStart: fromStart, poll: 2 * time.Millisecond, log: slog.New(slog.DiscardHandler),
		handle: func(_ string, line []byte, tooLong bool) { r.lines <- emitted{string(line), tooLong} },
		notify: func(what string) { r.notes <- what },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.run(ctx) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := recv(t, done, "follower to stop"); err != nil {
				t.Errorf("run = %v", err)
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

func (r *followRun) expect(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		got := recv(t, r.lines, "line "+w)
		if w == "<too long>" {
			if !got.tooLong {
				t.Fatalf("got line %q, want a too-long line", got.line)
			}
			continue
		}
		if got.tooLong || got.line != w {
			t.Fatalf("got %+v, want line %q", got, w)
		}
	}
}

func (r *followRun) note(t *testing.T, want string) {
	t.Helper()
	if got := recv(t, r.notes, want); got != want {
		t.Fatalf("follower did %q, want %q", got, want)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func TestFollowerStartsAtTheEnd(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	path := filepath.Join(t.TempDir(), "audit.log")
	appendFile(t, path, "old 1\nold 2\npart")
	r := startFollower(t, path, false)
	r.note(t, "opened")
	// The line being written at startup is skipped whole, not counted as
	// a malformed tail.
	appendFile(t, path, "ial\nnew 1\n")
	appendFile(t, path, "new 2\n")
	r.expect(t, "new 1", "new 2")
	r.stop()
}

func TestFollowerFromStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	appendFile(t, path, "old 1\nold 2\n")
	r := startFollower(t, path, true)
	r.expect(t, "old 1", "old 2")
	appendFile(t, path, "new\n")
	r.expect(t, "new")
}

func TestFollowerWaitsForTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	r := startFollower(t, path, false)
	r.note(t, "waiting")
	// A file that appears after startup is new: read it whole.
	appendFile(t, path, "first\nsecond\n")
	r.note(t, "opened")
	r.expect(t, "first", "second")
}

func TestFollowerTruncation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	appendFile(t, path, "a long first line\n")
	r := startFollower(t, path, true)
	r.expect(t, "a long first line")
	if err := os.WriteFile(path, []byte("b\n"), 0o600); err != nil { // copytruncate
		t.Fatal(err)
	}
	r.note(t, "opened")
	r.note(t, "truncated")
	r.expect(t, "b")
	appendFile(t, path, "c\n")
	r.expect(t, "c")
}

func TestFollowerRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	appendFile(t, path, "a\n")
	r := startFollower(t, path, true)
	r.expect(t, "a")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	// Vault writes to the old file until it reopens the path (SIGHUP).
	appendFile(t, path+".1", "late\n")
	r.expect(t, "late")
	appendFile(t, path+".1", "later\n")
	appendFile(t, path, "b\n")
	r.expect(t, "later", "b")
	r.note(t, "opened")
	r.note(t, "replaced")
	r.note(t, "opened")
	appendFile(t, path, "c\n")
	r.expect(t, "c")
	// Rotated again, with a file that exists already: read from its start
	// (fromStart only concerns the file found at startup).
	if err := os.WriteFile(path+".new", []byte("d\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "d")
}

func TestFollowerLongLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	appendFile(t, path, "")
	r := startFollower(t, path, false)
	r.note(t, "opened")
	appendFile(t, path, strings.Repeat("x", MaxLineSize+1)+"\nok\n")
	r.expect(t, "<too long>", "ok")
}
