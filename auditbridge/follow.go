package auditbridge

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"k8s.io/utils/clock"
)

// DefaultPollInterval is how often a followed file is checked for new lines
// once its end is reached.
const DefaultPollInterval = 250 * time.Millisecond

// follower tails the file of a Vault file audit device, like `tail -F`: it
// reads lines as they are appended, and reopens the path when it names a
// new file (rotation by rename, then a SIGHUP to Vault) or when the file
// shrank (truncation, copytruncate). It polls rather than watching for
// file-system events: one stat per interval at the end of the file works on
// every file system, including network and overlay ones.
type follower struct {
	clock clock.WithTicker
	path  string
	// fromStart reads a file that exists at startup from its beginning;
	// otherwise only lines appended after startup are read. A file that
	// appears later (or replaces the first one) is always read whole.
	fromStart bool
	poll      time.Duration
	handle    lineFunc
	log       *slog.Logger
	// notify, for tests, hears "waiting", "opened", "replaced" and
	// "truncated".
	notify func(what string)
}

func (f *follower) note(what string) {
	if f.notify != nil {
		f.notify(what)
	}
}

// run follows the file until ctx is done. A missing or unreadable file is
// waited for, not an error.
func (f *follower) run(ctx context.Context) error {
	input := "file " + f.path
	sp := newSplitter(MaxLineSize, func(line []byte, tooLong bool) { f.handle(input, line, tooLong) })
	buf := make([]byte, 64<<10)
	tick := f.clock.NewTicker(f.poll)
	defer tick.Stop()
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C():
			return true
		}
	}

	var (
		file    *os.File
		info    os.FileInfo
		off     int64
		startup = true
		warned  bool // about the current failure to open
	)
	defer func() {
		if file != nil {
			file.Close()
		}
	}()
	for ctx.Err() == nil {
		if file == nil {
			var err error
			file, info, off, err = f.open(startup, sp)
			startup = false
			if err != nil {
				if !warned {
					lvl := slog.LevelWarn
					if errors.Is(err, fs.ErrNotExist) {
						lvl = slog.LevelInfo
					}
					f.log.Log(ctx, lvl, "auditbridge: waiting for the audit file", "path", f.path, "err", err)
					warned = true
					f.note("waiting")
				}
				if !wait() {
					return nil
				}
				continue
			}
			warned = false
			f.log.Info("auditbridge: following the audit file", "path", f.path, "offset", off)
			f.note("opened")
		}

		n, err := file.Read(buf)
		if n > 0 {
			sp.feed(buf[:n])
			off += int64(n)
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			f.log.Warn("auditbridge: reading the audit file failed, reopening", "path", f.path, "err", err)
			file.Close()
			file = nil
			sp.reset()
			if !wait() {
				return nil
			}
			continue
		}

		// At the end of the file: has it been replaced, or truncated?
		st, err := os.Stat(f.path)
		switch {
		case err == nil && !os.SameFile(info, st):
			// Rotated. Lines may have landed in the old file since the
			// last read; take them before switching.
			for {
				n, err := file.Read(buf)
				sp.feed(buf[:n])
				if err != nil || n == 0 {
					break
				}
			}
			sp.flush()
			file.Close()
			file = nil
			f.log.Info("auditbridge: audit file replaced, reopening", "path", f.path)
			f.note("replaced")
			continue
		case err == nil && st.Size() < off:
			if _, err := file.Seek(0, io.SeekStart); err != nil {
				file.Close()
				file = nil
			}
			off = 0
			sp.reset()
			f.log.Info("auditbridge: audit file truncated, reading from its start", "path", f.path)
			f.note("truncated")
			continue
		}
		// Unchanged, or removed with no successor yet: Vault may still be
		// writing to the old file until it reopens the path.
		if !wait() {
			return nil
		}
	}
	return nil
}

// open opens the path, at its end when this is the file found at startup
// and fromStart is off.
func (f *follower) open(startup bool, sp *splitter) (*os.File, os.FileInfo, int64, error) {
	file, err := os.Open(f.path)
	if err != nil {
		return nil, nil, 0, err
	}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, nil, 0, err
	}
	sp.reset()
	if !startup || f.fromStart || info.Size() == 0 {
		return file, info, 0, nil
	}
	off, err := file.Seek(0, io.SeekEnd)
	if err != nil {
		file.Close()
		return nil, nil, 0, err
	}
	// Starting inside a line that is still being written would count its
	// tail as malformed: skip to the next line instead.
	last := make([]byte, 1)
	if _, err := file.ReadAt(last, off-1); err == nil && last[0] != '\n' {
		sp.skipping = true
	}
	return file, info, off, nil
}
