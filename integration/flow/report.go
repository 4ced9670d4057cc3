// Package flow is the network-namespace test of dfdaemon's flow control
// (--flow auto, internal/flow): a host with a steady TCP flow of its own
// downloads with dfly over a shaped link, and the flow must keep its share.
// This file holds the measurement helpers (the receiver's log, the
// timeline, the report, the plot); flow_test.go runs the test.
package flow

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Mark is one line of the competing flow's receiver log: the total bytes
// received by a time.
type Mark struct {
	At    time.Time
	Bytes int64
}

// ParseLog parses the receiver's log ("UNIXNANO BYTES" lines, see
// cmd/flowpair); a torn last line is ignored.
func ParseLog(b []byte) ([]Mark, error) {
	var out []Mark
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		ts, err1 := strconv.ParseInt(f[0], 10, 64)
		n, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, Mark{At: time.Unix(0, ts), Bytes: n})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the receiver's log: %w", err)
	}
	return out, nil
}

// bytesAt interpolates the received total at t (clamped to the log's span).
func bytesAt(ms []Mark, t time.Time) float64 {
	if len(ms) == 0 {
		return 0
	}
	i := sort.Search(len(ms), func(i int) bool { return !ms[i].At.Before(t) })
	switch {
	case i == 0:
		return float64(ms[0].Bytes)
	case i == len(ms):
		return float64(ms[len(ms)-1].Bytes)
	}
	a, b := ms[i-1], ms[i]
	f := float64(t.Sub(a.At)) / float64(b.At.Sub(a.At))
	return float64(a.Bytes) + f*float64(b.Bytes-a.Bytes)
}

// Goodput is the received rate between from and to, in bit/s; false when
// the log does not cover the span.
func Goodput(ms []Mark, from, to time.Time) (float64, bool) {
	if len(ms) < 2 || !to.After(from) || from.Before(ms[0].At) || to.After(ms[len(ms)-1].At) {
		return 0, false
	}
	return (bytesAt(ms, to) - bytesAt(ms, from)) * 8 / to.Sub(from).Seconds(), true
}

// Point is one instant of the timeline, in Mbit/s.
type Point struct {
	T         float64 `json:"t_seconds"`        // since the run began
	Competing float64 `json:"competing_mbit_s"` // the host's own flow (goodput)
	Link      float64 `json:"link_mbit_s"`      // everything the host received (its NIC's counter)
	Allowed   float64 `json:"allowed_mbit_s"`   // dfly's download limit (--flow auto; 0 otherwise)
}

// Phase is one part of the run.
type Phase struct {
	Name          string  `json:"name"` // "alone", "--flow auto", "--flow fixed", "alone again"
	Start         float64 `json:"start_seconds"`
	End           float64 `json:"end_seconds"`
	CompetingMbit float64 `json:"competing_mbit_s"` // goodput of the host's flow
	Share         float64 `json:"share_of_alone"`   // CompetingMbit / the mean of the alone phases
	DflyMbit      float64 `json:"dfly_mbit_s"`      // content size × 8 / download time (0 for "alone")
	DflySeconds   float64 `json:"dfly_seconds,omitempty"`
	SHA256OK      bool    `json:"sha256_ok,omitempty"`
}

// Report is the measurement of one run.
type Report struct {
	Command       string    `json:"command"`
	Finished      time.Time `json:"finished"`
	LinkMbit      float64   `json:"link_mbit_s"`           // the tbf rate of the host's download
	CompetingMbit float64   `json:"competing_rate_mbit_s"` // the sender's pace
	SizeBytes     int64     `json:"size_bytes"`
	Load          string    `json:"load_average"`
	Phases        []Phase   `json:"phases"`
	Timeline      []Point   `json:"timeline"`
}

// WriteJSON writes r to path.
func WriteJSON(path string, r Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteTable writes the phases as a Markdown table.
func WriteTable(w io.Writer, r Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "| phase | host's flow Mbit/s | share of alone | dfly Mbit/s | dfly time s | sha256 |\n| --- | ---: | ---: | ---: | ---: | --- |\n")
	for _, p := range r.Phases {
		dfly, secs, sum := "–", "–", "–"
		if p.DflySeconds > 0 {
			dfly, secs = fmt.Sprintf("%.1f", p.DflyMbit), fmt.Sprintf("%.1f", p.DflySeconds)
			sum = map[bool]string{true: "exact", false: "WRONG"}[p.SHA256OK]
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.0f%% | %s | %s | %s |\n", p.Name, p.CompetingMbit, 100*p.Share, dfly, secs, sum)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Plot draws the timeline: the host's flow, the whole link and dfly's
// allowance over time, each phase labelled.
func Plot(path string, r Report) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Flow control: a %.0f Mbit/s link, the host's own flow paced at %.0f Mbit/s", r.LinkMbit, r.CompetingMbit)
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = "Mbit/s"
	p.Legend.Top = true
	series := []struct {
		name string
		col  color.Color
		get  func(Point) float64
		dash bool
	}{
		{"link (all the host receives)", color.RGBA{R: 120, G: 120, B: 120, A: 255}, func(q Point) float64 { return q.Link }, false},
		{"host's own flow (goodput)", color.RGBA{R: 200, G: 40, B: 40, A: 255}, func(q Point) float64 { return q.Competing }, false},
		{"dfly's allowance (--flow auto)", color.RGBA{B: 200, A: 255}, func(q Point) float64 { return q.Allowed }, true},
	}
	for _, s := range series {
		pts := make(plotter.XYs, 0, len(r.Timeline))
		for _, q := range r.Timeline {
			if v := s.get(q); v > 0 || !s.dash {
				pts = append(pts, plotter.XY{X: q.T, Y: v})
			}
		}
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewScatter(pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.GlyphStyle.Color, l.GlyphStyle.Radius = s.col, vg.Points(1.3)
		if !s.dash {
			l.GlyphStyle.Shape = draw.CircleGlyph{}
		} else {
			l.GlyphStyle.Shape = draw.PlusGlyph{}
		}
		p.Add(l)
		p.Legend.Add(s.name, l)
	}
	var lx, ly []float64
	var lt []string
	for i, ph := range r.Phases {
		y := r.LinkMbit * (1.04 + 0.09*float64(i%2)) // alternate heights: short phases' labels would overlap
		lx, ly, lt = append(lx, ph.Start), append(ly, y), append(lt, ph.Name)
		line, err := plotter.NewLine(plotter.XYs{{X: ph.Start, Y: 0}, {X: ph.Start, Y: y}})
		if err != nil {
			return err
		}
		line.Color, line.Dashes = color.Gray{Y: 160}, []vg.Length{vg.Points(2), vg.Points(2)}
		p.Add(line)
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys(lx, ly), Labels: lt})
	if err != nil {
		return err
	}
	p.Add(labels)
	// After the plotters, which widen the axes to their data: a sample
	// that caught a counter mid-update would squash the rest.
	p.Y.Min, p.Y.Max = 0, r.LinkMbit*1.45 // room for the legend above the data
	return p.Save(9*vg.Inch, 4.5*vg.Inch, path)
}

func xys(x, y []float64) plotter.XYs {
	out := make(plotter.XYs, len(x))
	for i := range x {
		out[i] = plotter.XY{X: x[i], Y: y[i]}
	}
	return out
}
