package netbench

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleResults() []Result {
	var rs []Result
	for _, n := range []int{5, 10} {
		b := Bound(32e6, n, 1e9, 100e6).Seconds()
		rs = append(rs,
			Result{Scenario: Native, N: n, SizeBytes: 32e6, BoundSeconds: b, P50: 2.7, P99: 2.8, Max: 2.8, P50X: 1.01, OriginEgressCopies: float64(n), Completed: n, SHA256OK: true},
			Result{Scenario: Dfly, N: n, SizeBytes: 32e6, BoundSeconds: b, P50: 2.9, P99: 3.1, Max: 3.2, OriginEgressCopies: 1.02, Completed: n, SHA256OK: true},
			Result{Scenario: Locality, N: n, SizeBytes: 32e6, BoundSeconds: b, P50: 3.0, P99: 3.3, Max: 3.3, CrossIDCCopies: 1.1, Completed: n - 1, SHA256OK: false, Errors: []string{"p003: output sha256 x\nmore"}},
		)
	}
	return rs
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteTable(&buf, sampleResults()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// header + 6 rows + 2 error lines (first line of each error only)
	if len(lines) != 9 {
		t.Fatalf("table has %d lines, want 9:\n%s", len(lines), out)
	}
	for _, want := range []string{"p50/b", "cross-idc copies", "1.100", "FAIL", "9/10", "error: locality N=10: p003: output sha256 x"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "more") {
		t.Errorf("table prints more than the first line of an error:\n%s", out)
	}
}

func TestWriteJSONRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.json")
	rep := Report{Command: "netbench --n 5,10", Machine: DescribeMachine(), Results: sampleResults()}
	if err := WriteJSON(path, rep); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Results) != 6 || got.Results[1].Scenario != Dfly || got.Results[1].OriginEgressCopies != 1.02 || got.Machine.CPUs < 1 {
		t.Fatalf("round trip lost data: %+v", got)
	}
	if !strings.Contains(string(raw), `"p99_x_bound"`) || !strings.Contains(string(raw), `"cross_idc_copies"`) {
		t.Errorf("JSON lacks documented keys:\n%s", raw)
	}
}

func TestPlotWritesPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.png")
	if err := Plot(path, sampleResults(), "test"); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("plot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 250 {
		t.Errorf("plot is %v, want a readable size", b)
	}
	if err := Plot(filepath.Join(t.TempDir(), "e.png"), nil, "empty"); err == nil {
		t.Error("plot of no results succeeded")
	}
}
