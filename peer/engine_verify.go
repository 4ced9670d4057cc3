package peer

// The end of a download: the whole-content verification pass, which also
// writes the caller's output, and the output sinks that account for every
// byte written, so a download never succeeds with an output that is not
// exactly the verified content.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/dfly-p2p/dfly/blockstore"
)

// Complete verifies the whole content and marks the task complete. When a
// stored block turns out corrupt (or the whole digest does not match), every
// block is scrubbed, the bad ones are refetched and verification runs again
// (twice at most). A mismatch with no corrupt block is final. A task that is
// complete already is returned as it is.
func (t *Task) Complete(ctx context.Context) (blockstore.Task, error) {
	return t.finish(ctx, nil, nopSink{})
}

// sink is where a download writes the verified content, block by block,
// with the bookkeeping that proves, at the end, that it wrote all of it.
type sink interface {
	// emit writes verified block idx (blk is only read, during the call).
	emit(idx int, blk []byte) error
	// written reports whether block idx is in the output already.
	written(idx int) bool
	// reset prepares a pass that writes everything again (after a repair).
	reset() error
	// check fails unless the output holds every block of meta.
	check(meta blockstore.Task) error
}

// nopSink is the sink of a download without an output.
type nopSink struct{}

func (nopSink) emit(int, []byte) error      { return nil }
func (nopSink) written(int) bool            { return true }
func (nopSink) reset() error                { return nil }
func (nopSink) check(blockstore.Task) error { return nil }

// seqSink writes the content in order to an io.Writer (dfget's output).
type seqSink struct {
	w    io.Writer
	mu   sync.Mutex
	next int   // blocks written, from the first
	n    int64 // bytes written
}

func (s *seqSink) emit(idx int, blk []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if idx == 0 && s.next > 0 {
		// The hash started over (the task's digest, or a block's, changed
		// since it began): what was written may be stale; write it again.
		if err := rewind(s.w); err != nil {
			return err
		}
		s.next, s.n = 0, 0
	}
	if idx != s.next {
		return fmt.Errorf("output: block %d comes after %d blocks written; the output is written in order only", idx, s.next)
	}
	m, err := s.w.Write(blk)
	s.n += int64(m)
	if err != nil {
		return err
	}
	s.next++
	return nil
}

func (s *seqSink) written(idx int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return idx < s.next
}

func (s *seqSink) reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next, s.n = 0, 0
	return rewind(s.w)
}

func (s *seqSink) check(meta blockstore.Task) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next != meta.NumBlocks() || s.n != meta.Length {
		return fmt.Errorf("task %s: the output got %d bytes in %d blocks, want %d bytes in %d: %w",
			meta.ID, s.n, s.next, meta.Length, meta.NumBlocks(), blockstore.ErrIncomplete)
	}
	return nil
}

// atSink writes each block at its offset in an io.WriterAt (the daemon's
// outputs), except the blocks its mirror (if any) wrote there as they
// arrived.
type atSink struct {
	w      io.WriterAt
	bs     int64
	blocks int

	mu   sync.Mutex
	m    *outputMirror // nil after a repair: every block is written again
	done blockstore.Bitmap
}

func newAtSink(w io.WriterAt, meta blockstore.Task, m *outputMirror) *atSink {
	return &atSink{w: w, bs: meta.BlockSize, blocks: meta.NumBlocks(), m: m, done: blockstore.NewBitmap(meta.NumBlocks())}
}

func (s *atSink) emit(idx int, blk []byte) error {
	s.mu.Lock()
	m := s.m
	s.mu.Unlock()
	if m == nil || !m.wrote(idx) {
		if _, err := s.w.WriteAt(blk, int64(idx)*s.bs); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.done.Set(idx)
	s.mu.Unlock()
	return nil
}

func (s *atSink) written(idx int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done.Has(idx) || s.m != nil && s.m.wrote(idx)
}

func (s *atSink) reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = nil
	s.done = blockstore.NewBitmap(s.blocks)
	return nil
}

func (s *atSink) check(meta blockstore.Task) error {
	missing := 0
	for idx := range meta.NumBlocks() {
		if !s.written(idx) {
			missing++
		}
	}
	if missing > 0 || s.bs != meta.BlockSize || s.blocks != meta.NumBlocks() {
		return fmt.Errorf("task %s: %d of %d blocks were not written to the output (block size %d, task's %d): %w",
			meta.ID, missing, meta.NumBlocks(), s.bs, meta.BlockSize, blockstore.ErrIncomplete)
	}
	return nil
}

// finish ends a download (or Complete): the verification pass that
// completes the task, continuing c (the hash advanced while the blocks
// arrived, may be nil), writing to s what it does not hold yet. The final
// passes of concurrent downloads of the task run one at a time: when one
// finds the task completed by another, it only writes what its output
// lacks, from verified blocks, and reports the task as the other completed
// it.
func (t *Task) finish(ctx context.Context, c *blockstore.ContentHash, s sink) (blockstore.Task, error) {
	unlock, err := t.lockCompletion(ctx)
	if err != nil {
		return t.Info(), err
	}
	meta, err := t.meta()
	if err != nil {
		unlock()
		return meta, err
	}
	if meta.State != blockstore.StateComplete {
		defer unlock()
		meta, err = t.completeFunc(ctx, c, s)
		if err != nil {
			return meta, err
		}
		return meta, s.check(meta)
	}
	unlock() // complete: writing the output needs no lock
	return t.writeComplete(ctx, meta, s)
}

// lockCompletion takes the task's completion lock, or gives up with ctx.
func (t *Task) lockCompletion(ctx context.Context) (unlock func(), err error) {
	select {
	case t.completing <- struct{}{}:
		return func() { <-t.completing }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// writeComplete writes the blocks s lacks of the complete task meta,
// verified, repairing the task when a stored block turned out corrupt.
func (t *Task) writeComplete(ctx context.Context, meta blockstore.Task, s sink) (blockstore.Task, error) {
	if _, ok := s.(nopSink); ok {
		return meta, nil
	}
	err := t.e.store.ForEachBlock(ctx, t.id, func(idx int, blk []byte) error {
		if s.written(idx) {
			return nil
		}
		if err := t.plain(idx, blk); err != nil {
			return err
		}
		return s.emit(idx, blk)
	})
	if err == nil {
		return meta, s.check(meta)
	}
	if !errors.Is(err, blockstore.ErrCorrupt) {
		return meta, err
	}
	// A block rotted since completion (the store dropped it): fetch it
	// again, verify the whole content again and write everything again.
	t.e.log.Warn("stored block of a complete task failed verification; repairing it", "task", t.id, "err", err)
	unlock, err := t.lockCompletion(ctx)
	if err != nil {
		return meta, err
	}
	defer unlock()
	if err := s.reset(); err != nil {
		return meta, err
	}
	computed := !meta.Verified // its digest was computed here, not declared
	repaired, err := t.completeFunc(ctx, nil, s)
	if err != nil {
		return repaired, err
	}
	if computed && repaired.Verified {
		// Checked against a digest this store computed, which no one
		// declared: not "verified" in the sense of Task.Verified.
		if repaired, err = t.e.store.UpdateTask(t.id, func(m *blockstore.Task) error { m.Verified = false; return nil }); err != nil {
			return repaired, err
		}
	}
	return repaired, s.check(repaired)
}

// completeFunc runs the verification passes, emitting to s every block of
// a pass that verifies (s is reset before a pass that follows a repair).
// The first pass continues c when c is not nil (a hash the download
// advanced while its blocks arrived); the others start from the first
// block.
func (t *Task) completeFunc(ctx context.Context, c *blockstore.ContentHash, s sink) (blockstore.Task, error) {
	emit := s.emit
	if _, ok := s.(nopSink); ok {
		emit = nil
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := s.reset(); err != nil {
				return t.Info(), err
			}
		}
		before, err := t.meta()
		if err != nil {
			return before, err
		}
		var meta blockstore.Task
		early := attempt == 0 && c != nil && c.Hashed() > 0
		if attempt == 0 && c != nil {
			meta, err = t.e.store.CompleteHash(ctx, c, emit)
		} else {
			meta, err = t.verifyAndComplete(ctx, emit)
		}
		if err == nil || attempt >= 2 {
			return meta, err
		}
		switch {
		case errors.Is(err, blockstore.ErrCorrupt), errors.Is(err, blockstore.ErrDigestMismatch):
			n, serr := t.e.store.Scrub(ctx, t.id)
			if serr != nil {
				return meta, serr
			}
			if n == 0 && errors.Is(err, blockstore.ErrDigestMismatch) && !early {
				return meta, err // every block is intact: the content itself is not what was declared
			}
			// (A hash started while the blocks arrived may have read a
			// block that was dropped and fetched again since: a full pass
			// decides.)
			if n > 0 {
				t.e.log.Warn("dropped corrupt stored blocks; fetching them again", "task", t.id, "blocks", n)
			}
		case errors.Is(err, blockstore.ErrIncomplete), errors.Is(err, blockstore.ErrNotFound):
			// A block went missing (or was dropped during the pass): fetch
			// what is missing and verify again.
		default:
			if now, merr := t.meta(); merr == nil && now.Digest != before.Digest {
				continue // a digest was declared during the pass (another Open): verify against it
			}
			return meta, err
		}
		for _, idx := range t.Missing() {
			if err := t.Fetch(ctx, idx, Background); err != nil {
				return meta, err
			}
		}
	}
}

// rewind truncates and rewinds an output for a second verification pass.
func rewind(w io.Writer) error {
	type truncSeeker interface {
		io.Seeker
		Truncate(int64) error
	}
	ts, ok := w.(truncSeeker)
	if !ok {
		return fmt.Errorf("output cannot be rewritten after a corrupt block was found; run again")
	}
	if err := ts.Truncate(0); err != nil {
		return err
	}
	_, err := ts.Seek(0, io.SeekStart)
	return err
}

// outputMirror writes the blocks a download stores to its OutputAt at once,
// from the very bytes the store verified (Task.stored), so writing the
// output overlaps the transfer. The download closes it before its
// verification pass.
type outputMirror struct {
	t  *Task
	w  io.WriterAt
	bs int64

	mu      sync.RWMutex // writes hold it shared; close exclusively
	closed  bool
	failed  atomic.Bool       // a write failed: leave the rest to the verification pass
	written blockstore.Bitmap // guarded by wmu
	wmu     sync.Mutex
}

func newOutputMirror(t *Task, meta blockstore.Task, w io.WriterAt) *outputMirror {
	m := &outputMirror{t: t, w: w, bs: meta.BlockSize, written: blockstore.NewBitmap(meta.NumBlocks())}
	t.mu.Lock()
	if t.mirrors == nil {
		t.mirrors = map[*outputMirror]struct{}{}
	}
	t.mirrors[m] = struct{}{}
	t.mu.Unlock()
	return m
}

// write writes block idx (verified bytes) unless the mirror is closed or a
// write failed before (the verification pass then writes the rest and
// reports the error).
func (m *outputMirror) write(idx int, data []byte) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed || m.failed.Load() {
		return
	}
	if _, err := m.w.WriteAt(data, int64(idx)*m.bs); err != nil {
		m.t.e.log.Debug("writing output while downloading failed; the verification pass writes the rest", "task", m.t.id, "err", err)
		m.failed.Store(true)
		return
	}
	m.wmu.Lock()
	m.written.Set(idx)
	m.wmu.Unlock()
}

// close detaches the mirror and waits for writes in progress.
func (m *outputMirror) close() {
	m.t.mu.Lock()
	delete(m.t.mirrors, m)
	m.t.mu.Unlock()
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}

func (m *outputMirror) wrote(idx int) bool {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	return m.written.Has(idx)
}

// holdBack wraps the emit of a download's early hash (emit writes what m
// has not written): a block the download was missing when it started is
// present in the store a moment before m writes it, so the hash waits for
// m rather than write it twice. Without m it returns emit.
func (m *outputMirror) holdBack(missing []int, numBlocks int, emit func(int, []byte) error) func(int, []byte) error {
	if m == nil {
		return emit
	}
	fetching := blockstore.NewBitmap(numBlocks)
	for _, idx := range missing {
		fetching.Set(idx)
	}
	return func(idx int, blk []byte) error {
		if fetching.Has(idx) && !m.wrote(idx) && !m.failed.Load() {
			return errNotYet
		}
		return emit(idx, blk)
	}
}

// stored hands block idx, just verified and stored (data: the stored
// bytes, only read during the call), to the outputs of the downloads of
// this task that are running (see DownloadOptions.OutputAt), in the clear.
func (t *Task) stored(idx int, data []byte) {
	if x := t.e2e.Load(); x != nil {
		t.mu.Lock()
		none := len(t.mirrors) == 0
		t.mu.Unlock()
		if none {
			return
		}
		plain := make([]byte, len(data))
		x.XOR(idx, plain, data)
		data = plain
	}
	t.storedPlain(idx, data)
}

// storedPlain is stored with the block's plaintext.
func (t *Task) storedPlain(idx int, data []byte) {
	t.mu.Lock()
	if len(t.mirrors) == 0 {
		t.mu.Unlock()
		return
	}
	ms := make([]*outputMirror, 0, len(t.mirrors))
	for m := range t.mirrors {
		ms = append(ms, m)
	}
	t.mu.Unlock()
	for _, m := range ms {
		m.write(idx, data)
	}
}
