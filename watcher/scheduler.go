package watcher

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
)

// scheduler runs every identity's refresher on one timer heap and a bounded
// pool of workers, instead of a goroutine, a timer and a channel per
// identity: at 100,000 identities per replica those cost more than the
// credentials themselves. One goroutine waits on the injected clock for the
// earliest due identity and hands due identities to a client-go work queue
// (FIFO, one entry per identity, never two workers on one identity, and an
// identity asked for again while it runs runs once more after); workers
// drain it. An identity whose refresh hangs holds one worker for at most the
// call timeout; the others go on.
//
// client-go's delaying queue (AddAfter) is not used for the schedule: it
// keeps its own heap entry and map entry per waiting item, wakes every 10 s
// even when idle, and cannot move an item later, which a reschedule after a
// resync needs.
type scheduler struct {
	clock   clock.WithTicker
	queue   workqueue.TypedInterface[*identity]
	base    context.Context
	log     *slog.Logger
	workers int
	// run is one turn of an identity's refresher; forget drops an
	// identity whose turn panicked.
	run    func(ctx context.Context, x *identity, full bool, trigger string)
	forget func(x *identity)

	mu   sync.Mutex // guards heap and every identity's sched
	heap schedHeap
	wake chan struct{} // a new earliest time; buffered 1
}

// schedState is an identity's place on the schedule, guarded by the
// scheduler's lock.
type schedState struct {
	index int       // in the heap; -1 when not in it
	at    time.Time // when the next turn is due
	full  bool      // the next scheduled turn is a full refresh
	// started: on the schedule since its first successful read; stopped:
	// forgotten, never scheduled again; resync: a resync was asked for.
	started, stopped, resync bool
	// cancel ends the turn in flight, if any.
	cancel context.CancelFunc
}

func newScheduler(base context.Context, c clock.WithTicker, workers int, log *slog.Logger,
	run func(context.Context, *identity, bool, string), forget func(*identity)) *scheduler {
	return &scheduler{
		clock: c, base: base, log: log, workers: max(workers, 1), run: run, forget: forget,
		queue: workqueue.NewTyped[*identity](),
		wake:  make(chan struct{}, 1),
	}
}

// Start runs the dispatcher and the workers on wg until the base context
// ends and shutdown is called.
func (s *scheduler) Start(wg *sync.WaitGroup) {
	wg.Go(s.dispatch)
	for range s.workers {
		wg.Go(func() {
			for {
				x, quit := s.queue.Get()
				if quit {
					return
				}
				s.turn(x)
				s.queue.Done(x)
			}
		})
	}
}

// shutdown lets the workers return once the queue is empty (the base
// context is cancelled first, so what is left is skipped).
func (s *scheduler) shutdown() { s.queue.ShutDown() }

// dispatch moves due identities to the work queue and sleeps until the next
// one is due, or a sooner one is scheduled.
func (s *scheduler) dispatch() {
	for {
		s.mu.Lock()
		now := s.clock.Now()
		for len(s.heap) > 0 && !s.heap[0].sched.at.After(now) {
			s.queue.Add(heap.Pop(&s.heap).(*identity))
		}
		next := time.Duration(-1)
		if len(s.heap) > 0 {
			next = s.heap[0].sched.at.Sub(now)
		}
		s.mu.Unlock()
		var (
			t    clock.Timer
			tick <-chan time.Time
		)
		if next >= 0 {
			t = s.clock.NewTimer(next)
			tick = t.C()
		}
		select {
		case <-s.base.Done():
			if t != nil {
				t.Stop()
			}
			return
		case <-tick:
		case <-s.wake:
			if t != nil {
				t.Stop()
			}
		}
	}
}

// turn runs one turn of x's refresher, unless x was stopped or is already
// rescheduled (a resync ran first).
func (s *scheduler) turn(x *identity) {
	if s.base.Err() != nil {
		return
	}
	s.mu.Lock()
	st := &x.sched
	if st.stopped || !st.started {
		s.mu.Unlock()
		return
	}
	full, trigger := st.full, "schedule"
	switch {
	case st.resync:
		st.resync = false
		full, trigger = true, "event"
		if st.index >= 0 {
			heap.Remove(&s.heap, st.index)
		}
	case st.index >= 0:
		s.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(s.base)
	st.cancel = cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		st.cancel = nil
		s.mu.Unlock()
		cancel()
		if p := recover(); p != nil {
			s.log.Error("panic in an identity's refresher; forgetting it", "identity", x.Key, "panic", fmt.Sprint(p))
			s.forget(x)
		}
	}()
	s.run(ctx, x, full, trigger)
}

// claim puts x on the schedule for the first time; false if it already is,
// or was stopped.
func (s *scheduler) claim(x *identity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if x.sched.started || x.sched.stopped {
		return false
	}
	x.sched.started = true
	return true
}

// schedule sets x's next turn: at, a full refresh or not. A resync asked for
// meanwhile runs first.
func (s *scheduler) schedule(x *identity, at time.Time, full bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &x.sched
	if st.stopped {
		return
	}
	st.at, st.full = at, full
	if st.index >= 0 {
		heap.Fix(&s.heap, st.index)
	} else {
		heap.Push(&s.heap, x)
	}
	if st.resync {
		s.queue.Add(x)
	}
	if st.index == 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// resync asks x's refresher to re-read now (a full refresh, trigger
// event). Before x is on the schedule it is remembered for its first turn.
func (s *scheduler) resync(x *identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if x.sched.stopped {
		return
	}
	x.sched.resync = true
	if x.sched.started {
		s.queue.Add(x)
	}
}

// stop takes x off the schedule for good and cancels its turn in flight.
func (s *scheduler) stop(x *identity) {
	s.mu.Lock()
	st := &x.sched
	st.stopped = true
	if st.index >= 0 {
		heap.Remove(&s.heap, st.index)
	}
	cancel := st.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// schedHeap is a min-heap of identities by their next turn.
type schedHeap []*identity

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].sched.at.Before(h[j].sched.at) }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].sched.index = i
	h[j].sched.index = j
}

func (h *schedHeap) Push(v any) {
	x := v.(*identity)
	x.sched.index = len(*h)
	*h = append(*h, x)
}

func (h *schedHeap) Pop() any {
	old := *h
	n := len(old)
	x := old[n-1]
	old[n-1] = nil
	x.sched.index = -1
	*h = old[:n-1]
	return x
}
