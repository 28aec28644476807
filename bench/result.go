package bench

import (
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Histograms hold microseconds, from 1 µs to 2 minutes, 3 significant digits.
const (
	histMin    = 1
	histMax    = int64(2 * time.Minute / time.Microsecond)
	histDigits = 3
)

// Percentiles of a latency distribution, in milliseconds.
type Percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99.9"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func percentiles(h *hdrhistogram.Histogram) Percentiles {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	if h.TotalCount() == 0 {
		return Percentiles{}
	}
	return Percentiles{
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)),
		P99: ms(h.ValueAtQuantile(99)), P999: ms(h.ValueAtQuantile(99.9)),
		Max: ms(h.Max()), Mean: h.Mean() / 1000,
	}
}

// CPUPerRequest is CPU time per answered request, in microseconds, less what
// the processes use when idle (CPUMeter.Idle).
type CPUPerRequest struct {
	// Process is this process: the load generator and the in-process
	// target together.
	Process float64 `json:"process"`
	// Bed is the test bed's server processes (kube-apiserver, etcd, Vault).
	Bed float64 `json:"bed"`
}

// Result is one load run against one target.
type Result struct {
	Target string `json:"target"`
	// Mode is "closed" (Concurrency workers, back to back) or "open"
	// (OfferedRate requests/s on a fixed schedule).
	Mode        string  `json:"mode"`
	Concurrency int     `json:"concurrency,omitempty"`
	OfferedRate float64 `json:"offeredRate,omitempty"`
	// Seconds is the measured wall time of the run.
	Seconds float64 `json:"seconds"`
	// Requests counts answers (OK plus errors); Sent counts requests sent.
	Sent     int64            `json:"sent"`
	Requests int64            `json:"requests"`
	OK       int64            `json:"ok"`
	Errors   map[string]int64 `json:"errors"`
	// Throughput is correct allows per second.
	Throughput float64 `json:"throughput"`
	// Latency covers correct allows only. In open loop it runs from each
	// request's intended send time; Service runs from its actual send.
	Latency Percentiles   `json:"latencyMs"`
	Service *Percentiles  `json:"serviceMs,omitempty"`
	CPU     CPUPerRequest `json:"cpuPerRequestMicros"`

	// Kept to merge rounds.
	lat, svc *hdrhistogram.Histogram
	cpuUsed  CPUSample
}

func (r *Result) setCPU(m *CPUMeter, before, after CPUSample) {
	r.cpuUsed = m.used(before, after, r.Seconds)
	r.CPU = per(CPUSample{}, r.cpuUsed, r.Requests)
}

// Merge combines runs of one target under the same load (rounds
// interleaved with other targets' runs) into one result.
func Merge(rs ...*Result) *Result {
	if len(rs) == 1 {
		return rs[0]
	}
	m := *rs[0]
	m.Errors = map[string]int64{}
	m.lat = hdrhistogram.New(histMin, histMax, histDigits)
	if rs[0].svc != nil {
		m.svc = hdrhistogram.New(histMin, histMax, histDigits)
	}
	m.Seconds, m.Sent, m.OK, m.cpuUsed = 0, 0, 0, CPUSample{}
	for _, r := range rs {
		m.Seconds += r.Seconds
		m.Sent += r.Sent
		m.OK += r.OK
		for k, v := range r.Errors {
			m.Errors[k] += v
		}
		m.lat.Merge(r.lat)
		if m.svc != nil && r.svc != nil {
			m.svc.Merge(r.svc)
		}
		m.cpuUsed.Process += r.cpuUsed.Process
		m.cpuUsed.Bed += r.cpuUsed.Bed
	}
	m.Requests = m.OK + m.ErrorCount()
	m.Throughput = 0
	if m.Seconds > 0 {
		m.Throughput = float64(m.OK) / m.Seconds
	}
	m.Latency = percentiles(m.lat)
	if m.svc != nil {
		p := percentiles(m.svc)
		m.Service = &p
	}
	m.CPU = per(CPUSample{}, m.cpuUsed, m.Requests)
	return &m
}

// ErrorCount is the number of answers that were not a correct allow.
func (r *Result) ErrorCount() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

// tally records the outcomes of one run. Workers record into shards so that
// their locks are rarely contended.
type tally struct {
	shards []*shard
	open   bool
}

type shard struct {
	mu   sync.Mutex
	lat  *hdrhistogram.Histogram
	svc  *hdrhistogram.Histogram
	sent int64
	ok   int64
	errs map[string]int64
	_    [64]byte // keep neighbouring shards off one cache line
}

func newTally(n int, open bool) *tally {
	t := &tally{shards: make([]*shard, n), open: open}
	for i := range t.shards {
		s := &shard{lat: hdrhistogram.New(histMin, histMax, histDigits), errs: map[string]int64{}}
		if open {
			s.svc = hdrhistogram.New(histMin, histMax, histDigits)
		}
		t.shards[i] = s
	}
	return t
}

func (t *tally) shard(worker int) *shard { return t.shards[worker%len(t.shards)] }

func micros(d time.Duration) int64 {
	us := d.Microseconds()
	if us < histMin {
		us = histMin
	}
	if us > histMax {
		us = histMax
	}
	return us
}

// record counts one answer: a latency sample when errKey is empty, an error
// otherwise. service is only kept in open loop.
func (s *shard) record(latency, service time.Duration, errKey string) {
	s.mu.Lock()
	s.sent++
	if errKey == "" {
		s.ok++
		_ = s.lat.RecordValue(micros(latency))
		if s.svc != nil {
			_ = s.svc.RecordValue(micros(service))
		}
	} else {
		s.errs[errKey]++
	}
	s.mu.Unlock()
}

// unanswered counts a request sent but cut by the end of the run.
func (s *shard) unanswered() {
	s.mu.Lock()
	s.sent++
	s.mu.Unlock()
}

func (t *tally) result(target, mode string, elapsed time.Duration) *Result {
	lat := hdrhistogram.New(histMin, histMax, histDigits)
	var svc *hdrhistogram.Histogram
	if t.open {
		svc = hdrhistogram.New(histMin, histMax, histDigits)
	}
	r := &Result{Target: target, Mode: mode, Seconds: elapsed.Seconds(), Errors: map[string]int64{}}
	for _, s := range t.shards {
		s.mu.Lock()
		lat.Merge(s.lat)
		if svc != nil {
			svc.Merge(s.svc)
		}
		r.Sent += s.sent
		r.OK += s.ok
		for k, v := range s.errs {
			r.Errors[k] += v
		}
		s.mu.Unlock()
	}
	r.Requests = r.OK + r.ErrorCount()
	if elapsed > 0 {
		r.Throughput = float64(r.OK) / elapsed.Seconds()
	}
	r.Latency = percentiles(lat)
	r.lat, r.svc = lat, svc
	if svc != nil {
		p := percentiles(svc)
		r.Service = &p
	}
	return r
}
