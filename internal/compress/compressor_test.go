package compress

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestIdleRule(t *testing.T) {
	tests := []struct {
		name      string
		inFlight  int
		max       int
		cpu       float64
		cpuKnown  bool
		wantsIdle bool
	}{
		{"quiet", 0, 64, 0.05, true, true},
		{"half the upload slots busy", 32, 64, 0.05, true, false},
		{"just under half", 31, 64, 0.05, true, true},
		{"busy CPU", 0, 64, 0.6, true, false},
		{"CPU just under the limit", 0, 64, MaxOtherCPU - 0.01, true, true},
		{"CPU not known yet", 0, 64, 0.99, false, true},
		{"no upload cap known", 100, 0, 0.1, true, true},
	}
	for _, tc := range tests {
		if got := Idle(tc.inFlight, tc.max, tc.cpu, tc.cpuKnown); got != tc.wantsIdle {
			t.Errorf("%s: Idle = %v, want %v", tc.name, got, tc.wantsIdle)
		}
	}
}

// fakeStore holds blocks for a Compressor.
type fakeStore struct {
	mu     sync.Mutex
	blocks map[jobKey][]byte
	reads  atomic.Int64
}

func (s *fakeStore) put(task string, idx int, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocks == nil {
		s.blocks = map[jobKey][]byte{}
	}
	s.blocks[jobKey{task, idx}] = b
}

func (s *fakeStore) read(task string, idx int) ([]byte, error) {
	s.reads.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blocks[jobKey{task, idx}]
	if !ok {
		return nil, errors.New("not held")
	}
	return b, nil
}

func (s *fakeStore) digest(task string, idx int) ([]byte, bool) {
	b, err := s.read(task, idx)
	if err != nil {
		return nil, false
	}
	s.reads.Add(-1)
	sum := sha256.Sum256(b)
	return sum[:], true
}

func newCompressor(t *testing.T, st *fakeStore, cfg CompressorConfig) (*Compressor, *Forms) {
	t.Helper()
	c := newCodec(t)
	forms := openForms(t, t.TempDir(), c)
	cfg.Forms, cfg.Codec, cfg.Read, cfg.Digest, cfg.Logger = forms, c, st.read, st.digest, quiet()
	if cfg.Mode == Off {
		cfg.Mode = Always
	}
	p := NewCompressor(cfg)
	t.Cleanup(p.Close)
	return p, forms
}

// waitFor waits until cond holds (at most 10 s).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCompressorOneTrialPerBlock(t *testing.T) {
	st := &fakeStore{}
	p, forms := newCompressor(t, st, CompressorConfig{Workers: 2})
	txt, rnd := text(1<<20, 1), random(1<<20, 2)
	st.put("u1", 0, txt)
	st.put("u1", 1, rnd)
	ctx := context.Background()
	p.Stored(ctx, "u1", 0, txt, 10*time.Second) // waits for its trial
	p.Stored(ctx, "u1", 1, rnd, 10*time.Second)
	d0, _ := st.digest("u1", 0)
	d1, _ := st.digest("u1", 1)
	if forms.Lookup("u1", 0, d0) != Compressed || forms.Lookup("u1", 1, d1) != NotWorth {
		t.Fatalf("verdicts: %v, %v; want Compressed, NotWorth", forms.Lookup("u1", 0, d0), forms.Lookup("u1", 1, d1))
	}
	// Offered again, and asked for: no second trial.
	p.Stored(ctx, "u1", 0, txt, 10*time.Second)
	p.Stored(ctx, "u1", 1, rnd, 10*time.Second)
	p.Wanted("u1", 1)
	waitFor(t, "the queue to drain", func() bool { return p.Stats().Queued == 0 })
	time.Sleep(20 * time.Millisecond)
	s := p.Stats()
	if s.Trials != 2 || s.Kept != 1 || s.SampleSaysNo != 1 || s.BytesTried != 2<<20 || s.FormBytes <= 0 || s.FormBytes >= 1<<20 {
		t.Fatalf("stats %+v: want two trials, one kept, one ruled out by its sample", s)
	}
	if st.reads.Load() != 0 {
		t.Fatalf("%d reads from the store: offered blocks carry their bytes", st.reads.Load())
	}
}

func TestCompressorWantedReadsTheStore(t *testing.T) {
	st := &fakeStore{}
	p, forms := newCompressor(t, st, CompressorConfig{Workers: 1})
	txt := text(512<<10, 3)
	st.put("sha256-aa", 3, txt)
	p.Wanted("sha256-aa", 3)
	d, _ := st.digest("sha256-aa", 3)
	waitFor(t, "the wanted block's trial", func() bool { return forms.Lookup("sha256-aa", 3, d) == Compressed })
	if st.reads.Load() != 1 {
		t.Fatalf("%d reads, want 1", st.reads.Load())
	}
	p.Wanted("sha256-aa", 9) // not held (no digest): nothing tried
	waitFor(t, "the queue to drain", func() bool { return p.Stats().Queued == 0 })
	st.put("sha256-aa", 5, txt)
	p.cfg.Read = func(string, int) ([]byte, error) { return nil, errors.New("disk error") }
	p.Wanted("sha256-aa", 5) // held, but not readable
	waitFor(t, "the failed read", func() bool { return p.Stats().ReadFailures == 1 })
	if s := p.Stats(); s.Trials != 1 {
		t.Fatalf("%d trials, want 1", s.Trials)
	}
	p.Wanted("../x", 0) // never queued
	if p.Stats().Queued != 0 {
		t.Fatal("an invalid task was queued")
	}
}

func TestCompressorChangedBlockIsReadAgain(t *testing.T) {
	st := &fakeStore{}
	p, forms := newCompressor(t, st, CompressorConfig{Workers: 1})
	old, cur := text(256<<10, 4), text(256<<10, 5)
	gate := make(chan struct{})
	st.put("u1", 0, old)
	p.cfg.Skip = func(string) bool { <-gate; return false } // hold the worker
	p.Stored(context.Background(), "u1", 0, old, 0)
	st.put("u1", 0, cur) // the content changed before the trial ran
	close(gate)
	d, _ := st.digest("u1", 0)
	waitFor(t, "the trial", func() bool { return forms.Lookup("u1", 0, d) == Compressed })
	f, _, ok := forms.Open("u1", 0, d)
	if !ok {
		t.Fatal("no form for the current block")
	}
	f.Close()
	if st.reads.Load() != 1 {
		t.Fatal("the stale bytes were compressed instead of the current block")
	}
}

func TestCompressorMostWantedFirst(t *testing.T) {
	st := &fakeStore{}
	var order []int
	var mu sync.Mutex
	gate := make(chan struct{})
	first := true
	p, _ := newCompressor(t, st, CompressorConfig{Workers: 1, Skip: func(string) bool {
		mu.Lock()
		wait := first
		first = false
		mu.Unlock()
		if wait {
			<-gate
		}
		return false
	}})
	for i := range 5 {
		b := text(64<<10, uint64(10+i))
		st.put("u1", i, b)
	}
	p.Wanted("u1", 0) // taken by the worker, which waits at the gate
	waitFor(t, "the worker to take the first job", func() bool { return p.Stats().Queued == 0 })
	for i := 1; i < 5; i++ {
		p.Wanted("u1", i)
	}
	p.Wanted("u1", 3)
	p.Wanted("u1", 3)
	p.Wanted("u1", 2)
	p.cfg.Digest = func(task string, idx int) ([]byte, bool) {
		mu.Lock()
		order = append(order, idx)
		mu.Unlock()
		return st.digest(task, idx)
	}
	close(gate)
	waitFor(t, "every trial", func() bool { return p.Stats().Trials == 5 })
	mu.Lock()
	defer mu.Unlock()
	want := []int{3, 2, 1, 4} // by the number of asks, then first come
	if len(order) != 5 || order[1] != want[0] || order[2] != want[1] || order[3] != want[2] || order[4] != want[3] {
		t.Fatalf("trial order %v, want 0 then %v", order, want)
	}
}

func TestCompressorSkipsWhenLoadedOrExcluded(t *testing.T) {
	st := &fakeStore{}
	var idle atomic.Bool
	p, forms := newCompressor(t, st, CompressorConfig{Mode: Auto, Workers: 1, Idle: idle.Load,
		Skip: func(task string) bool { return task == "e0123" }})
	txt := text(256<<10, 6)
	st.put("u1", 0, txt)
	st.put("e0123", 0, txt)
	d, _ := st.digest("u1", 0)
	p.Stored(context.Background(), "u1", 0, txt, 10*time.Second)
	if forms.Lookup("u1", 0, d) != Unknown || p.Stats().SkippedLoaded != 1 {
		t.Fatal("a loaded supernode tried a block")
	}
	idle.Store(true)
	p.Stored(context.Background(), "e0123", 0, txt, 10*time.Second)
	if p.Stats().SkippedTask != 1 || forms.Lookup("e0123", 0, d) != Unknown {
		t.Fatal("an excluded task was tried")
	}
	p.Wanted("u1", 0) // later, not loaded: a peer's ask brings it back
	waitFor(t, "the block's trial", func() bool { return forms.Lookup("u1", 0, d) == Compressed })
}

func TestCompressorStoredWaitIsBounded(t *testing.T) {
	st := &fakeStore{}
	gate := make(chan struct{})
	defer close(gate)
	p, _ := newCompressor(t, st, CompressorConfig{Workers: 1, Skip: func(string) bool { <-gate; return false }})
	txt := text(64<<10, 7)
	st.put("u1", 0, txt)
	began := time.Now()
	p.Stored(context.Background(), "u1", 0, txt, 20*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Stored(ctx, "u1", 1, txt, time.Hour) // ctx ended: no wait
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("Stored waited %v for a held worker", d)
	}
}

func TestCompressorCloseDropsQueue(t *testing.T) {
	st := &fakeStore{}
	gate := make(chan struct{})
	p, _ := newCompressor(t, st, CompressorConfig{Workers: 1, Skip: func(string) bool { <-gate; return false }})
	for i := range 3 {
		st.put("u1", i, text(64<<10, uint64(i)))
		p.Wanted("u1", i)
	}
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	close(gate)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	p.Close() // twice is fine
	p.Wanted("u1", 9)
	if s := p.Stats(); s.Queued != 0 || s.Trials > 1 {
		t.Fatalf("after Close: %+v", s)
	}
	var nilP *Compressor
	nilP.Stored(context.Background(), "u1", 0, nil, time.Second)
	nilP.Wanted("u1", 0)
	nilP.Close()
	if nilP.Busy() != 0 || nilP.Stats().Mode != "off" {
		t.Fatal("a nil compressor is not inert")
	}
}
