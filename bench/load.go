package bench

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Target is an ext_authz server under load, seen from the client: called
// directly over gRPC (Client), or behind a gateway (Gateway: the workload's
// HTTP request through Envoy to an echo upstream).
type Target struct {
	Name    string
	Client  authv3.AuthorizationClient
	Gateway *Gateway
	// Want is the value an allow must inject for id (nil: "Bearer " +
	// id.APIKey).
	Want func(id *Identity) string
}

// next is the next identity and, for a gRPC target, its Check request (built
// outside the timed call, as a gateway builds it before sending).
func (t *Target) next(reqs *Requests) (*authv3.CheckRequest, *Identity) {
	if t.Gateway != nil {
		return nil, reqs.nextIdentity()
	}
	return reqs.Next()
}

// call sends one request and classifies its answer ("" = a correct allow);
// err is a transport error. A gRPC target without req builds one.
func (t *Target) call(ctx context.Context, req *authv3.CheckRequest, id *Identity) (string, error) {
	if t.Gateway != nil {
		return t.Gateway.Do(ctx, id, t.want(id))
	}
	if req == nil {
		req = NewCheckRequest(id, 0)
	}
	resp, err := t.Client.Check(ctx, req)
	return Classify(resp, err, t.want(id)), err
}

func (t *Target) want(id *Identity) string {
	if t.Want != nil {
		return t.Want(id)
	}
	return "Bearer " + id.APIKey
}

// Closed configures a closed-loop run: Concurrency workers, each sending its
// next request as soon as the previous one is answered, for Duration.
type Closed struct {
	Concurrency int
	Duration    time.Duration
	// Timeout bounds one Check (as the gateway's ext_authz timeout does).
	Timeout time.Duration
}

// Open configures an open-loop run: Rate requests/s sent on a fixed
// schedule for Duration, whatever the answers take.
type Open struct {
	Rate     float64
	Duration time.Duration
	Timeout  time.Duration
	// MaxInFlight bounds outstanding requests (the sender's connection
	// pool). A request that waits for a slot still counts its latency from
	// its intended send time.
	MaxInFlight int
}

var errConfig = errors.New("bench: bad load configuration")

// RunClosed runs a closed loop against t: workers stop sending after
// Duration and the run ends when the last answer is in, so every request sent
// is answered or counted as an error (a slow target is not cut short, and its
// throughput is answers over the whole run). Latency runs from send to
// answer.
func RunClosed(ctx context.Context, t *Target, reqs *Requests, cfg Closed, cpu *CPUMeter) (*Result, error) {
	if cfg.Concurrency <= 0 || cfg.Duration <= 0 || cfg.Timeout <= 0 {
		return nil, errConfig
	}
	tl := newTally(min(cfg.Concurrency, 64), false)
	var stop atomic.Bool
	end := time.AfterFunc(cfg.Duration, func() { stop.Store(true) })
	defer end.Stop()
	c0 := cpu.Sample()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		sh := tl.shard(w)
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				req, id := t.next(reqs)
				rctx, rcancel := context.WithTimeout(ctx, cfg.Timeout)
				t0 := time.Now()
				class, err := t.call(rctx, req, id)
				lat := time.Since(t0)
				rcancel()
				if err != nil && ctx.Err() != nil {
					sh.unanswered()
					return
				}
				sh.record(lat, lat, class)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	c1 := cpu.Sample()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := tl.result(t.Name, "closed", elapsed)
	r.Concurrency = cfg.Concurrency
	r.setCPU(cpu, c0, c1)
	return r, nil
}

// RunOpen runs an open loop against t: request i is due at start + i/Rate.
// The sender never waits for answers, so a stalled server cannot slow the
// schedule down (no coordinated omission); latency runs from the due time.
// Service time, from the actual send, is kept beside it: where the two part,
// requests waited in the sender (schedule slip or no free slot).
func RunOpen(ctx context.Context, t *Target, reqs *Requests, cfg Open, cpu *CPUMeter) (*Result, error) {
	if cfg.Rate <= 0 || cfg.Duration <= 0 || cfg.Timeout <= 0 || cfg.MaxInFlight <= 0 {
		return nil, errConfig
	}
	n := int(cfg.Rate * cfg.Duration.Seconds())
	if n < 1 {
		n = 1
	}
	workers := min(cfg.MaxInFlight, n)
	tl := newTally(min(workers, 64), true)
	due := make(chan time.Time, min(n, 1<<16))
	c0 := cpu.Sample()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		sh := tl.shard(w)
		wg.Go(func() {
			for at := range due {
				req, id := t.next(reqs)
				rctx, rcancel := context.WithTimeout(ctx, cfg.Timeout)
				sent := time.Now()
				class, err := t.call(rctx, req, id)
				done := time.Now()
				rcancel()
				if err != nil && ctx.Err() != nil {
					sh.unanswered()
					continue
				}
				sh.record(done.Sub(at), done.Sub(sent), class)
			}
		})
	}
	interval := float64(time.Second) / cfg.Rate
	timer := time.NewTimer(0)
	<-timer.C
dispatch:
	for i := range n {
		at := start.Add(time.Duration(float64(i) * interval))
		// Sleep only when ahead of the schedule; a late wake-up sends every
		// request that fell due meanwhile, each keeping its own due time.
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break dispatch
			}
		}
		select {
		case due <- at:
		case <-ctx.Done():
			break dispatch
		}
	}
	close(due)
	wg.Wait()
	elapsed := time.Since(start)
	c1 := cpu.Sample()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := tl.result(t.Name, "open", elapsed)
	r.OfferedRate = cfg.Rate
	r.setCPU(cpu, c0, c1)
	return r, nil
}
