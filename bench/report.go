package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
)

// fmtMs prints milliseconds at a readable scale.
func fmtMs(ms float64) string {
	switch {
	case ms <= 0:
		return "-"
	case ms < 1:
		return fmt.Sprintf("%.0fµs", ms*1000)
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.2fs", ms/1000)
	}
}

func fmtRatio(x float64) string {
	switch {
	case x == 0:
		return "-"
	case x >= 100:
		return fmt.Sprintf("%.0fx", x)
	case x >= 0.1:
		return fmt.Sprintf("%.2fx", x)
	default:
		return fmt.Sprintf("%.4fx", x)
	}
}

// fmtDelta prints a latency difference with its sign.
func fmtDelta(ms float64) string {
	if ms < 0 {
		return "-" + fmtMs(-ms)
	}
	if ms == 0 {
		return "0"
	}
	return "+" + fmtMs(ms)
}

func fmtCPU(us float64) string {
	if us >= 10000 {
		return fmt.Sprintf("%.1fms", us/1000)
	}
	return fmt.Sprintf("%.0fµs", us)
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report as tables.
func (r *Report) WriteText(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "credinject benchmark  %s  %s/%s  %d CPUs  GOMAXPROCS %d  %s\n", r.Started.Format("2006-01-02 15:04:05Z"), m.GOOS, m.GOARCH, m.NumCPU, m.GOMAXPROCS, m.Go)
	o := r.Options
	fmt.Fprintf(w, "%d identities; closed loop %d workers x %s per target in %d interleaved rounds (after %s warm-up); %d gRPC conns per target; timeout %s; bed+targets ready in %s\n",
		r.Identities, o.Concurrency, o.Duration, o.Rounds, o.Warmup, o.Conns, o.Timeout, r.BedSetup)
	fmt.Fprintf(w, "idle CPU, subtracted from every cpu/req: this process %.1f ms/s, bed (%d processes) %.1f ms/s\n\n", r.IdleCPU.Process, r.IdleCPU.BedProcs, r.IdleCPU.Bed)

	fmt.Fprintln(w, "CLOSED LOOP")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tok/s\tp50\tp90\tp99\tp99.9\tmax\tcpu/req proc\tcpu/req bed\terrors\t")
	for _, c := range r.Closed {
		fmt.Fprintf(tw, "%s\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", c.Target, c.Throughput,
			fmtMs(c.Latency.P50), fmtMs(c.Latency.P90), fmtMs(c.Latency.P99), fmtMs(c.Latency.P999), fmtMs(c.Latency.Max),
			fmtCPU(c.CPU.Process), fmtCPU(c.CPU.Bed), c.ErrorCount())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if noop := r.ClosedFor(TargetNoop); noop != nil {
		for _, c := range r.Closed {
			if c.Target != TargetNoop && c.CPU.Process > 0 && !slices.Contains(GatewayTargets, c.Target) {
				fmt.Fprintf(w, "  %s: %+.0fµs of CPU per request in this process compared with noop, %+.0fµs in the bed\n",
					c.Target, c.CPU.Process-noop.CPU.Process, c.CPU.Bed-noop.CPU.Bed)
			}
		}
	}

	if r.Ratios.VsNoop != nil || r.Ratios.VsReference != nil {
		fmt.Fprintln(w, "\nRATIOS (credinject / other, closed loop)")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "\tthroughput\tp50\t")
		if x := r.Ratios.VsNoop; x != nil {
			fmt.Fprintf(tw, "credinject / noop\t%s\t%s\t\n", fmtRatio(x.Throughput), fmtRatio(x.P50))
		}
		if x := r.Ratios.VsReference; x != nil {
			fmt.Fprintf(tw, "credinject / reference\t%s\t%s\t\n", fmtRatio(x.Throughput), fmtRatio(x.P50))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if len(r.AddedToGateway) > 0 || r.Ratios.GatewayVsNoop != nil || r.Ratios.GatewayVsReference != nil || r.Ratios.GatewayHTTPVsNoop != nil {
		fmt.Fprintln(w, "\nBEHIND ENVOY (closed loop: client -> Envoy -> echo upstream; added = this target minus envoy alone)")
		if base := r.ClosedFor(GatewayNone); base != nil {
			tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "target\tok/s\tp50\tp99\tadded p50\tadded p99\t")
			fmt.Fprintf(tw, "%s\t%.1f\t%s\t%s\t-\t-\t\n", base.Target, base.Throughput, fmtMs(base.Latency.P50), fmtMs(base.Latency.P99))
			for _, a := range r.AddedToGateway {
				c := r.ClosedFor(a.Target)
				fmt.Fprintf(tw, "%s\t%.1f\t%s\t%s\t%s\t%s\t\n", c.Target, c.Throughput, fmtMs(c.Latency.P50), fmtMs(c.Latency.P99), fmtDelta(a.P50), fmtDelta(a.P99))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "\tthroughput\tp50\t")
		for _, x := range []struct {
			name string
			r    *Ratio
		}{
			{"envoy+credinject-grpc / envoy+noop", r.Ratios.GatewayVsNoop},
			{"envoy+credinject-http / envoy+noop", r.Ratios.GatewayHTTPVsNoop},
			{"envoy+credinject-grpc / envoy+reference", r.Ratios.GatewayVsReference},
		} {
			if x.r != nil {
				fmt.Fprintf(tw, "%s\t%s\t%s\t\n", x.name, fmtRatio(x.r.Throughput), fmtRatio(x.r.P50))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if len(r.Sweep) > 0 {
		fmt.Fprintln(w, "\nOPEN-LOOP SWEEP (latency from the intended send time; svc = from the actual send)")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "target\toffered/s\tok/s\tp50\tp90\tp99\tp99.9\tmax\tsvc p50\tsvc p99\tcpu/req proc\terrors\t")
		for _, s := range r.Sweep {
			svc := Percentiles{}
			if s.Service != nil {
				svc = *s.Service
			}
			fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", s.Target, s.OfferedRate, s.Throughput,
				fmtMs(s.Latency.P50), fmtMs(s.Latency.P90), fmtMs(s.Latency.P99), fmtMs(s.Latency.P999), fmtMs(s.Latency.Max),
				fmtMs(svc.P50), fmtMs(svc.P99), fmtCPU(s.CPU.Process), s.ErrorCount())
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w, "\nERRORS (by status/reason; wrong_key = an allow with a key not the identity's own)")
	found := false
	for _, res := range append(slices.Clone(r.Closed), r.Sweep...) {
		if len(res.Errors) == 0 {
			continue
		}
		found = true
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(res.Errors)) {
			parts = append(parts, fmt.Sprintf("%s=%d", k, res.Errors[k]))
		}
		step := "closed"
		if res.Mode == "open" {
			step = fmt.Sprintf("open %.1f/s", res.OfferedRate)
		}
		fmt.Fprintf(w, "  %-21s %-16s %s\n", res.Target, step, strings.Join(parts, " "))
	}
	if !found {
		fmt.Fprintln(w, "  none")
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nNOTES")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	return nil
}
