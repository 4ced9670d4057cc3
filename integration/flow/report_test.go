package flow

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseLogAndGoodput(t *testing.T) {
	t0 := time.Unix(1000, 0)
	log := "1000000000000 0\n1000500000000 1000000\nnot a line\n1001000000000 2000000\n10015000" // torn: the receiver was killed mid-line
	ms, err := ParseLog([]byte(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || !ms[1].At.Equal(t0.Add(500*time.Millisecond)) || ms[2].Bytes != 2e6 {
		t.Fatalf("marks %+v", ms)
	}
	for _, c := range []struct {
		from, to time.Duration
		want     float64
		ok       bool
	}{
		{0, time.Second, 16e6, true},                                 // 2 MB in 1 s
		{250 * time.Millisecond, 750 * time.Millisecond, 16e6, true}, // interpolated inside the marks
		{0, 2 * time.Second, 0, false},                               // past the log's end
		{-time.Second, 500 * time.Millisecond, 0, false},             // before its start
		{time.Second, time.Second, 0, false},                         // empty span
	} {
		got, ok := Goodput(ms, t0.Add(c.from), t0.Add(c.to))
		if ok != c.ok || math.Abs(got-c.want) > 1 {
			t.Errorf("Goodput(%v..%v) = %v, %v; want %v, %v", c.from, c.to, got, ok, c.want, c.ok)
		}
	}
}

func TestReportOutputs(t *testing.T) {
	r := Report{LinkMbit: 40, CompetingMbit: 16, SizeBytes: 16 << 20,
		Phases: []Phase{
			{Name: "alone", Start: 1, End: 4, CompetingMbit: 16, Share: 1},
			{Name: "--flow auto", Start: 6, End: 12, CompetingMbit: 15.5, Share: 0.97, DflyMbit: 21, DflySeconds: 6.4, SHA256OK: true},
			{Name: "--flow fixed", Start: 14, End: 18, CompetingMbit: 4, Share: 0.25, DflyMbit: 33, DflySeconds: 4.1, SHA256OK: false},
		}}
	for i := range 80 {
		r.Timeline = append(r.Timeline, Point{T: float64(i) / 4, Competing: 16, Link: 16 + float64(i%3), Allowed: float64(i % 2 * 20)})
	}
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| alone | 16.0 | 100% | – | – | – |", "| --flow auto | 15.5 | 97% | 21.0 | 6.4 | exact |", "| --flow fixed | 4.0 | 25% | 33.0 | 4.1 | WRONG |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	dir := t.TempDir()
	if err := writeOutputs(dir, r, b.String()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"flow.json", "flow.md", "flow.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
