package sim

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func small(seed uint64) Config {
	return Config{N: 10, Size: 20e6, PeerBps: 100e6, OriginBps: 1e9, Seed: seed}
}

func TestSmallSwarmCompletes(t *testing.T) {
	var samples int
	cfg := small(1)
	cfg.Probe = func(Sample) { samples++ }
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Complete || len(r.Completions) != 10 {
		t.Fatalf("complete %v, %d completions: every peer must hold every block", r.Complete, len(r.Completions))
	}
	if r.Blocks != 20 || r.BlockSize != 1<<20 {
		t.Fatalf("blocks %d of %d bytes, want 20 of 1 MiB (blockstore.BlockSizeFor)", r.Blocks, r.BlockSize)
	}
	// The origin sends the file exactly once (to the seed); peers never
	// fetch it from there in this model.
	if r.OriginCopies < 0.999 || r.OriginCopies > 1.001 {
		t.Fatalf("origin egress %.3f copies, want 1", r.OriginCopies)
	}
	// The real scheduler made every decision: peers got blocks from both
	// the seed and each other.
	if r.AssignCalls == 0 || r.SeedAssignments == 0 || r.PeerAssignments == 0 {
		t.Fatalf("assign calls %d, seed assignments %d, peer assignments %d: all must be > 0", r.AssignCalls, r.SeedAssignments, r.PeerAssignments)
	}
	if r.Transfers != 10*20 {
		t.Fatalf("%d transfers, want one per peer and block (200)", r.Transfers)
	}
	if r.SeedCopies <= 0 || r.SeedCopies >= 10 {
		t.Fatalf("seed egress %.2f copies: must be above 0 and below N (peers share)", r.SeedCopies)
	}
	for _, c := range r.Completions {
		if c < r.Bound {
			t.Fatalf("a peer completed in %.3fs, below the physical bound %.3fs", c, r.Bound)
		}
	}
	if !(r.P50 <= r.P99 && r.P99 <= r.Max) || r.Max <= 0 {
		t.Fatalf("percentiles p50 %v p99 %v max %v", r.P50, r.P99, r.Max)
	}
	if samples == 0 {
		t.Fatal("Probe never called")
	}
}

func TestDeterministic(t *testing.T) {
	a, err := Run(context.Background(), small(7))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Run(context.Background(), small(7))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Completions, b.Completions) || a.Events != b.Events || a.AssignCalls != b.AssignCalls ||
		a.SeedAssignments != b.SeedAssignments || a.SeedCopies != b.SeedCopies || a.Refused != b.Refused {
		t.Fatalf("same seed, different runs:\n%+v\n%+v", a, b)
	}
}

func TestUploadCapRefuses(t *testing.T) {
	// One upload slot per host: the scheduler's fallback assignments meet
	// full upload servers, which refuse; the swarm still completes.
	cfg := small(1)
	cfg.PeerMaxUploads, cfg.SeedMaxUploads = 1, 1
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Complete || r.Refused == 0 {
		t.Fatalf("complete %v, refused %d: want complete with refusals", r.Complete, r.Refused)
	}
}

func TestRunErrors(t *testing.T) {
	if _, err := Run(context.Background(), Config{N: 0, Size: 1, PeerBps: 1, OriginBps: 1}); err == nil {
		t.Fatal("N=0 accepted")
	}
	if _, err := Run(context.Background(), Config{N: 1, Size: 1 << 30, BlockSize: 4096, PeerBps: 1, OriginBps: 1}); err == nil {
		t.Fatal("more blocks than a task may have accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, small(1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled run: %v", err)
	}
	cfg := small(1)
	cfg.MaxVirtual = 100 * time.Millisecond
	if _, err := Run(context.Background(), cfg); !errors.Is(err, errStalled) {
		t.Fatalf("run past MaxVirtual: %v", err)
	}
}

func TestBound(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int64
		n         int
		src, peer int64
		want      time.Duration
	}{
		{"one host: its own link", 200e6, 1, 1e9, 100e6, 16 * time.Second},
		{"few hosts: each host's download", 200e6, 10, 1e9, 100e6, 16 * time.Second},
		{"slow source: it must send the file once", 200e6, 10, 10e6, 100e6, 160 * time.Second},
		// N·S/(Bs+N·Bp) < S/Bp always: with symmetric peer links the
		// aggregate term never binds.
		{"many hosts: still each host's download", 100e6, 100, 100e6, 10e6, 80 * time.Second},
		{"invalid", 1, 0, 1, 1, 0},
	} {
		if got := Bound(tc.size, tc.n, tc.src, tc.peer); (got - tc.want).Abs() > time.Microsecond {
			t.Errorf("%s: Bound = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, tc := range []struct{ p, want float64 }{{50, 5}, {99, 10}, {100, 10}, {10, 1}, {1, 1}} {
		if got := Percentile(xs, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("empty: want 0")
	}
}

func TestRarestFirst(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name    string
		missing []int
		holders map[int]int
		// want: a prefix in exactly this order, then the rest as a set
		prefix []int
	}{
		{"rarest held first, unheld after", []int{0, 1, 2, 3, 4}, map[int]int{3: 5, 1: 1, 4: 2}, []int{1, 4, 3}},
		{"nothing known: a permutation", []int{0, 1, 2, 3}, map[int]int{}, nil},
	} {
		got := rarestFirst(slices.Clone(tc.missing), tc.holders, rng)
		if !slices.Equal(got[:len(tc.prefix)], tc.prefix) {
			t.Errorf("%s: order %v, want prefix %v", tc.name, got, tc.prefix)
		}
		s := slices.Clone(got)
		slices.Sort(s)
		if !slices.Equal(s, tc.missing) {
			t.Errorf("%s: %v is not a permutation of %v", tc.name, got, tc.missing)
		}
	}
}
