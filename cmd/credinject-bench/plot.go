package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/credinject/credinject/bench"
)

var targetColors = map[string]color.RGBA{
	bench.TargetNoop:       {R: 0x70, G: 0x70, B: 0x70, A: 0xff},
	bench.TargetCredinject: {R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	bench.TargetReference:  {R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	bench.GatewayNone:      {R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	bench.GatewayNoop:      {R: 0x70, G: 0x70, B: 0x70, A: 0xff},
	bench.GatewayGRPC:      {R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	bench.GatewayHTTP:      {R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	bench.GatewayReference: {R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

// plots are the files drawn from a run's sweep: the direct gRPC Checks, and
// the same behind Envoy.
var plots = []struct {
	file    string
	targets []string
	title   string
	// legendX places the legend in the empty middle of the log rate axis;
	// compact gives it one line per target (five targets need it).
	legendX vg.Length
	compact bool
}{
	{"latency-vs-rate.png", bench.AllTargets, "ext_authz Check latency", 3.3 * vg.Inch, false},
	{"gateway-latency-vs-rate.png", bench.GatewayTargets, "Request latency through Envoy to an echo upstream", 0.3 * vg.Inch, true},
}

// plotAll draws each plot whose targets are in the sweep, into dir.
func plotAll(rep *bench.Report, dir string) error {
	for _, pl := range plots {
		if !slices.ContainsFunc(rep.Sweep, func(r *bench.Result) bool { return slices.Contains(pl.targets, r.Target) }) {
			continue
		}
		if err := plotSweep(rep, filepath.Join(dir, pl.file), pl.targets, pl.title, pl.legendX, pl.compact); err != nil {
			return fmt.Errorf("%s: %w", pl.file, err)
		}
	}
	return nil
}

// plotSweep draws p50 (solid) and p99 (dashed) latency against the offered
// rate for each of targets, both axes logarithmic: the targets are orders of
// magnitude apart on both.
func plotSweep(rep *bench.Report, file string, targets []string, title string, legendX vg.Length, compact bool) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s, from the intended send time, vs offered rate (open loop, %d identities, %d CPUs)", title, rep.Identities, rep.Machine.NumCPU)
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "offered rate (requests/s, log scale)"
	if compact {
		p.X.Label.Text += "; solid p50, dashed p99, dotted: closed-loop max"
	}
	// Short: gonum places a log axis's label box by the mean of the data
	// range, so a long label pads the top of the plot.
	p.Y.Label.Text = "ms (log)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = inRange{plot.LogTicks{Prec: -1}}, inRange{plot.LogTicks{Prec: -1}}
	p.Add(plotter.NewGrid())
	// The middle of the log rate axis is empty (the targets are far
	// apart): the legend goes there.
	p.Legend.Top, p.Legend.Left = false, true
	p.Legend.XOffs, p.Legend.YOffs = legendX, 0.1*vg.Inch
	if compact {
		// One line per target, at the top left: above the reference's
		// p99 and left of the fast targets there is room.
		p.Legend.Top, p.Legend.YOffs = true, -0.05*vg.Inch
	}
	p.Legend.ThumbnailWidth = vg.Points(30)

	var sweep []*bench.Result
	for _, s := range rep.Sweep {
		if slices.Contains(targets, s.Target) {
			sweep = append(sweep, s)
		}
	}
	var order []string
	for _, s := range sweep {
		if !slices.Contains(order, s.Target) {
			order = append(order, s.Target)
		}
	}
	lo, hi := 0.0, 0.0
	for _, s := range sweep {
		if s.OK == 0 {
			continue
		}
		if lo == 0 || s.Latency.P50 < lo {
			lo = s.Latency.P50
		}
		hi = max(hi, s.Latency.P99)
	}
	for _, target := range order {
		var p50, p99 plotter.XYs
		for _, s := range sweep {
			if s.Target != target || s.OK == 0 {
				continue
			}
			// Log axes cannot show zero; 1 µs is below any measurement.
			p50 = append(p50, plotter.XY{X: s.OfferedRate, Y: max(s.Latency.P50, 0.001)})
			p99 = append(p99, plotter.XY{X: s.OfferedRate, Y: max(s.Latency.P99, 0.001)})
		}
		if len(p50) == 0 {
			continue
		}
		c, ok := targetColors[target]
		if !ok {
			c = color.RGBA{A: 0xff}
		}
		for _, series := range []struct {
			name   string
			xys    plotter.XYs
			dashed bool
			shape  draw.GlyphDrawer
		}{
			{target + " p50", p50, false, draw.CircleGlyph{}},
			{target + " p99", p99, true, draw.TriangleGlyph{}},
		} {
			l, sc, err := plotter.NewLinePoints(series.xys)
			if err != nil {
				return err
			}
			l.Color, l.Width = c, vg.Points(1.5)
			if series.dashed {
				l.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
			}
			sc.Color, sc.Shape, sc.Radius = c, series.shape, vg.Points(3)
			p.Add(l, sc)
			switch {
			case !compact:
				p.Legend.Add(series.name, l, sc)
			case !series.dashed:
				name := target
				if cl := rep.ClosedFor(target); cl != nil {
					name = fmt.Sprintf("%s (closed-loop max %.0f/s)", target, cl.Throughput)
				}
				p.Legend.Add(name, l, sc)
			}
		}
		// The closed-loop throughput the sweep's percentages refer to.
		if cl := rep.ClosedFor(target); cl != nil && cl.Throughput > 0 && lo > 0 {
			l, err := plotter.NewLine(plotter.XYs{{X: cl.Throughput, Y: max(lo/2, 0.001)}, {X: cl.Throughput, Y: hi * 2}})
			if err != nil {
				return err
			}
			l.Color, l.Width, l.Dashes = c, vg.Points(1), []vg.Length{vg.Points(1), vg.Points(3)}
			p.Add(l)
			if !compact {
				p.Legend.Add(fmt.Sprintf("%s closed-loop max (%.0f/s)", target, cl.Throughput), l)
			}
		}
	}
	return p.Save(10*vg.Inch, 6*vg.Inch, file)
}

// inRange drops the ticks a Ticker puts outside the axis range: LogTicks
// adds the next power of ten, whose label would shrink the data area.
type inRange struct{ plot.Ticker }

func (t inRange) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for _, tk := range t.Ticker.Ticks(lo, hi) {
		if tk.Value >= lo && tk.Value <= hi {
			out = append(out, tk)
		}
	}
	return out
}
