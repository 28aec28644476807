package watcher

import (
	"container/heap"
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/internal/panics"
)

// scheduler is the executor: the one place credential work runs. Every
// request (a miss, an event, a prefetch, a route change, the schedule
// itself) is added to the identity's pending requests and the identity to
// one client-go work queue, drained by a fixed pool of workers: a key
// waiting in the queue is there once however often it is added (requests
// coalesce), a key is never processed by two workers at once (an identity's
// state has one writer, and a read that starts later stores later), and the
// number of workers is the bound on concurrent Vault calls. At 100,000
// identities per replica this costs no goroutine per identity; one whose
// Vault calls hang holds one worker for at most the call timeout.
//
// The schedule is a timer heap on the injected clock: one goroutine waits
// for the earliest due identity and adds it to the queue with a scheduled
// request. client-go's delaying queue (AddAfter) is not used for it: it
// keeps its own heap entry and map entry per waiting item, wakes every 10 s
// even when idle, and cannot move an item later, which a reschedule after a
// resync needs.
type scheduler struct {
	clock   clock.WithTicker
	queue   workqueue.TypedInterface[*identity]
	base    context.Context
	log     *slog.Logger
	workers int
	// run is one run of an identity (refresh.go); due asks for an
	// identity's scheduled turn (full: a full refresh); forget drops an
	// identity whose run panicked.
	run    func(ctx context.Context, x *identity)
	due    func(x *identity, full bool)
	forget func(x *identity)
	panics *panics.Counter

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
	// stopped: let go, never scheduled again.
	stopped bool
	// cancel ends the run in flight, if any.
	cancel context.CancelFunc
}

func newScheduler(base context.Context, c clock.WithTicker, workers int, log *slog.Logger, pc *panics.Counter,
	run func(context.Context, *identity), due func(*identity, bool), forget func(*identity)) *scheduler {
	return &scheduler{
		clock: c, base: base, log: log, workers: max(workers, 1), run: run, due: due, forget: forget, panics: pc,
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

// add queues a run of x (its pending requests were recorded first).
func (s *scheduler) add(x *identity) { s.queue.Add(x) }

// shutdown lets the workers return once the queue is empty (the base
// context is cancelled first, so what is left is skipped).
func (s *scheduler) shutdown() { s.queue.ShutDown() }

// dispatch asks for the turns of due identities and sleeps until the next
// one is due, or a sooner one is scheduled.
func (s *scheduler) dispatch() {
	type turn struct {
		x    *identity
		full bool
	}
	var due []turn
	for {
		s.mu.Lock()
		now := s.clock.Now()
		for len(s.heap) > 0 && !s.heap[0].sched.at.After(now) {
			x := heap.Pop(&s.heap).(*identity)
			due = append(due, turn{x, x.sched.full})
		}
		next := time.Duration(-1)
		if len(s.heap) > 0 {
			next = s.heap[0].sched.at.Sub(now)
		}
		s.mu.Unlock()
		for i, d := range due {
			s.due(d.x, d.full)
			due[i] = turn{}
		}
		due = due[:0]
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

// turn runs x's pending requests, unless x was let go before (its run then
// only releases what it holds).
func (s *scheduler) turn(x *identity) {
	if s.base.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(s.base)
	s.mu.Lock()
	if x.sched.stopped {
		cancel()
		ctx = s.base
	} else {
		x.sched.cancel = cancel
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		x.sched.cancel = nil
		s.mu.Unlock()
		cancel()
		if err := panics.Recovered(s.panics, "watcher", recover()); err != nil {
			s.log.Error("panic in an identity's run; forgetting it", "identity", x.Key(), "err", err)
			s.forget(x)
		}
	}()
	s.run(ctx, x)
}

// schedule sets x's next turn: at, a full refresh or not.
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
	if st.index == 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// stop takes x off the schedule for good and cancels its run in flight.
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
