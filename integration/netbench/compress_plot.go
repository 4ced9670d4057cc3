package netbench

import (
	"fmt"
	"image/color"
	"os"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// labelColor is a result's colour in plots: its scenario's, or for a run
// with a --compress mode or a built content the i-th of a palette.
func labelColor(r Result, i int) color.Color {
	if r.Compress == "" && (r.Content == "" || r.Content == ContentRandom) {
		return scenarioColor(r.Scenario)
	}
	palette := [...]color.RGBA{
		{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, {R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}, {R: 0xe3, G: 0x77, B: 0xc2, A: 0xff},
		{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff}, {R: 0xbc, G: 0xbd, B: 0x22, A: 0xff}, {R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff},
	}
	return palette[(max(i, 1)-1)%len(palette)]
}

// savePNG writes a drawn image to path.
func savePNG(path string, img *vgimg.Canvas) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return f.Close()
}

// PlotCompression draws the compression comparison of a sweep into a PNG:
// on the left every host's completion time (hosts sorted, one line per
// run), on the right the bytes the peers' NICs received per peer, in
// copies of the file (1 = the file once, headers included).
func PlotCompression(path string, results []Result, title string) error {
	if len(results) == 0 {
		return fmt.Errorf("plot: no results")
	}
	times := plot.New()
	times.Title.Text = title
	times.X.Label.Text = "host (sorted by completion)"
	times.Y.Label.Text = "completion time (s)"
	times.Legend.Top, times.Legend.Left = true, true
	times.Add(plotter.NewGrid())
	bytes := plot.New()
	bytes.Title.Text = "bytes received per peer"
	bytes.Y.Label.Text = "copies of the file"
	bytes.Add(plotter.NewGrid())
	var names []string
	var rx plotter.Values
	ymax := 0.0
	for i, r := range results {
		if r.Completed == 0 {
			continue
		}
		ts := slices.Clone(r.Times)
		slices.Sort(ts)
		xy := make(plotter.XYs, len(ts))
		for j, v := range ts {
			xy[j] = plotter.XY{X: float64(j + 1), Y: v}
			ymax = max(ymax, v)
		}
		c := labelColor(r, i+1)
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return fmt.Errorf("plot %s: %w", r.Label(), err)
		}
		l.Color, l.Width = c, vg.Points(2)
		pts.Color, pts.Shape = c, draw.CircleGlyph{}
		times.Add(l, pts)
		name := fmt.Sprintf("%s N=%d", r.Label(), r.N)
		times.Legend.Add(name, l, pts)
		names = append(names, name)
		rx = append(rx, r.PeerRxCopies)
	}
	if len(rx) == 0 {
		return fmt.Errorf("plot: no completed run")
	}
	times.Y.Min, times.Y.Max = 0, ymax*1.5 // room for the legend
	bars, err := plotter.NewBarChart(rx, vg.Points(28))
	if err != nil {
		return fmt.Errorf("plot bytes: %w", err)
	}
	bars.Color = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	bytes.Add(bars)
	bytes.NominalX(names...)
	bytes.X.Tick.Label.Rotation = 0.6
	bytes.X.Tick.Label.XAlign, bytes.X.Tick.Label.YAlign = draw.XRight, draw.YTop
	bytes.Y.Min = 0
	img := vgimg.New(13*vg.Inch, 5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{{times, bytes}}, tiles, dc)
	times.Draw(canvases[0][0])
	bytes.Draw(canvases[0][1])
	return savePNG(path, img)
}

// HasCompression reports whether a sweep compared --compress modes or ran
// a built content.
func HasCompression(results []Result) bool {
	return slices.ContainsFunc(results, func(r Result) bool { return r.Compress != "" || (r.Content != "" && r.Content != ContentRandom) })
}

// CompressionPlotPath is where PlotAll draws the compression comparison
// next to the plot at pngPath.
func CompressionPlotPath(pngPath string) string {
	return strings.TrimSuffix(pngPath, ".png") + "-compression.png"
}

// PlotAll draws Plot at pngPath and, when the sweep has compression runs,
// PlotCompression at CompressionPlotPath(pngPath).
func PlotAll(pngPath string, results []Result, title string) error {
	if err := Plot(pngPath, results, title); err != nil {
		return err
	}
	if !HasCompression(results) {
		return nil
	}
	return PlotCompression(CompressionPlotPath(pngPath), results, title)
}
