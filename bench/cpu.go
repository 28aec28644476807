package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on
// every Linux architecture Go supports (the kernel fixes it for userspace).
const clockTicks = 100

// CPUMeter reads the CPU time used so far by this process and by the test
// bed's server processes.
//
// What it can honestly say: every target runs in this process next to the
// load generator, so Process is the sum of both. The noop target's
// Process CPU per request is (load generator + the cheapest possible gRPC
// server); a target's CPU per request minus noop's is what that target costs
// beyond a bare ext_authz answer. Bed adds what the target made
// kube-apiserver, etcd and Vault do (the reference design's per-request
// TokenReview and Vault calls land there, not in this process).
//
// Both keep running when no load is applied (the API server's controllers,
// the Go runtime, credinject's background loops), which would dominate the
// per-request figure of a target that answers 20 requests/s. Idle, when
// measured, is subtracted from every run, pro rata of its wall time.
type CPUMeter struct {
	// Bed are the pids of the bed's server processes.
	Bed []int
	// Idle is the CPU used per second of wall time with no load.
	Idle CPUSample
}

// CPUSample is a reading of a CPUMeter.
type CPUSample struct {
	Process time.Duration
	Bed     time.Duration
}

// NewCPUMeter watches this process and its child processes (the bed's
// servers are started as direct children).
func NewCPUMeter() *CPUMeter { return &CPUMeter{Bed: childPIDs(os.Getpid())} }

// Sample reads the meter now.
func (m *CPUMeter) Sample() CPUSample {
	var s CPUSample
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		s.Process = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if m == nil {
		return s
	}
	for _, pid := range m.Bed {
		if d, err := procCPU(pid); err == nil {
			s.Bed += d
		}
	}
	return s
}

// MeasureIdle sets m.Idle from a quiet period of d.
func (m *CPUMeter) MeasureIdle(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	a, t0 := m.Sample(), time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
	}
	b, secs := m.Sample(), time.Since(t0).Seconds()
	m.Idle = CPUSample{
		Process: time.Duration(float64(b.Process-a.Process) / secs),
		Bed:     time.Duration(float64(b.Bed-a.Bed) / secs),
	}
	return nil
}

// used is the CPU used from a to b over secs of wall time, less idle.
func (m *CPUMeter) used(a, b CPUSample, secs float64) CPUSample {
	u := CPUSample{Process: b.Process - a.Process, Bed: b.Bed - a.Bed}
	if m != nil {
		u.Process = max(0, u.Process-time.Duration(float64(m.Idle.Process)*secs))
		u.Bed = max(0, u.Bed-time.Duration(float64(m.Idle.Bed)*secs))
	}
	return u
}

// per returns the CPU used between a and b per request, in microseconds.
func per(a, b CPUSample, n int64) CPUPerRequest {
	if n <= 0 {
		return CPUPerRequest{}
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(n) }
	return CPUPerRequest{Process: us(b.Process - a.Process), Bed: us(b.Bed - a.Bed)}
}

// procStat returns the fields of /proc/<pid>/stat after the command name
// (field 3, the state, is index 0).
func procStat(pid int) ([][]byte, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil, err
	}
	// The command name may hold spaces and parentheses; it ends at the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("proc %d: malformed stat", pid)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return nil, fmt.Errorf("proc %d: short stat", pid)
	}
	return f, nil
}

func procCPU(pid int) (time.Duration, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	utime, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("proc %d: bad cpu times", pid)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

func childPIDs(parent int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err != nil {
			continue
		}
		if ppid, err := strconv.Atoi(string(f[1])); err == nil && ppid == parent {
			pids = append(pids, pid)
		}
	}
	return pids
}
