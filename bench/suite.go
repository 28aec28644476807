package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/credinject/credinject/internal/testenv"
)

// Target names.
const (
	TargetNoop       = "noop"
	TargetCredinject = "credinject"
	TargetReference  = "reference"
)

// AllTargets are the direct (gRPC Check) targets, in the order they run.
var AllTargets = []string{TargetNoop, TargetCredinject, TargetReference}

// knownTargets is every target a run may name.
func knownTargets() []string { return append(slices.Clone(AllTargets), GatewayTargets...) }

// Rate is one step of the open-loop sweep: a fraction of the target's
// measured closed-loop throughput, or a fixed rate.
type Rate struct {
	Fraction  float64 `json:"fraction,omitempty"`
	PerSecond float64 `json:"perSecond,omitempty"`
}

func (r Rate) String() string {
	if r.Fraction > 0 {
		return strconv.FormatFloat(r.Fraction*100, 'f', -1, 64) + "%"
	}
	return strconv.FormatFloat(r.PerSecond, 'f', -1, 64)
}

// of is the rate for a target whose closed-loop throughput is max.
func (r Rate) of(max float64) float64 {
	if r.Fraction > 0 {
		return r.Fraction * max
	}
	return r.PerSecond
}

// ParseRates reads "10%,25%,500": percentages of each target's closed-loop
// throughput, or plain requests per second.
func ParseRates(s string) ([]Rate, error) {
	var rs []Rate
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		pct, isPct := strings.CutSuffix(f, "%")
		v, err := strconv.ParseFloat(pct, 64)
		if err != nil || v <= 0 || math.IsInf(v, 0) {
			return nil, fmt.Errorf("rate %q: want a positive number or percentage", f)
		}
		if isPct {
			rs = append(rs, Rate{Fraction: v / 100})
		} else {
			rs = append(rs, Rate{PerSecond: v})
		}
	}
	return rs, nil
}

// Options configure a full run.
type Options struct {
	// Targets to run, from AllTargets.
	Targets []string
	// Identities and how many share a namespace.
	Identities   int
	PerNamespace int
	// Closed loop: Concurrency workers for Duration per target, after
	// Warmup (same load, not measured).
	Concurrency int
	Duration    time.Duration
	Warmup      time.Duration
	// Rounds splits Duration into rounds that interleave the targets.
	Rounds int
	// Conns is the number of gRPC connections to each target.
	Conns int
	// Timeout bounds one Check.
	Timeout time.Duration
	// Sweep: each Rate for Step (longer at low rates, see stepFor).
	Rates       []Rate
	Step        time.Duration
	MaxInFlight int
	// IdleSample is how long the idle CPU is measured before the runs.
	IdleSample time.Duration
	// ReferenceQPS and ReferenceBurst limit the reference's Kubernetes
	// client (0: Authorino's defaults).
	ReferenceQPS   float32
	ReferenceBurst int
	// Log receives credinject's and the bed's logs; Progress one line per
	// step.
	Log      *slog.Logger
	Progress io.Writer
}

// DefaultOptions fit a full run (bed start, three direct targets and five
// behind Envoy, sweep) in about five minutes on two cores.
func DefaultOptions() Options {
	return Options{
		Targets: knownTargets(), Identities: 100, PerNamespace: 10,
		Concurrency: 32, Duration: 9 * time.Second, Warmup: time.Second, Rounds: 6, Conns: 2,
		Timeout: 5 * time.Second,
		Rates:   []Rate{{Fraction: .1}, {Fraction: .25}, {Fraction: .5}, {Fraction: .65}, {Fraction: .8}},
		Step:    3 * time.Second, MaxInFlight: 1024, IdleSample: 2 * time.Second,
	}
}

// Machine describes where a run happened.
type Machine struct {
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	NumCPU     int    `json:"numCPU"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	Go         string `json:"go"`
	Hostname   string `json:"hostname"`
}

// Ratios compare credinject with the other targets.
type Ratios struct {
	// Throughput and P50 are credinject's value divided by the other's.
	VsNoop      *Ratio `json:"credinjectVsNoop,omitempty"`
	VsReference *Ratio `json:"credinjectVsReference,omitempty"`
	// Behind Envoy: credinject over gRPC ext_authz divided by the noop
	// authorizer's and by the reference flow's, and over HTTP by noop's.
	GatewayVsNoop      *Ratio `json:"envoyCredinjectGRPCVsNoop,omitempty"`
	GatewayVsReference *Ratio `json:"envoyCredinjectGRPCVsReference,omitempty"`
	GatewayHTTPVsNoop  *Ratio `json:"envoyCredinjectHTTPVsNoop,omitempty"`
}

// Added is the latency a behind-Envoy target adds to Envoy alone (closed
// loop, milliseconds).
type Added struct {
	Target string  `json:"target"`
	P50    float64 `json:"p50"`
	P99    float64 `json:"p99"`
}

// Ratio is credinject's value over another target's.
type Ratio struct {
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50"`
}

// IdleCPU is the CPU used with no load, in ms per second, subtracted from
// every run's CPU figures.
type IdleCPU struct {
	Process  float64 `json:"processMsPerSecond"`
	Bed      float64 `json:"bedMsPerSecond"`
	BedProcs int     `json:"bedProcesses"`
}

// Report is a full run.
type Report struct {
	Started    time.Time `json:"started"`
	Machine    Machine   `json:"machine"`
	Identities int       `json:"identities"`
	Options    struct {
		Concurrency    int     `json:"concurrency"`
		Duration       string  `json:"duration"`
		Rounds         int     `json:"rounds"`
		Warmup         string  `json:"warmup"`
		Conns          int     `json:"conns"`
		Timeout        string  `json:"timeout"`
		Rates          []Rate  `json:"rates"`
		Step           string  `json:"step"`
		ReferenceQPS   float32 `json:"referenceQPS"`
		ReferenceBurst int     `json:"referenceBurst"`
	} `json:"options"`
	BedSetup string    `json:"bedSetup"`
	IdleCPU  IdleCPU   `json:"idleCPU"`
	Closed   []*Result `json:"closed"`
	Sweep    []*Result `json:"sweep"`
	Ratios   Ratios    `json:"ratios"`
	// AddedToGateway is what each ext_authz target adds to Envoy alone.
	AddedToGateway []Added  `json:"addedToGateway,omitempty"`
	Notes          []string `json:"notes"`
}

// ClosedFor returns the closed-loop result of target, or nil.
func (r *Report) ClosedFor(target string) *Result {
	for _, c := range r.Closed {
		if c.Target == target {
			return c
		}
	}
	return nil
}

type running struct {
	target *Target
	close  func()
}

// Run starts the bed, the identities and the targets, runs the closed loops
// and the sweep, and stops everything.
func Run(ctx context.Context, opts Options) (rep *Report, err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if len(opts.Targets) == 0 {
		return nil, ErrNoTargets
	}
	for i, t := range opts.Targets {
		if !slices.Contains(knownTargets(), t) {
			return nil, fmt.Errorf("bench: unknown target %q (have %s)", t, strings.Join(knownTargets(), ", "))
		}
		if slices.Contains(opts.Targets[:i], t) {
			return nil, fmt.Errorf("bench: target %q named twice", t)
		}
	}
	if opts.ReferenceQPS == 0 {
		opts.ReferenceQPS, opts.ReferenceBurst = ReferenceQPS, ReferenceBurst
	}
	progress := func(format string, a ...any) { fmt.Fprintf(opts.Progress, format+"\n", a...) }

	rep = &Report{Started: time.Now().UTC(), Machine: machine(), Identities: opts.Identities}
	rep.Options.Concurrency, rep.Options.Duration, rep.Options.Warmup, rep.Options.Rounds = opts.Concurrency, opts.Duration.String(), opts.Warmup.String(), max(opts.Rounds, 1)
	rep.Options.Conns, rep.Options.Timeout, rep.Options.Rates, rep.Options.Step = opts.Conns, opts.Timeout.String(), opts.Rates, opts.Step.String()
	rep.Options.ReferenceQPS, rep.Options.ReferenceBurst = opts.ReferenceQPS, opts.ReferenceBurst

	t0 := time.Now()
	dir, err := os.MkdirTemp("", "credinject-bench-")
	if err != nil {
		return nil, err
	}
	progress("bed: starting kube-apiserver, etcd, Vault, NATS in %s", dir)
	env, err := testenv.Start(ctx, dir, testenv.All)
	if err != nil {
		return nil, fmt.Errorf("bench: bed (logs kept in %s): %w", dir, err)
	}
	defer func() {
		env.Stop()
		if err == nil {
			_ = os.RemoveAll(dir)
		}
	}()
	ids, err := CreateIdentities(ctx, env, opts.Identities, opts.PerNamespace)
	if err != nil {
		return nil, err
	}
	progress("bed: %d identities in %d namespaces, keys in Vault (%v)", len(ids), (len(ids)+opts.PerNamespace-1)/opts.PerNamespace, time.Since(t0).Round(time.Millisecond))

	targets := map[string]*running{}
	back := &backends{env: env, opts: opts, dir: dir}
	defer func() {
		for _, r := range targets {
			r.close()
		}
		if e := back.stop(); e != nil && err == nil {
			err = e
		}
	}()
	for _, name := range opts.Targets {
		r, err := back.start(ctx, name, ids)
		if err != nil {
			return nil, err
		}
		targets[name] = r
	}
	rep.BedSetup = time.Since(t0).Round(time.Millisecond).String()
	progress("targets ready: %s (%v)", strings.Join(opts.Targets, ", "), time.Since(t0).Round(time.Millisecond))

	// Measure CPU of the bed's server processes from here on: they are this
	// process's children.
	meter := NewCPUMeter()
	if err := meter.MeasureIdle(ctx, opts.IdleSample); err != nil {
		return nil, err
	}
	rep.IdleCPU = IdleCPU{Process: meter.Idle.Process.Seconds() * 1000, Bed: meter.Idle.Bed.Seconds() * 1000, BedProcs: len(meter.Bed)}
	reqs := NewRequests(ids)
	// Rounds interleave the targets, so that a disturbance (the bed
	// settling, a neighbour's burst of CPU) is shared rather than landing on
	// one target.
	rounds := max(opts.Rounds, 1)
	closed := Closed{Concurrency: opts.Concurrency, Duration: opts.Duration / time.Duration(rounds), Timeout: opts.Timeout}
	parts := map[string][]*Result{}
	for round := range rounds {
		for _, name := range opts.Targets {
			t := targets[name].target
			if round == 0 && opts.Warmup > 0 {
				w := closed
				w.Duration = opts.Warmup
				if _, err := RunClosed(ctx, t, reqs, w, meter); err != nil {
					return nil, err
				}
			}
			res, err := RunClosed(ctx, t, reqs, closed, meter)
			if err != nil {
				return nil, err
			}
			parts[name] = append(parts[name], res)
			progress("closed %-21s round %d/%d c=%d  %9.1f ok/s  p50 %s  p99 %s  errors %d", name, round+1, rounds, closed.Concurrency, res.Throughput, fmtMs(res.Latency.P50), fmtMs(res.Latency.P99), res.ErrorCount())
		}
	}
	for _, name := range opts.Targets {
		rep.Closed = append(rep.Closed, Merge(parts[name]...))
	}
	rep.Ratios = ratios(rep)
	rep.AddedToGateway = added(rep)

	for _, name := range opts.Targets {
		t := targets[name].target
		maxRate := rep.ClosedFor(name).Throughput
		for _, rt := range opts.Rates {
			rate := rt.of(maxRate)
			if rate <= 0 {
				continue
			}
			o := Open{Rate: rate, Duration: stepFor(opts.Step, rate), Timeout: opts.Timeout, MaxInFlight: opts.MaxInFlight}
			res, err := RunOpen(ctx, t, reqs, o, meter)
			if err != nil {
				return nil, err
			}
			rep.Sweep = append(rep.Sweep, res)
			progress("open   %-21s %6s = %9.1f/s  p50 %s  p99 %s  errors %d", name, rt, rate, fmtMs(res.Latency.P50), fmtMs(res.Latency.P99), res.ErrorCount())
		}
	}
	rep.Notes = notes(rep, opts)
	return rep, nil
}

// stepFor lengthens low-rate steps to about 50 requests, up to 8 s.
func stepFor(step time.Duration, rate float64) time.Duration {
	want := time.Duration(50 / rate * float64(time.Second))
	return max(step, min(want, 8*time.Second))
}

// backends are the servers the targets share, started on first use: one
// noop server, one credinject, one reference server, one echo upstream, and
// an Envoy per gateway target.
type backends struct {
	env  *testenv.Env
	opts Options
	dir  string

	noop   *Server
	ci     *Credinject
	ref    *Server
	echo   *Echo
	envoys []*testenv.Envoy
}

func (b *backends) noopAddr() (string, error) {
	if b.noop == nil {
		s, err := Serve(NewNoop())
		if err != nil {
			return "", err
		}
		b.noop = s
	}
	return b.noop.Addr, nil
}

func (b *backends) credinject(ctx context.Context) (*Credinject, error) {
	if b.ci == nil {
		c, err := StartCredinject(ctx, b.env, CredinjectConfig(b.env), b.opts.Log.With("target", TargetCredinject))
		if err != nil {
			return nil, err
		}
		b.ci = c
	}
	return b.ci, nil
}

func (b *backends) referenceAddr() (string, error) {
	if b.ref == nil {
		ref, err := NewReference(ReferenceConfig{
			RestConfig: b.env.Kube.RestConfig(), QPS: b.opts.ReferenceQPS, Burst: b.opts.ReferenceBurst,
			Audiences: []string{testenv.Audience}, VaultAddr: b.env.Vault.Addr, AuthMount: testenv.VaultKubeMount,
			Role: testenv.VaultRole, KVMount: testenv.VaultKVMount,
		})
		if err != nil {
			return "", err
		}
		s, err := Serve(ref)
		if err != nil {
			return "", err
		}
		b.ref = s
	}
	return b.ref.Addr, nil
}

func (b *backends) echoAddr() (string, error) {
	if b.echo == nil {
		e, err := StartEcho()
		if err != nil {
			return "", err
		}
		b.echo = e
	}
	return b.echo.Addr, nil
}

// authzAddr is the address a target's Envoy (or gRPC client) talks to.
func (b *backends) authzAddr(ctx context.Context, name string) (string, error) {
	switch name {
	case TargetNoop, GatewayNoop:
		return b.noopAddr()
	case TargetCredinject, GatewayGRPC:
		c, err := b.credinject(ctx)
		if err != nil {
			return "", err
		}
		return c.Addr(), nil
	case GatewayHTTP:
		c, err := b.credinject(ctx)
		if err != nil {
			return "", err
		}
		return c.App.HTTPAddr(), nil
	case TargetReference, GatewayReference:
		return b.referenceAddr()
	}
	return "", nil // GatewayNone
}

func (b *backends) start(ctx context.Context, name string, ids []Identity) (*running, error) {
	addr, err := b.authzAddr(ctx, name)
	if err != nil {
		return nil, err
	}
	t := &Target{Name: name}
	var r *running
	if slices.Contains(GatewayTargets, name) {
		up, err := b.echoAddr()
		if err != nil {
			return nil, err
		}
		e, url, err := startGateway(ctx, b.dir, name, addr, up, b.opts.Timeout)
		if err != nil {
			return nil, err
		}
		b.envoys = append(b.envoys, e)
		t.Gateway = NewGateway(url, 2*b.opts.Concurrency)
		r = &running{target: t, close: t.Gateway.Close}
	} else {
		conns, err := Dial(ctx, addr, b.opts.Conns)
		if err != nil {
			return nil, err
		}
		t.Client = conns
		r = &running{target: t, close: conns.Close}
	}
	switch name {
	case TargetNoop, GatewayNoop:
		t.Want = func(*Identity) string { return NoopValue }
	case GatewayNone:
		// No authorizer: the workload's own token goes upstream.
		t.Want = func(id *Identity) string { return "Bearer " + id.Token }
	}
	if name == TargetCredinject || name == GatewayGRPC || name == GatewayHTTP {
		// Fill its caches: the run measures credinject as it serves, cache
		// first, not its first contact with each identity.
		if err := Warm(ctx, t, ids, time.Minute); err != nil {
			r.close()
			return nil, err
		}
	}
	return r, nil
}

func (b *backends) stop() error {
	var errs []error
	for _, e := range b.envoys {
		e.Stop()
	}
	if b.echo != nil {
		errs = append(errs, b.echo.Stop())
	}
	if b.noop != nil {
		errs = append(errs, b.noop.Stop())
	}
	if b.ref != nil {
		errs = append(errs, b.ref.Stop())
	}
	if b.ci != nil {
		errs = append(errs, b.ci.Stop())
	}
	return errors.Join(errs...)
}

func ratios(rep *Report) Ratios {
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	of := func(a, o *Result) *Ratio {
		if a == nil || o == nil {
			return nil
		}
		return &Ratio{Throughput: div(a.Throughput, o.Throughput), P50: div(a.Latency.P50, o.Latency.P50)}
	}
	ci, gc, gh := rep.ClosedFor(TargetCredinject), rep.ClosedFor(GatewayGRPC), rep.ClosedFor(GatewayHTTP)
	return Ratios{
		VsNoop: of(ci, rep.ClosedFor(TargetNoop)), VsReference: of(ci, rep.ClosedFor(TargetReference)),
		GatewayVsNoop: of(gc, rep.ClosedFor(GatewayNoop)), GatewayVsReference: of(gc, rep.ClosedFor(GatewayReference)),
		GatewayHTTPVsNoop: of(gh, rep.ClosedFor(GatewayNoop)),
	}
}

// added is the latency each behind-Envoy ext_authz target adds to Envoy
// alone, closed loop.
func added(rep *Report) []Added {
	base := rep.ClosedFor(GatewayNone)
	if base == nil {
		return nil
	}
	var out []Added
	for _, name := range GatewayTargets[1:] {
		if c := rep.ClosedFor(name); c != nil {
			out = append(out, Added{Target: name, P50: c.Latency.P50 - base.Latency.P50, P99: c.Latency.P99 - base.Latency.P99})
		}
	}
	return out
}

func notes(rep *Report, opts Options) []string {
	n := []string{
		fmt.Sprintf("Load generator and targets share this process and its %d CPUs (GOMAXPROCS %d); the bed's servers run beside them.", rep.Machine.NumCPU, rep.Machine.GOMAXPROCS),
		"cpu/req proc is this whole process per answered request (load generator + target); subtract noop's to estimate a target's own server cost. cpu/req bed is kube-apiserver + etcd + Vault. Idle CPU is subtracted; at low rates (the reference, the sweep's first steps) the figure still carries the Go runtime's per-wake-up costs, so compare CPU at saturation (closed loop).",
		"Latency counts correct allows only; an allow with another identity's key is the error wrong_key, a deny is counted by status/reason.",
		"Open loop: latency from each request's intended send time (no coordinated omission).",
		fmt.Sprintf("reference: TokenReview via client-go at QPS %g / burst %d (Authorino's --kube-client-qps/--kube-client-burst defaults), then Vault login and read, per request, no cache.", opts.ReferenceQPS, opts.ReferenceBurst),
		"credinject: default configuration, tokenreview mode, warmed (token results cached 30s, credentials refreshed in the background); a cached token result that expires costs one TokenReview on the request path.",
	}
	if slices.ContainsFunc(opts.Targets, func(t string) bool { return slices.Contains(GatewayTargets, t) }) {
		n = append(n, fmt.Sprintf("envoy*: a workload's HTTP POST through a real Envoy %s (deploy/envoy/envoy-grpc.yaml or envoy-http.yaml as shipped, --concurrency 1, ext_authz timeout raised to %s) to an echo upstream that reports the authorization it received; 'envoy' has no ext_authz filter. One Envoy per target, all on the same 2 cores as everything else.", testenv.EnvoyVersion, opts.Timeout))
		n = append(n, goals(rep)...)
	}
	for _, r := range append(slices.Clone(rep.Closed), rep.Sweep...) {
		if r.Errors[ErrWrongKey] > 0 {
			n = append(n, fmt.Sprintf("WRONG KEYS: %s answered %d requests with a key that is not the identity's own.", r.Target, r.Errors[ErrWrongKey]))
		}
	}
	return n
}

// goals states the behind-Envoy goals and whether this run met them.
func goals(rep *Report) []string {
	var n []string
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	if r := rep.Ratios.GatewayVsNoop; r != nil {
		n = append(n, fmt.Sprintf("goal envoy+credinject-grpc >= 0.9 x envoy+noop in throughput: %.2fx, %s; p50 <= 1.1 x envoy+noop's: %.2fx, %s.",
			r.Throughput, verdict(r.Throughput >= 0.9), r.P50, verdict(r.P50 <= 1.1)))
	}
	if r := rep.Ratios.GatewayVsReference; r != nil {
		n = append(n, fmt.Sprintf("goal envoy+credinject-grpc >= 100 x envoy+reference in throughput: %.0fx, %s.", r.Throughput, verdict(r.Throughput >= 100)))
	}
	return n
}

func machine() Machine {
	h, _ := os.Hostname()
	return Machine{GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, NumCPU: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), Go: runtime.Version(), Hostname: h}
}

// ErrNoTargets is returned when no target is selected.
var ErrNoTargets = errors.New("bench: no targets")
