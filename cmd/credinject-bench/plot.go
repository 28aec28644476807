package main

import (
	"fmt"
	"image/color"
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
}

// plotSweep draws p50 (solid) and p99 (dashed) latency against the offered
// rate for each target, both axes logarithmic: the targets are orders of
// magnitude apart on both.
func plotSweep(rep *bench.Report, file string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("ext_authz Check: latency vs offered load (open loop, %d identities, %d CPUs)", rep.Identities, rep.Machine.NumCPU)
	p.X.Label.Text = "offered rate (requests/s, log scale)"
	p.Y.Label.Text = "latency from intended send time (ms, log scale)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.ThumbnailWidth = vg.Points(30)

	var order []string
	for _, s := range rep.Sweep {
		if !slices.Contains(order, s.Target) {
			order = append(order, s.Target)
		}
	}
	for _, target := range order {
		var p50, p99 plotter.XYs
		for _, s := range rep.Sweep {
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
			p.Legend.Add(series.name, l, sc)
		}
	}
	return p.Save(10*vg.Inch, 6*vg.Inch, file)
}
