package sim

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleResults() []Result {
	return []Result{
		{N: 10, Size: 200e6, BlockSize: 1 << 20, Bound: 16, P50: 17, P99: 18, Max: 18.5, OriginCopies: 1, SeedCopies: 1.9, AssignCalls: 5, Events: 100, EventsPerSec: 1e5, WallSeconds: 0.001},
		{N: 100, Size: 200e6, BlockSize: 1 << 20, Bound: 16, P50: 20, P99: 22, Max: 23, OriginCopies: 1, SeedCopies: 3.4},
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, sampleResults()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("table has %d lines, want header + 2:\n%s", len(lines), b.String())
	}
	for _, want := range []string{"p99/bound", "origin copies", "events/s"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header lacks %q: %s", want, lines[0])
		}
	}
	if f := strings.Fields(lines[1]); f[0] != "10" || f[5] != "1.06" || f[6] != "1.12" {
		t.Errorf("row %q: want N 10, p50/bound 1.06, p99/bound 1.12", lines[1])
	}
}

func TestJSONRoundTripAndPlot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "results.json")
	rep := Report{Command: "dflysim --n 10,100", Title: "t", Results: sampleResults()}
	if err := WriteJSON(path, rep); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Command != rep.Command || len(got.Results) != 2 || got.Results[1].P99 != 22 {
		t.Fatalf("round trip: %+v", got)
	}
	png := filepath.Join(dir, "plot.png")
	if err := Plot(png, got.Results, got.Title); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(png); err != nil || st.Size() == 0 {
		t.Fatalf("plot not written: %v", err)
	}
	if err := Plot(filepath.Join(dir, "one.png"), got.Results[:1], "one N"); err != nil {
		t.Fatalf("plot of a single N: %v", err)
	}
	if err := Plot(filepath.Join(dir, "none.png"), nil, ""); err == nil {
		t.Fatal("plot of no results succeeded")
	}
	if _, err := ReadJSON(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("missing file read")
	}
}
