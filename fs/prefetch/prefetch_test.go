package prefetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/peer"
)

// env is a real origin, block store and peer engine.
type env struct {
	origin *origin.Server
	store  *blockstore.Store
	eng    *peer.Engine
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newEnv starts the engine the tests read through. It is the one place that
// decides the topology (origin only today; origin + supernode + peer later).
func newEnv(t *testing.T, retries int) *env {
	t.Helper()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	src := source.New(source.Options{Retries: retries, Backoff: 20 * time.Millisecond, Timeout: 5 * time.Second, Logger: quietLogger()})
	eng, err := peer.New(peer.Config{Store: st, Source: src, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return &env{origin: o, store: st, eng: eng}
}

func (e *env) open(t *testing.T, name string, c origin.Content, digest string) *peer.Task {
	t.Helper()
	u := e.origin.Add(name, c)
	task, err := e.eng.Open(context.Background(), peer.Request{URL: u, Digest: digest})
	if err != nil {
		t.Fatal(err)
	}
	return task
}

// fakeBlocks is an in-memory Blocks for ordering tests.
type fakeBlocks struct {
	info    blockstore.Task
	mu      sync.Mutex
	missing []int
}

func (f *fakeBlocks) Missing() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.missing)
}
func (f *fakeBlocks) Fetch(ctx context.Context, idx int, prio peer.Priority) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.missing = slices.DeleteFunc(f.missing, func(i int) bool { return i == idx })
	return nil
}
func (f *fakeBlocks) ForegroundInFlight() int { return 0 }
func (f *fakeBlocks) Complete(ctx context.Context) (blockstore.Task, error) {
	return f.info, nil
}
func (f *fakeBlocks) Info() blockstore.Task { return f.info }

func TestPlan(t *testing.T) {
	info := blockstore.Task{ID: "x", Length: 10 << 20, BlockSize: 1 << 20}
	reverse := func(m []int) []int { slices.Reverse(m); return m }
	tests := []struct {
		name    string
		opt     Options
		missing []int
		want    []int
	}{
		{"sequential sorts", Options{}, []int{5, 1, 3}, []int{1, 3, 5}},
		{"rarest uses rank", Options{Order: Rarest, Rank: reverse}, []int{1, 3, 5}, []int{5, 3, 1}},
		{"rarest without rank is sequential", Options{Order: Rarest}, []int{3, 1}, []int{1, 3}},
		{"rank may drop blocks", Options{Order: Rarest, Rank: func([]int) []int { return []int{4} }}, []int{1, 4, 6}, []int{4, 1, 6}},
		{"first range leads", Options{First: []Range{{Off: 8 << 20, Len: 2 << 20}}}, []int{0, 1, 8, 9}, []int{8, 9, 0, 1}},
		{"first range skips present blocks", Options{First: []Range{{Off: 7 << 20, Len: 2 << 20}}}, []int{0, 8}, []int{8, 0}},
		{"first range partial block", Options{First: []Range{{Off: 3<<20 + 5, Len: 1}}}, []int{0, 3, 4}, []int{3, 0, 4}},
		{"first range past end ignored", Options{First: []Range{{Off: 20 << 20, Len: 5}}}, []int{2, 0}, []int{0, 2}},
		{"first ranges in given order", Options{First: []Range{{Off: 9 << 20, Len: 1}, {Off: 0, Len: 1}}}, []int{0, 5, 9}, []int{9, 0, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := New(&fakeBlocks{info: info}, tc.opt)
			if got := p.Plan(tc.missing); !slices.Equal(got, tc.want) {
				t.Fatalf("Plan(%v) = %v, want %v", tc.missing, got, tc.want)
			}
		})
	}
}

func TestParseOrder(t *testing.T) {
	for in, want := range map[string]Order{"": Sequential, "sequential": Sequential, "rarest": Rarest} {
		got, err := ParseOrder(in)
		if err != nil || got != want {
			t.Errorf("ParseOrder(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseOrder("random"); err == nil {
		t.Error("ParseOrder(random) succeeded")
	}
}

func TestRunFetchesInPlanOrder(t *testing.T) {
	info := blockstore.Task{ID: "x", Length: 6 << 20, BlockSize: 1 << 20}
	fb := &fakeBlocks{info: info, missing: []int{0, 1, 2, 3, 4, 5}}
	var order []int
	rec := &recordingBlocks{fakeBlocks: fb, fetched: &order}
	p := New(rec, Options{Concurrency: 1, First: []Range{{Off: 4 << 20, Len: 1}}, Logger: quietLogger()})
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := []int{4, 0, 1, 2, 3, 5}; !slices.Equal(order, want) {
		t.Fatalf("fetched %v, want %v", order, want)
	}
	if pr := p.Progress(); pr.State != StateDone || pr.BlocksFetched != 6 || pr.BlocksPresent != 6 {
		t.Fatalf("progress %+v", pr)
	}
}

type recordingBlocks struct {
	*fakeBlocks
	fetched *[]int
}

func (r *recordingBlocks) Fetch(ctx context.Context, idx int, prio peer.Priority) error {
	if prio != peer.Background {
		return errors.New("prefetch must fetch at background priority")
	}
	*r.fetched = append(*r.fetched, idx)
	return r.fakeBlocks.Fetch(ctx, idx, prio)
}

func TestRunVerifiesDigest(t *testing.T) {
	e := newEnv(t, 2)
	c := origin.Content{Size: 5<<20 + 123, Seed: 1}
	task := e.open(t, "f", c, c.Digest("sha256"))
	p := New(task, Options{Logger: quietLogger()})
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	pr := p.Progress()
	if !pr.Complete || !pr.Verified || pr.State != StateDone || pr.BlocksPresent != pr.BlocksTotal || pr.BlocksTotal != 6 {
		t.Fatalf("progress %+v", pr)
	}
	if pr.BytesFetched != c.Size {
		t.Fatalf("bytes fetched %d, want %d", pr.BytesFetched, c.Size)
	}
	meta, _ := e.store.Task(task.ID())
	if meta.State != blockstore.StateComplete || !meta.Verified {
		t.Fatalf("store task %+v", meta)
	}
	var buf bytes.Buffer
	if _, err := e.store.WriteTo(context.Background(), task.ID(), &buf); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, c.Size)
	c.ReadAt(want, 0)
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatal("stored content differs from the origin's")
	}
}

func TestRunWithoutDigestChecksBlocksOnly(t *testing.T) {
	e := newEnv(t, 2)
	task := e.open(t, "f", origin.Content{Size: 3 << 20, Seed: 2}, "")
	p := New(task, Options{Logger: quietLogger()})
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pr := p.Progress(); !pr.Complete || pr.Verified || pr.Digest == "" {
		t.Fatalf("want complete, not verified, computed digest; got %+v", pr)
	}
}

func TestRunWrongDigestFails(t *testing.T) {
	e := newEnv(t, 2)
	wrong := "sha256:" + string(bytes.Repeat([]byte("ab"), 32))
	task := e.open(t, "f", origin.Content{Size: 3 << 20, Seed: 3}, wrong)
	p := New(task, Options{Logger: quietLogger()})
	err := p.Run(context.Background())
	if !errors.Is(err, ErrVerification) || !errors.Is(err, blockstore.ErrDigestMismatch) {
		t.Fatalf("Run = %v, want a verification failure", err)
	}
	pr := p.Progress()
	if pr.State != StateFailed || pr.Complete || pr.Verified || pr.Error == "" {
		t.Fatalf("progress %+v", pr)
	}
	if meta, _ := e.store.Task(task.ID()); meta.State == blockstore.StateComplete {
		t.Fatal("task marked complete despite a digest mismatch")
	}
}

// fgBlocks is a real task whose foreground activity the test controls.
type fgBlocks struct {
	*peer.Task
	fg atomic.Int32
}

func (f *fgBlocks) ForegroundInFlight() int { return int(f.fg.Load()) + f.Task.ForegroundInFlight() }

func TestPausesWhileForegroundReads(t *testing.T) {
	e := newEnv(t, 2)
	c := origin.Content{Size: 4 << 20, Seed: 4}
	b := &fgBlocks{Task: e.open(t, "f", c, c.Digest("sha256"))}
	b.fg.Store(1)
	p := New(b, Options{Quiet: 100 * time.Millisecond, Logger: quietLogger()})
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	time.Sleep(500 * time.Millisecond)
	if w := e.store.Stats().BlocksWritten; w != 0 {
		t.Fatalf("prefetcher stored %d blocks while a foreground read was in flight", w)
	}
	if s := p.Progress().State; s != StatePaused {
		t.Fatalf("state %q, want paused", s)
	}
	b.fg.Store(0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("prefetch did not resume after the foreground reads ended")
	}
	if pr := p.Progress(); !pr.Complete {
		t.Fatalf("progress %+v", pr)
	}
}

func TestRetriesFailedFetches(t *testing.T) {
	e := newEnv(t, -1) // no retries inside the origin client
	c := origin.Content{Size: 2 << 20, Seed: 5}
	task := e.open(t, "f", c, c.Digest("md5"))
	e.origin.FailNext(3)
	p := New(task, Options{Concurrency: 1, Retry: 20 * time.Millisecond, Logger: quietLogger()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
	pr := p.Progress()
	if !pr.Complete || pr.LastError == "" {
		t.Fatalf("want complete with a recorded error; got %+v", pr)
	}
}

func TestStopsOnCancel(t *testing.T) {
	e := newEnv(t, 2)
	task := e.open(t, "f", origin.Content{Size: 64 << 20, Seed: 6}, "")
	p := New(task, Options{DiskRate: 1 << 20, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop after cancel")
	}
	if pr := p.Progress(); pr.State != StateStopped || pr.Complete {
		t.Fatalf("progress %+v", pr)
	}
}

// measureRate returns bytes/s of counter over window, starting after warmup
// from the first byte counted.
func measureRate(t *testing.T, counter func() int64, warmup, window time.Duration) float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counter() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nothing was fetched")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(warmup)
	a, t0 := counter(), time.Now()
	time.Sleep(window)
	b, t1 := counter(), time.Now()
	return float64(b-a) / t1.Sub(t0).Seconds()
}

func TestDiskRateThrottle(t *testing.T) {
	e := newEnv(t, 2)
	const limit = 4 << 20
	task := e.open(t, "f", origin.Content{Size: 48 << 20, Seed: 7}, "")
	p := New(task, Options{DiskRate: limit, Concurrency: 4, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	p.Progress() // starts the progress rate window
	got := measureRate(t, func() int64 { return e.store.Stats().BytesWritten }, time.Second, 5*time.Second)
	pr := p.Progress()
	cancel()
	<-done
	if pr.State != StateFetching || pr.BytesPerSec < 0.75*limit || pr.BytesPerSec > 1.25*limit {
		t.Errorf("progress during the throttled run: state %s, %.0f B/s; want fetching at about %d B/s", pr.State, pr.BytesPerSec, limit)
	}
	t.Logf("store write rate %.2f MiB/s with --disk-rate %d MiB/s", got/(1<<20), limit>>20)
	if got < 0.9*limit || got > 1.1*limit {
		t.Fatalf("store write rate %.0f B/s, want within 10%% of %d", got, limit)
	}
}

func TestNetworkRateThrottle(t *testing.T) {
	e := newEnv(t, 2)
	const limit = 4 << 20
	task := e.open(t, "f", origin.Content{Size: 32 << 20, Seed: 8}, "")
	p := New(task, Options{NetworkRate: limit, Concurrency: 4, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	got := measureRate(t, e.origin.BytesSent, 500*time.Millisecond, 4*time.Second)
	cancel()
	<-done
	t.Logf("origin send rate %.2f MiB/s with --prefetch-rate %d MiB/s", got/(1<<20), limit>>20)
	if got < 0.85*limit || got > 1.15*limit {
		t.Fatalf("origin send rate %.0f B/s, want within 15%% of %d", got, limit)
	}
}
