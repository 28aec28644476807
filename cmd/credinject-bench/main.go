// Command credinject-bench runs credinject's benchmark: it starts the test
// bed (kube-apiserver, etcd, Vault, NATS on loopback), creates the
// identities, starts the targets (noop, credinject, reference) in this
// process, and the same behind a real Envoy (envoy alone, envoy+noop,
// envoy+credinject-grpc, envoy+credinject-http, envoy+reference, each a
// workload's HTTP request to an echo upstream), drives each with the same load
// (closed loop, then an open-loop sweep), and writes the results as a table
// (stdout and results.txt), JSON (results.json) and latency-vs-rate plots
// (latency-vs-rate.png, gateway-latency-vs-rate.png).
//
// It is a binary of its own so that its plotting libraries never link into
// credinject.
//
//	go run ./cmd/credinject-bench [--duration 6s] [--concurrency 32] [--identities 100]
//	    [--rates 10%,25%,50%,65%,80%] [--targets noop,credinject,reference,envoy,envoy+noop,…] [--out DIR]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/credinject/credinject/bench"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "credinject-bench:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	def := bench.DefaultOptions()
	fs := flag.NewFlagSet("credinject-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", def.Duration, "closed-loop measurement per target (split over --rounds)")
	warmup := fs.Duration("warmup", def.Warmup, "closed-loop warm-up per target, not measured")
	rounds := fs.Int("rounds", def.Rounds, "split --duration into rounds that interleave the targets")
	concurrency := fs.Int("concurrency", def.Concurrency, "closed-loop workers")
	identities := fs.Int("identities", def.Identities, "distinct workload identities (ServiceAccounts with their own key)")
	perNS := fs.Int("per-namespace", def.PerNamespace, "identities per namespace")
	conns := fs.Int("conns", def.Conns, "gRPC connections per target (a gateway opens one per worker thread)")
	timeout := fs.Duration("timeout", def.Timeout, "timeout of one Check")
	rates := fs.String("rates", "10%,25%,50%,65%,80%", "open-loop sweep: percentages of each target's closed-loop throughput, or requests/s; empty: no sweep")
	step := fs.Duration("step", def.Step, "open-loop step duration (low rates run longer, to ~50 requests, up to 8s)")
	maxInFlight := fs.Int("max-inflight", def.MaxInFlight, "open loop: most outstanding requests")
	targets := fs.String("targets", strings.Join(def.Targets, ","), "targets to run: "+strings.Join(def.Targets, ", "))
	refQPS := fs.Float64("reference-qps", bench.ReferenceQPS, "reference: QPS of its Kubernetes client (Authorino's default 20; client-go's 5)")
	refBurst := fs.Int("reference-burst", bench.ReferenceBurst, "reference: burst of its Kubernetes client (Authorino's default 30; client-go's 10)")
	out := fs.String("out", "", "results folder (default bench/results/<timestamp>)")
	logLevel := fs.String("log-level", "warn", "log level of credinject and the harness (stderr)")
	replot := fs.String("replot", "", "only redraw latency-vs-rate.png beside this results.json")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (bed setup included) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *replot != "" {
		b, err := os.ReadFile(*replot)
		if err != nil {
			return err
		}
		var rep bench.Report
		if err := json.Unmarshal(b, &rep); err != nil {
			return fmt.Errorf("%s: %w", *replot, err)
		}
		return plotAll(&rep, filepath.Dir(*replot))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	opts := def
	opts.Rounds = *rounds
	opts.Duration, opts.Warmup, opts.Concurrency, opts.Identities, opts.PerNamespace = *duration, *warmup, *concurrency, *identities, *perNS
	opts.Conns, opts.Timeout, opts.Step, opts.MaxInFlight = *conns, *timeout, *step, *maxInFlight
	opts.ReferenceQPS, opts.ReferenceBurst = float32(*refQPS), *refBurst
	var err error
	if opts.Rates, err = bench.ParseRates(*rates); err != nil {
		return fmt.Errorf("--rates: %w", err)
	}
	opts.Targets = nil
	for t := range strings.SplitSeq(*targets, ",") {
		if t = strings.TrimSpace(t); t != "" {
			opts.Targets = append(opts.Targets, t)
		}
	}
	if opts.Identities <= 0 || opts.Concurrency <= 0 || opts.Duration <= 0 || opts.Conns <= 0 || opts.Timeout <= 0 || opts.Step <= 0 || opts.Rounds <= 0 {
		return fmt.Errorf("--identities, --concurrency, --duration, --rounds, --conns, --timeout and --step must be positive")
	}
	opts.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	opts.Progress = stderr

	dir := *out
	if dir == "" {
		dir = filepath.Join("bench", "results", time.Now().UTC().Format("20060102T150405Z"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if os.Getenv("CREDINJECT_TESTENV_QUIET") == "" {
		os.Setenv("CREDINJECT_TESTENV_QUIET", "1")
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t0 := time.Now()
	rep, err := bench.Run(ctx, opts)
	if err != nil {
		return err
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		return err
	}
	fmt.Fprintf(&text, "\nfiles: %s\n", dir)
	if _, err := stdout.Write(text.Bytes()); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.txt"), text.Bytes(), 0o644); err != nil {
		return err
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), js.Bytes(), 0o644); err != nil {
		return err
	}
	if err := plotAll(rep, dir); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	fmt.Fprintf(stderr, "done in %v; results in %s\n", time.Since(t0).Round(time.Second), dir)
	return nil
}
