package prefetch

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/peer"
)

// gatedBlocks holds the fetch of block gateAt until gate is closed.
type gatedBlocks struct {
	fakeBlocks
	gateAt int
	gate   chan struct{}
}

func (g *gatedBlocks) Fetch(ctx context.Context, idx int, prio peer.Priority) error {
	if idx >= g.gateAt {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.fakeBlocks.Fetch(ctx, idx, prio)
}

// ratios scrapes reg: layer → dfly_prefetch_progress_ratio.
func ratios(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "dfly_prefetch_progress_ratio" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	return out
}

// TestProgressMetric: a running prefetch reports the share of its blocks
// present (two runs of one layer report once), and its series goes when
// the run ends.
func TestProgressMetric(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	info := blockstore.Task{ID: "x", Length: 4 << 20, BlockSize: 1 << 20}
	gate := make(chan struct{})
	a := &gatedBlocks{fakeBlocks: fakeBlocks{info: info, missing: []int{0, 1, 2, 3}}, gateAt: 2, gate: gate}
	b := &gatedBlocks{fakeBlocks: fakeBlocks{info: info, missing: []int{0, 1, 2, 3}}, gateAt: 1, gate: gate}
	opt := Options{Concurrency: 1, Quiet: -1, Logger: quietLogger(), Name: "sha256:layer", Metrics: m}
	other := opt
	other.Name = "file.bin"
	done := make(chan error, 3)
	for _, p := range []*Prefetcher{New(a, opt), New(b, opt), New(b, other)} {
		go func() { done <- p.Run(context.Background()) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := ratios(t, reg)
		if got["sha256:layer"] == 0.5 && got["file.bin"] == 0.25 && len(got) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ratios %v, want sha256:layer 0.5 (the furthest of its two runs) and file.bin 0.25", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	close(gate)
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := ratios(t, reg); len(got) != 0 {
		t.Fatalf("series %v after every run ended, want none", got)
	}
	// Without metrics a prefetch runs as before.
	c := &fakeBlocks{info: info, missing: []int{0, 1}}
	if err := New(c, Options{Quiet: -1, Logger: quietLogger()}).Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		name    string
		info    blockstore.Task
		missing []int
		want    float64
	}{
		{"nothing yet", blockstore.Task{Length: 4 << 20, BlockSize: 1 << 20}, []int{0, 1, 2, 3}, 0},
		{"three of four", blockstore.Task{Length: 4 << 20, BlockSize: 1 << 20}, []int{2}, 0.75},
		{"all", blockstore.Task{Length: 4 << 20, BlockSize: 1 << 20}, nil, 1},
		{"empty content", blockstore.Task{Length: 0, BlockSize: 1 << 20}, nil, 1},
	} {
		p := New(&fakeBlocks{info: tc.info, missing: tc.missing}, Options{Logger: quietLogger()})
		if got := p.ratio(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
