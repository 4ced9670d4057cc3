package netbench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Machine describes where a benchmark ran.
type Machine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	MemTotal string `json:"mem_total"`
}

// Report is the machine-readable output of a sweep.
type Report struct {
	Command  string    `json:"command"`
	Machine  Machine   `json:"machine"`
	Finished time.Time `json:"finished"`
	Results  []Result  `json:"results"`
}

// DescribeMachine reads the CPU model, kernel and memory of this machine.
func DescribeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.CPUModel = firstField("/proc/cpuinfo", "model name")
	m.MemTotal = firstField("/proc/meminfo", "MemTotal")
	return m
}

func firstField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// WriteTable writes the results as an aligned text table.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tN\tsize MB\tbound s\tp50 s\tp99 s\tmax s\tp50/b\tp99/b\tmax/b\torigin copies\tcross-idc copies\tpeer rx copies\tblocks wire/plain\tcpu %\tprocs cpu s\tok\tsha256\t")
	for _, r := range results {
		cross := "-"
		if r.Scenario == Locality {
			cross = fmt.Sprintf("%.3f", r.CrossIDCCopies)
		}
		sha := "ok"
		if !r.SHA256OK {
			sha = "FAIL"
		}
		rx, wire := "-", "-" // compress.go
		if r.PeerRxBytes > 0 {
			rx = fmt.Sprintf("%.3f", r.PeerRxCopies)
		}
		if c := r.Compression; c != nil && c.BytesPlain > 0 {
			wire = fmt.Sprintf("%.3f", float64(c.BytesWire)/float64(c.BytesPlain))
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.3f\t%s\t%s\t%s\t%.0f\t%.1f\t%d/%d\t%s\t\n",
			r.Label(), r.N, float64(r.SizeBytes)/1e6, r.BoundSeconds, r.P50, r.P99, r.Max, r.P50X, r.P99X, r.MaxX,
			r.OriginEgressCopies, cross, rx, wire, 100*r.CPU, r.ProcsCPUSeconds, r.Completed, r.N, sha)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		for _, e := range r.Errors {
			fmt.Fprintf(w, "error: %s N=%d: %s\n", r.Label(), r.N, firstLine(e))
		}
	}
	return nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// WriteJSON writes the report to path.
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
	raw, err := os.ReadFile(path)
	if err != nil {
		return rep, fmt.Errorf("read results: %w", err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		return rep, fmt.Errorf("parse results %s: %w", path, err)
	}
	if len(rep.Results) == 0 {
		return rep, fmt.Errorf("results %s: no results", path)
	}
	return rep, nil
}

// scenarioColor gives each scenario a fixed colour in plots.
func scenarioColor(s string) color.Color {
	switch s {
	case Native:
		return color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	case Dfly:
		return color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	case BitTorrent:
		return color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	case Locality:
		return color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	}
	return color.Black
}

// Plot draws completion time vs N: p50 (solid, points) and p99 (dashed) for
// every scenario, and the physical bound (black, dotted), into a PNG (or any
// format gonum/plot infers from the path's extension).
func Plot(path string, results []Result, title string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "hosts N"
	p.Y.Label.Text = "completion time (s)"
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	byScenario := map[string][]Result{}
	var order []string
	bound := map[int]float64{}
	colors := map[string]color.Color{}
	for _, r := range results {
		l := r.Label() // a scenario, or one of its --compress runs (compress.go)
		if _, ok := byScenario[l]; !ok {
			order = append(order, l)
			colors[l] = labelColor(r, len(order))
		}
		byScenario[l] = append(byScenario[l], r)
		bound[r.N] = r.BoundSeconds
	}
	if len(results) == 0 {
		return fmt.Errorf("plot: no results")
	}
	for _, s := range order {
		rs := slices.Clone(byScenario[s])
		slices.SortFunc(rs, func(a, b Result) int { return a.N - b.N })
		var p50, p99 plotter.XYs
		for _, r := range rs {
			if r.Completed == 0 {
				continue
			}
			p50 = append(p50, plotter.XY{X: float64(r.N), Y: r.P50})
			p99 = append(p99, plotter.XY{X: float64(r.N), Y: r.P99})
		}
		if len(p50) == 0 {
			continue
		}
		c := colors[s]
		l50, pts, err := plotter.NewLinePoints(p50)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s, err)
		}
		l50.Color, l50.Width = c, vg.Points(2)
		pts.Color, pts.Shape = c, draw.CircleGlyph{}
		l99, err := plotter.NewLine(p99)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s, err)
		}
		l99.Color, l99.Width, l99.Dashes = c, vg.Points(1.2), []vg.Length{vg.Points(5), vg.Points(3)}
		p.Add(l50, pts, l99)
		p.Legend.Add(s+" p50", l50, pts)
		p.Legend.Add(s+" p99", l99)
	}
	var bxy plotter.XYs
	ns := make([]int, 0, len(bound))
	for n := range bound {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	for _, n := range ns {
		bxy = append(bxy, plotter.XY{X: float64(n), Y: bound[n]})
	}
	bl, err := plotter.NewLine(bxy)
	if err != nil {
		return fmt.Errorf("plot bound: %w", err)
	}
	bl.Color, bl.Width, bl.Dashes = color.Black, vg.Points(1.5), []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(bl)
	p.Legend.Add("bound", bl)
	p.Y.Min = 0
	ymax := 0.0
	for _, r := range results {
		ymax = max(ymax, r.P99, r.BoundSeconds)
	}
	p.Y.Max = ymax * 1.45 // room for the legend above the lines
	var ticks []plot.Tick
	for _, n := range ns {
		ticks = append(ticks, plot.Tick{Value: float64(n), Label: fmt.Sprint(n)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	if len(ns) > 0 {
		p.X.Min, p.X.Max = float64(ns[0])-0.5, float64(ns[len(ns)-1])+0.5
	}
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return nil
}
