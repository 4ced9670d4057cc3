package peer

// Downloading a task: its missing blocks fetched in the swarm's order, the
// whole-content hash advanced while they arrive, the caller's output
// written as they are stored, then the final verification (engine_verify.go).

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
)

// DownloadOptions tune Download.
type DownloadOptions struct {
	// Progress, if set, is called after every stored block, never concurrently.
	Progress func(Progress)
	// Output, if set, receives the verified content, written in the same
	// pass as the whole-content verification. If it is an *os.File (or has
	// Seek and Truncate) a repair pass can rewrite it.
	Output io.Writer
	// OutputAt, if set (instead of Output), receives every block at its
	// offset: each block this download fetches as soon as it is stored, so
	// that writing the output overlaps the transfer, and the others in the
	// verification pass. When Download succeeds the output holds exactly
	// the verified content: every block written was verified against its
	// digest, the pass checked the whole content, and every block of the
	// task was written (Download fails otherwise).
	OutputAt io.WriterAt
	// Pace, if set, is called before each block this download fetches
	// with the block's length; it may wait (background work yielding to
	// foreground downloads, a rate limit). An error ends the download.
	Pace func(ctx context.Context, n int64) error
}

// Progress of a download.
type Progress struct {
	Done, Total int64 // bytes present / content length
	Stats       TaskStats
}

// Result of a completed download.
type Result struct {
	Task     blockstore.Task
	Stats    TaskStats
	Duration time.Duration
	// Open is the time to resolve the task (swarm registration or origin
	// stat); FirstBlock the time from the start to the first block stored;
	// Verify the time of the final whole-content pass (verification and
	// writing the output), after the last block arrived.
	Open, FirstBlock, Verify time.Duration
	// HashedEarly is how many blocks (from the first) the whole-content
	// hash had covered while blocks still arrived; the final pass hashed
	// the rest.
	HashedEarly int
	Fallback    int64 // operations that fell back to the origin
}

// Download opens the task of req and downloads it (see Task.Download).
func (e *Engine) Download(ctx context.Context, req Request, opt DownloadOptions) (Result, error) {
	if opt.Pace == nil {
		e.foreground.Add(1)
		defer e.foreground.Add(-1)
	}
	start := time.Now()
	fb := e.fallbacks.Load()
	t, err := e.Open(ctx, req)
	if err != nil {
		e.cfg.Metrics.download(ctx, err)
		e.cfg.Recent.Done(err)
		return Result{}, err
	}
	opened := time.Since(start)
	res, err := t.Download(ctx, opt)
	res.Duration, res.Open = time.Since(start), opened
	if res.FirstBlock > 0 {
		res.FirstBlock += opened
	}
	res.Fallback = e.fallbacks.Load() - fb
	return res, err
}

// Download fetches every missing block of the task, verifies the whole
// content and writes it to the options' output. Concurrent downloads of a
// task share its block fetches.
func (t *Task) Download(ctx context.Context, opt DownloadOptions) (Result, error) {
	ctx, span := t.startDownloadSpan(ctx)
	start := time.Now()
	fb := t.e.fallbacks.Load()
	t.e.cfg.Metrics.taskBegin(&t.active)
	endRecent := t.e.cfg.Recent.Begin(t.id)
	res, err := t.download(ctx, opt)
	t.e.cfg.Metrics.taskEnd(&t.active)
	t.e.cfg.Metrics.download(ctx, err)
	endRecent(err)
	res.Duration = time.Since(start)
	res.Fallback = t.e.fallbacks.Load() - fb
	if sw := t.e.cfg.Swarm; sw != nil {
		sw.Done(t, err)
	}
	endDownloadSpan(span, res, err)
	return res, err
}

// emitOf returns s's emit, or nil when s writes nowhere.
func emitOf(s sink) func(int, []byte) error {
	if _, ok := s.(nopSink); ok {
		return nil
	}
	return s.emit
}

func (t *Task) download(ctx context.Context, opt DownloadOptions) (Result, error) {
	meta, err := t.meta()
	if err != nil {
		return Result{Task: meta}, err
	}
	var s sink = nopSink{}
	if opt.Output != nil {
		s = &seqSink{w: opt.Output}
	}
	if meta.State == blockstore.StateComplete {
		t.bytesLocal.Add(meta.Length)
		t.e.cfg.Metrics.delivered(FromLocal, meta.Length)
		t.e.cfg.Recent.AddBytes(FromLocal, meta.Length)
		if opt.OutputAt != nil {
			s = newAtSink(opt.OutputAt, meta, nil)
		}
		meta, err := t.writeComplete(ctx, meta, s)
		return Result{Task: meta, Stats: t.Stats()}, err
	}
	missing := t.Missing()
	var done atomic.Int64
	done.Store(meta.Length - missingBytes(meta, missing))
	t.bytesLocal.Add(done.Load())
	t.e.cfg.Metrics.delivered(FromLocal, done.Load())
	t.e.cfg.Recent.AddBytes(FromLocal, done.Load())
	var reportMu sync.Mutex // Progress is called from one goroutine at a time
	report := func() {
		if opt.Progress != nil {
			reportMu.Lock()
			defer reportMu.Unlock()
			opt.Progress(Progress{Done: done.Load(), Total: meta.Length, Stats: t.Stats()})
		}
	}
	report()

	var mirror *outputMirror
	if opt.OutputAt != nil {
		mirror = newOutputMirror(t, meta, opt.OutputAt)
		s = newAtSink(opt.OutputAt, meta, mirror)
	}
	began := time.Now()
	var first sync.Once
	var firstBlock time.Duration
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	hasher := t.startPrefixHash(ctx, mirror.holdBack(missing, meta.NumBlocks(), emitOf(s)))
	work := make(chan int)
	var wg sync.WaitGroup
	for range t.e.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idx := range work {
				if opt.Pace != nil {
					if err := opt.Pace(ctx, meta.BlockLen(idx)); err != nil {
						cancel(err)
						return
					}
				}
				if err := t.Fetch(ctx, idx, Background); err != nil {
					cancel(err)
					return
				}
				first.Do(func() { firstBlock = time.Since(began) })
				done.Add(meta.BlockLen(idx))
				hasher.kick()
				report()
			}
		}()
	}
	t.feed(ctx, meta, missing, work)
	close(work)
	wg.Wait()
	c := hasher.stop()
	early := 0
	if c != nil {
		early = c.Hashed()
	}
	if mirror != nil {
		mirror.close()
	}
	if err := context.Cause(ctx); err != nil {
		return Result{Task: t.Info(), Stats: t.Stats()}, err
	}
	verifying := time.Now()
	meta, err = t.finish(ctx, c, s)
	return Result{Task: meta, Stats: t.Stats(), FirstBlock: firstBlock, Verify: time.Since(verifying), HashedEarly: early}, err
}

// prefixHash advances a download's whole-content hash (and writes its
// output, through emit) while the blocks arrive: after every block stored
// it hashes the blocks present after the last one hashed. The download
// fetches its last blocks in file order (see feed), so little is left to
// hash when the last block lands. Its goroutine is owned by the download,
// which stops it before the final pass.
type prefixHash struct {
	c     *blockstore.ContentHash
	kicks chan struct{}
	quit  chan struct{}
	done  chan struct{}
}

func (t *Task) startPrefixHash(ctx context.Context, emit func(int, []byte) error) *prefixHash {
	c, err := t.e.store.NewContentHash(t.id)
	if err != nil {
		t.e.log.Debug("no early whole-content hash; the final pass hashes everything", "task", t.id, "err", err)
		return nil
	}
	c.SetE2E(t.e2e.Load())
	p := &prefixHash{c: c, kicks: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.quit:
				return
			case <-ctx.Done():
				return
			case <-p.kicks:
			}
			if _, err := t.e.store.HashPresent(ctx, c, emit); err != nil && !errors.Is(err, errNotYet) {
				// The final pass hashes (and writes) the rest and reports
				// the error if it persists.
				t.e.log.Debug("early whole-content hash stopped", "task", t.id, "err", err)
				return
			}
		}
	}()
	p.kick()
	return p
}

// errNotYet stops the early hash at a block until the next kick.
var errNotYet = errors.New("block not written to the output yet")

// kick tells the hash that a block was stored.
func (p *prefixHash) kick() {
	if p == nil {
		return
	}
	select {
	case p.kicks <- struct{}{}:
	default:
	}
}

// stop stops the goroutine and returns the hash for the final pass (nil if
// there is none).
func (p *prefixHash) stop() *blockstore.ContentHash {
	if p == nil {
		return nil
	}
	close(p.quit)
	<-p.done
	return p.c
}

// reorderEvery is how many blocks a download dispatches before asking the
// swarm again for its preferred order (rarity changes as the swarm fills).
const reorderEvery = 64

// tailFraction: a download dispatches the last 1/tailFraction of a task's
// blocks in file order, so that its whole-content hash (prefixHash) can
// follow them instead of running after the last block. By then every host
// of a swarm holds a different random three quarters of the task, so file
// order over what each one still misses keeps their requests spread.
const tailFraction = 4

// feed sends every block of missing to work, in the swarm's order, asking
// for a fresh order every reorderEvery blocks, and the last blocks of the
// task (see tailFraction) in file order.
func (t *Task) feed(ctx context.Context, meta blockstore.Task, missing []int, work chan<- int) {
	sw := t.e.cfg.Swarm
	tail := meta.NumBlocks() / tailFraction
	pending := missing
	for len(pending) > 0 {
		var n int
		switch {
		case sw == nil || len(pending) <= tail:
			slices.Sort(pending)
			n = len(pending)
		default:
			pending = sw.Order(t, pending)
			n = min(reorderEvery, len(pending)-tail)
		}
		for _, idx := range pending[:n] {
			select {
			case work <- idx:
			case <-ctx.Done():
				return
			}
		}
		pending = append([]int(nil), pending[n:]...)
	}
}

func missingBytes(meta blockstore.Task, missing []int) int64 {
	var n int64
	for _, idx := range missing {
		n += meta.BlockLen(idx)
	}
	return n
}
