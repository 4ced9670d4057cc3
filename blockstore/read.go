package blockstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/internal/directio"
)

// ReadBlock returns a verified copy of block idx: hashed against its digest
// unless this process already hashed it and its data file has not changed
// behind the store's back since (see datafile.go). A block that fails is
// dropped (so it will be fetched again) and ErrCorrupt returned. A sealed
// task's block is authenticated and decrypted on every read (see seal.go);
// one that fails authentication is dropped in the same way.
func (s *Store) ReadBlock(id string, idx int) ([]byte, error) {
	return s.readBlock(id, idx, nil, true)
}

// readBlock reads block idx into buf (reallocated if too small). With verify
// false the SHA-256 check is left to the caller (a whole-content digest).
func (s *Store) readBlock(id string, idx int, buf []byte, verify bool) ([]byte, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	has := idx >= 0 && idx < len(st.digests) && st.bitmap.Has(idx)
	if !has {
		st.mu.Unlock()
		return nil, fmt.Errorf("block %d of task %s: %w", idx, id, ErrNotFound)
	}
	want := st.digests[idx]
	var rec sealRec
	var extra int64 // room after the block for its tag (sealed tasks)
	if st.seals != nil {
		rec, extra = st.seals[idx], tagSize
	}
	checked := st.checked.Has(idx)
	gen := st.gen[idx]
	view := st.viewLocked()
	st.access = time.Now().UTC()
	n := st.task.BlockLen(idx)
	off := int64(idx) * st.task.BlockSize
	st.mu.Unlock()

	df, err := s.files.acquire(&st.slot, s.dataPath(id))
	if err != nil {
		return nil, fileErr(id, idx, err)
	}
	var direct *os.File
	if off%directio.Align == 0 { // (blocks smaller than a page are read through the cache)
		direct = s.directFile(df)
	}
	var data []byte
	var m int
	if direct != nil {
		data, m, err = s.readDirect(direct, df.f, buf, n, extra, off)
	} else {
		if int64(cap(buf)) < n+extra {
			buf = make([]byte, n, n+extra)
		}
		data = buf[:n]
		m, err = df.f.ReadAt(data, off)
	}
	// After the read: a change the stamp shows happened before it returned.
	got, serr := stampOf(df.f)
	s.files.release(df)
	if err == io.EOF && int64(m) < n {
		err = fmt.Errorf("data file %s ends inside the block (%d of %d bytes)", s.dataPath(id), m, n)
	}
	st.mu.Lock()
	trusted := s.settleLocked(st, view, got, serr)
	// A drop (and rewrite) that overlapped this read makes its bytes untrustworthy.
	changed := st.gen[idx] != gen || !st.bitmap.Has(idx) || st.deleted
	st.mu.Unlock()
	if changed {
		return nil, fmt.Errorf("block %d of task %s: dropped while being read: %w", idx, id, ErrNotFound)
	}
	if err == nil && extra > 0 {
		data, err = s.seal.open(data, rec, id, idx)
	}
	if err == nil && (!verify || checked && trusted) {
		s.bytesRead.Add(n)
		return data, nil
	}
	if err == nil {
		if sum := sha256.Sum256(data); want != nil && bytes.Equal(sum[:], want) {
			s.bytesRead.Add(n)
			st.mu.Lock()
			if st.gen[idx] == gen && st.epoch == view.epoch {
				st.checked.Set(idx)
			}
			st.mu.Unlock()
			return data, nil
		}
		err = fmt.Errorf("sha256 mismatch")
	}
	// Unreadable or wrong: drop the block so it is fetched again.
	s.corrupt.Add(1)
	s.log.Error("stored block failed verification; dropping it", "task", id, "block", idx, "err", err)
	st.mu.Lock()
	if st.gen[idx] == gen { // not re-stored meanwhile
		if derr := s.dropLocked(st, idx); derr != nil {
			s.log.Error("drop corrupt block", "task", id, "block", idx, "err", derr)
		}
	}
	st.mu.Unlock()
	return nil, fmt.Errorf("block %d of task %s in %s: %v; it was dropped and must be fetched again: %w", idx, id, s.dir, err, ErrCorrupt)
}

// readDirect reads the n bytes at off with O_DIRECT into buf (or a new
// aligned buffer, with room for extra bytes after the block): the read is
// rounded up to whole aligned pages, and may end early at the end of the
// file. A refused direct read is retried through the page cache (f).
func (s *Store) readDirect(direct, f *os.File, buf []byte, n, extra, off int64) ([]byte, int, error) {
	c := (n + directio.Align - 1) &^ (directio.Align - 1)
	if int64(cap(buf)) < max(c, n+extra) || !directio.AlignedAddr(buf[:1]) {
		buf = directio.Buffer(n + extra)
	}
	m, err := direct.ReadAt(buf[:c], off)
	if errors.Is(err, syscall.EINVAL) && m == 0 {
		s.directRefused(err)
		m, err = f.ReadAt(buf[:n], off)
		return buf[:n], m, err
	}
	if int64(m) >= n {
		return buf[:n], int(n), nil // the page-rounded read may go past the block
	}
	if err == nil {
		err = io.EOF
	}
	return buf[:n], m, err
}

// OpenBlock opens block idx for sending and returns a reader of its n
// bytes, to be closed after use. The block is verified first unless this
// process hashed it before and its data file has not changed behind the
// store's back since (ErrCorrupt: it failed and was dropped). Through the
// page cache the reader is the task's data file (*os.File, a descriptor of
// its own) positioned at the block, so an HTTP answer copying from it sends
// with sendfile(2), never through user space; a change made to the file
// while it is sent (or the block dropped and rewritten meanwhile, its
// digest changed at the origin) is caught by the receiver's own check. With
// Options.DirectIO, and for a sealed task (whose bytes on disk are
// ciphertext: they cannot be sent as they are), the block is read, verified
// (and decrypted), into a pooled buffer.
func (s *Store) OpenBlock(id string, idx int) (io.ReadCloser, int64, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, 0, err
	}
	st.mu.Lock()
	has := idx >= 0 && idx < len(st.digests) && st.bitmap.Has(idx)
	var n int64
	if has {
		n = st.task.BlockLen(idx)
	}
	sealed := st.task.Sealed
	st.mu.Unlock()
	if !has {
		return nil, 0, fmt.Errorf("block %d of task %s: %w", idx, id, ErrNotFound)
	}
	if sealed || s.opt.DirectIO && !s.noDirect.Load() {
		bp, _ := s.bufs.Get().(*[]byte)
		if bp == nil {
			bp = new([]byte)
		}
		data, err := s.readBlock(id, idx, *bp, true)
		if err != nil {
			s.bufs.Put(bp)
			return nil, 0, err
		}
		*bp = data
		return &pooledBlock{Reader: bytes.NewReader(data), buf: bp, pool: &s.bufs}, n, nil
	}
	df, err := s.files.acquire(&st.slot, s.dataPath(id))
	if err != nil {
		return nil, 0, fileErr(id, idx, err)
	}
	defer s.files.release(df)
	st.mu.Lock()
	checked := st.checked.Has(idx)
	view := st.viewLocked()
	st.mu.Unlock()
	got, serr := stampOf(df.f)
	st.mu.Lock()
	trusted := s.settleLocked(st, view, got, serr)
	st.mu.Unlock()
	if !checked || !trusted {
		if _, err := s.readBlock(id, idx, nil, true); err != nil {
			return nil, 0, err
		}
	}
	st.mu.Lock()
	off, deleted := int64(idx)*st.task.BlockSize, st.deleted
	st.access = time.Now().UTC()
	st.mu.Unlock()
	if deleted {
		return nil, 0, fmt.Errorf("block %d of task %s: %w", idx, id, ErrNotFound)
	}
	f, err := reopen(df)
	if err != nil {
		return nil, 0, fmt.Errorf("open block %d of task %s for sending: %w", idx, id, err)
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("open block %d of task %s: %w", idx, id, err)
	}
	s.bytesRead.Add(n)
	return f, n, nil
}

// pooledBlock is a block read into a pooled buffer; Close returns the buffer.
type pooledBlock struct {
	*bytes.Reader
	buf  *[]byte
	pool *sync.Pool
}

func (p *pooledBlock) Close() error {
	if p.buf != nil {
		p.pool.Put(p.buf)
		p.buf = nil
	}
	return nil
}

func (s *Store) uncheck(id string, idx int) {
	if st, err := s.state(id); err == nil {
		st.mu.Lock()
		st.checked.Clear(idx)
		st.mu.Unlock()
	}
}

// ReadAt reads len(p) bytes at off from the task's blocks. Every block read is
// verified. It fails with ErrNotFound if a needed block is missing.
func (s *Store) ReadAt(id string, p []byte, off int64) (int, error) {
	t, err := s.Task(id)
	if err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read task %s at %d: %w", id, off, ErrInvalid)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= t.Length {
			return n, io.EOF
		}
		idx := int(pos / t.BlockSize)
		blk, err := s.ReadBlock(id, idx)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], blk[pos-int64(idx)*t.BlockSize:])
	}
	return n, nil
}

// WriteTo streams the task's whole content, verified block by block, to w.
func (s *Store) WriteTo(ctx context.Context, id string, w io.Writer) (int64, error) {
	return s.writeTo(ctx, id, w, true)
}

func (s *Store) writeTo(ctx context.Context, id string, w io.Writer, verify bool) (int64, error) {
	var written int64
	err := s.streamBlocks(ctx, id, verify, func(_ int, blk []byte) error {
		m, err := w.Write(blk)
		written += int64(m)
		return err
	})
	return written, err
}

// readAhead is how many blocks streamBlocks reads ahead of its consumer.
const readAhead = 2

// ForEachBlock hands every block of the task, verified, in order, to fn
// (see streamBlocks); blk is valid only during the call.
func (s *Store) ForEachBlock(ctx context.Context, id string, fn func(idx int, blk []byte) error) error {
	return s.streamBlocks(ctx, id, true, fn)
}

// streamBlocks hands every block of the task, in order, to fn. A reader
// goroutine (owned by this call, which waits for it) reads ahead, so that
// reading the store overlaps with what fn does (hashing, writing an
// output); a block's buffer is reused only after fn returned.
func (s *Store) streamBlocks(ctx context.Context, id string, verify bool, fn func(idx int, blk []byte) error) error {
	return s.streamBlocksFrom(ctx, id, 0, verify, fn)
}

// streamBlocksFrom is streamBlocks starting at block from.
func (s *Store) streamBlocksFrom(ctx context.Context, id string, from int, verify bool, fn func(idx int, blk []byte) error) error {
	t, err := s.Task(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	type read struct {
		idx int
		blk []byte
		err error
	}
	blocks := make(chan read, readAhead)
	free := make(chan []byte, readAhead+1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(blocks)
		for idx := from; idx < t.NumBlocks(); idx++ {
			var buf []byte
			select {
			case buf = <-free:
			default:
			}
			r := read{idx: idx, err: ctx.Err()}
			if r.err == nil {
				r.blk, r.err = s.readBlock(id, idx, buf, verify)
			}
			select {
			case blocks <- r:
			case <-ctx.Done():
				return
			}
			if r.err != nil {
				return
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }() // a reader blocked on a full channel leaves on cancel
	for r := range blocks {
		if r.err != nil {
			return r.err
		}
		if err := fn(r.idx, r.blk); err != nil {
			return err
		}
		select {
		case free <- r.blk[:0]:
		default:
		}
	}
	return ctx.Err()
}

// Scrub reads and re-hashes every present block of the task (even those
// checked before), dropping the ones that fail (they will be fetched again).
// It returns how many it dropped.
func (s *Store) Scrub(ctx context.Context, id string) (int, error) {
	t, err := s.Task(id)
	if err != nil {
		return 0, err
	}
	dropped := 0
	var buf []byte
	for idx := 0; idx < t.NumBlocks(); idx++ {
		if err := ctx.Err(); err != nil {
			return dropped, err
		}
		if !s.HasBlock(id, idx) {
			continue
		}
		s.uncheck(id, idx)
		blk, err := s.readBlock(id, idx, buf, true)
		switch {
		case errors.Is(err, ErrCorrupt):
			dropped++
		case err != nil && !errors.Is(err, ErrNotFound):
			return dropped, err
		case err == nil:
			buf = blk[:0]
		}
	}
	return dropped, nil
}

// VerifyAndComplete checks the whole content against the task's digest and
// marks the task complete, streaming the content to w (if not nil) in the
// same pass. Without a declared digest it records the SHA-256 it computed
// (Verified stays false: only the per-block digests were checked). It returns
// ErrIncomplete when blocks are missing and ErrDigestMismatch (the task stays
// pending) when the content does not match. When a whole-content digest is
// checked, blocks are not re-hashed one by one (the whole digest covers them);
// after a mismatch, Scrub tells a corrupt block from wrong content.
func (s *Store) VerifyAndComplete(ctx context.Context, id string, w io.Writer) (Task, error) {
	var emit func(int, []byte) error
	if w != nil {
		emit = func(_ int, blk []byte) error {
			_, err := w.Write(blk)
			return err
		}
	}
	return s.VerifyAndCompleteFunc(ctx, id, emit)
}

// VerifyAndCompleteFunc is VerifyAndComplete handing each block, in order,
// to emit (if not nil) instead of a writer; emit runs while the block is
// hashed and must only read blk, which is valid during the call.
func (s *Store) VerifyAndCompleteFunc(ctx context.Context, id string, emit func(idx int, blk []byte) error) (Task, error) {
	c, err := s.NewContentHash(id)
	if err != nil {
		return Task{}, err
	}
	return s.CompleteHash(ctx, c, emit)
}
