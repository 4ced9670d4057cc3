package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/integration/sim"
)

func TestRunWritesTableJSONAndPlot(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"--n", "5,10", "--size", "8MB", "--out", dir}, &out, &errOut); err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "p99/bound") || !strings.Contains(out.String(), "plot: ") {
		t.Fatalf("stdout lacks the table or the plot path:\n%s", out.String())
	}
	rep, err := sim.ReadJSON(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 || rep.Results[0].N != 5 || !rep.Results[1].Complete {
		t.Fatalf("results: %+v", rep.Results)
	}
	if _, err := os.Stat(filepath.Join(dir, "results.png")); err != nil {
		t.Fatalf("no plot: %v", err)
	}
	out.Reset()
	replot := filepath.Join(dir, "again.png")
	if err := run(context.Background(), []string{"--replot", filepath.Join(dir, "results.json"), "--plot", replot}, &out, &errOut); err != nil {
		t.Fatalf("replot: %v", err)
	}
	if _, err := os.Stat(replot); err != nil || !strings.Contains(out.String(), "p99/bound") {
		t.Fatalf("replot: %v\n%s", err, out.String())
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--n", "x"}, {"--size", "big"}, {"--peer-rate", "fast"}, {"--origin-rate", "?"},
		{"--seed-rate", "?"}, {"--block-size", "z"}, {"extra"},
	} {
		var out, errOut bytes.Buffer
		if err := run(context.Background(), append(args, "--out", ""), &out, &errOut); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
