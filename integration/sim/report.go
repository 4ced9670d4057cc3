package sim

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"slices"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Report is what results.json holds.
type Report struct {
	Command string   `json:"command"`
	Title   string   `json:"title"`
	Results []Result `json:"results"`
}

// WriteTable prints one row per result: completion percentiles over the
// bound, egress in copies, scheduler use and the simulator's own speed.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tsize MB\tblock KiB\tbound s\tp50 s\tp50/bound\tp99/bound\tmax/bound\torigin copies\tseed copies\tassign calls\tseed assignments\trefused\tevents\tevents/s\twall s\t")
	for _, r := range results {
		a, b, c := r.Ratio()
		fmt.Fprintf(tw, "%d\t%.0f\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%d\t%d\t%.0f\t%.1f\t\n",
			r.N, float64(r.Size)/1e6, r.BlockSize>>10, r.Bound, r.P50, a, b, c, r.OriginCopies, r.SeedCopies,
			r.AssignCalls, r.SeedAssignments, r.Refused, r.Events, r.EventsPerSec, r.WallSeconds)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// WriteJSON writes rep to path.
func WriteJSON(path string, rep Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// ReadJSON reads a report written by WriteJSON.
func ReadJSON(path string) (Report, error) {
	var rep Report
	b, err := os.ReadFile(path)
	if err != nil {
		return rep, fmt.Errorf("read results: %w", err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return rep, fmt.Errorf("decode results %s: %w", path, err)
	}
	return rep, nil
}

// Target is the completion time over the bound the issue aims for (p99).
const Target = 1.3

// Plot draws p50, p99 and max completion time over the bound against N
// (log x axis), with the bound (1) and the target (1.3) as reference
// lines, into a PNG (or any format gonum/plot infers from the extension).
func Plot(path string, results []Result, title string) error {
	rs := slices.Clone(results)
	slices.SortFunc(rs, func(a, b Result) int { return a.N - b.N })
	if len(rs) == 0 {
		return fmt.Errorf("plot %s: no results", path)
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "hosts N (log scale)"
	p.Y.Label.Text = "completion time / physical bound"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	series := []struct {
		name  string
		get   func(Result) float64
		color color.Color
		dash  []vg.Length
	}{
		{"p50", func(r Result) float64 { a, _, _ := r.Ratio(); return a }, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, nil},
		{"p99", func(r Result) float64 { _, b, _ := r.Ratio(); return b }, color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, []vg.Length{vg.Points(5), vg.Points(3)}},
		{"max", func(r Result) float64 { _, _, c := r.Ratio(); return c }, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, []vg.Length{vg.Points(2), vg.Points(2)}},
	}
	ymax := Target
	for _, s := range series {
		var xy plotter.XYs
		for _, r := range rs {
			xy = append(xy, plotter.XY{X: float64(r.N), Y: s.get(r)})
			ymax = max(ymax, s.get(r))
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.Color, l.Width, l.Dashes = s.color, vg.Points(1.8), s.dash
		pts.Color, pts.Shape = s.color, draw.CircleGlyph{}
		p.Add(l, pts)
		p.Legend.Add(s.name+" / bound", l, pts)
	}
	lo, hi := float64(rs[0].N), float64(rs[len(rs)-1].N)
	if lo == hi {
		lo, hi = lo/2, hi*2
	}
	for _, ref := range []struct {
		name string
		y    float64
		c    color.Color
	}{{"bound", 1, color.Black}, {"target 1.3 × bound", Target, color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}}} {
		l, err := plotter.NewLine(plotter.XYs{{X: lo, Y: ref.y}, {X: hi, Y: ref.y}})
		if err != nil {
			return fmt.Errorf("plot %s: %w", ref.name, err)
		}
		l.Color, l.Width, l.Dashes = ref.c, vg.Points(1), []vg.Length{vg.Points(1), vg.Points(3)}
		p.Add(l)
		p.Legend.Add(ref.name, l)
	}
	p.X.Min, p.X.Max = lo/1.3, hi*1.3
	p.Y.Min, p.Y.Max = 0, ymax*1.35 // room for the legend
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return nil
}
