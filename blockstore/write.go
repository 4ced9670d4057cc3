package blockstore

// Writing blocks: digests, PutBlock, drops.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"syscall"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/dfly-p2p/dfly/internal/directio"
)

// SetBlockDigest records the expected SHA-256 of block idx (as sent by the
// seed). A digest that contradicts a stored block drops that block.
func (s *Store) SetBlockDigest(id string, idx int, sum []byte) error {
	if len(sum) != sha256.Size {
		return fmt.Errorf("digest of block %d of task %s: %d bytes, want 32: %w", idx, id, len(sum), ErrInvalid)
	}
	st, err := s.state(id)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if idx < 0 || idx >= len(st.digests) {
		return fmt.Errorf("digest of block %d of task %s: out of range [0,%d): %w", idx, id, len(st.digests), ErrInvalid)
	}
	if bytes.Equal(st.digests[idx], sum) {
		return nil
	}
	sum = bytes.Clone(sum)
	drop := st.digests[idx] != nil && st.bitmap.Has(idx)
	t, demote := demoted(st.task)
	demote = demote && drop
	err = s.db.Update(func(txn *badger.Txn) error {
		if drop {
			if err := txn.Delete(blockKey(id, idx)); err != nil {
				return err
			}
		}
		if demote { // in the same transaction: never a complete task missing a block
			if err := setTask(txn, t); err != nil {
				return err
			}
		}
		return txn.Set(digestKey(id, idx), sum)
	})
	if err != nil {
		return fmt.Errorf("store digest of block %d of task %s: %w", idx, id, err)
	}
	if st.digests[idx] != nil {
		st.digestChanges++
	}
	if drop {
		s.log.Warn("block digest changed; dropped stored block", "task", id, "block", idx)
		st.bitmap.Clear(idx)
		st.checked.Clear(idx)
		st.gen[idx]++
	}
	if demote {
		st.task = t
	}
	st.digests[idx] = sum
	return nil
}

// BlockDigest returns the SHA-256 of block idx, if known.
func (s *Store) BlockDigest(id string, idx int) ([]byte, bool) {
	st, err := s.state(id)
	if err != nil {
		return nil, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if idx < 0 || idx >= len(st.digests) || st.digests[idx] == nil {
		return nil, false
	}
	return bytes.Clone(st.digests[idx]), true
}

// PutBlock stores block idx after checking its length and, when known, its
// digest (ErrDigestMismatch otherwise; nothing is stored). Putting a block
// already present stores nothing but still checks the bytes: a nil error
// always means data is the verified block. The bytes go to the task's data file first;
// the block becomes present (one Badger transaction) only once they are
// written — and synced, with Options.SyncWrites. A sealed task's block is
// encrypted on its way to the data file (its caller's data is left as it
// is), and its seal record committed with the block (see seal.go).
func (s *Store) PutBlock(ctx context.Context, id string, idx int, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	st, err := s.state(id)
	if err != nil {
		return err
	}
	st.wmu.Lock()
	defer st.wmu.Unlock()
	st.mu.Lock() // st.task changes under st.mu (a drop turns the task pending)
	off := int64(idx) * st.task.BlockSize
	sealed := st.task.Sealed
	write, err := s.checkPutLocked(st, idx, data, sum[:])
	st.mu.Unlock()
	if err != nil || !write {
		return err
	}
	if err := s.checkFree(id, idx, int64(len(data))); err != nil {
		return err
	}
	df, err := s.files.acquire(&st.slot, s.dataPath(id))
	if err != nil {
		return s.writeErr(id, idx, err)
	}
	defer s.files.release(df)
	out, rec := data, sealRec{}
	if sealed {
		bp := s.sealBuf(len(data))
		defer s.putSealBuf(bp)
		out, rec = s.seal.seal(*bp, data, id, idx)
	}
	var direct *os.File
	if directio.CanDirect(out, off) {
		direct = s.directFile(df)
	}
	epoch := s.beginWrite(st, df.f)
	err = s.writeAt(df.f, direct, out, off)
	s.endWrite(st, df.f)
	if err != nil {
		return s.writeErr(id, idx, err)
	}
	if s.opt.SyncWrites {
		if err := df.f.Sync(); err != nil {
			return s.writeErr(id, idx, err)
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	// The digest may have arrived or changed while the bytes were written.
	if _, err := s.checkPutLocked(st, idx, data, sum[:]); err != nil || st.bitmap.Has(idx) {
		return err
	}
	newDigest := st.digests[idx] == nil
	var present []byte // a plain block's b/ value is empty
	if sealed {
		present = rec.encode()
	}
	err = s.db.Update(func(txn *badger.Txn) error {
		if newDigest {
			if err := txn.Set(digestKey(id, idx), sum[:]); err != nil {
				return err
			}
		}
		return txn.Set(blockKey(id, idx), present)
	})
	if err != nil {
		return s.writeErr(id, idx, err)
	}
	if newDigest {
		st.digests[idx] = sum[:]
	}
	if sealed {
		st.seals[idx] = rec
	}
	st.bitmap.Set(idx)
	if st.epoch == epoch { // (else the file changed behind the store's back since)
		st.checked.Set(idx)
	}
	st.gen[idx]++
	s.blocksWritten.Add(1)
	s.bytesWritten.Add(int64(len(data)))
	return nil
}

// checkPutLocked checks a block about to be stored and reports whether it
// must be written (false: it is already present). st.mu is held.
func (s *Store) checkPutLocked(st *taskState, idx int, data, sum []byte) (bool, error) {
	id, n := st.task.ID, len(st.digests)
	if idx < 0 || idx >= n {
		return false, fmt.Errorf("put block %d of task %s: out of range [0,%d): %w", idx, id, n, ErrInvalid)
	}
	if want := st.task.BlockLen(idx); int64(len(data)) != want {
		s.rejected.Add(1)
		return false, fmt.Errorf("put block %d of task %s: %d bytes, want %d: %w", idx, id, len(data), want, ErrDigestMismatch)
	}
	if want := st.digests[idx]; want != nil && !bytes.Equal(want, sum) {
		s.rejected.Add(1)
		return false, fmt.Errorf("put block %d of task %s: sha256 %x, want %x: %w", idx, id, sum[:8], want[:8], ErrDigestMismatch)
	}
	if st.deleted {
		return false, fmt.Errorf("put block %d of task %s: task deleted: %w", idx, id, ErrNotFound)
	}
	return !st.bitmap.Has(idx), nil
}

// checkFree refuses a block write that would leave less than half the
// reserve free (see Options.MinFree): something else filled the disk since
// the task was accepted, and Badger, which maps its files into memory, must
// keep room to commit metadata (a write into a mapped file on a full disk
// kills the process).
func (s *Store) checkFree(id string, idx int, n int64) error {
	free, total, err := s.opt.FreeSpace(s.dir)
	if err != nil {
		return fmt.Errorf("write block %d of task %s: check free space of %s: %w", idx, id, s.dir, err)
	}
	if floor := min(s.opt.MinFree, total/10) / 2; free-n < floor {
		return fmt.Errorf("write block %d of task %s: %s has %s free, keeping %s for metadata; free disk space: %w",
			idx, id, s.dir, human(free), human(floor), ErrNoSpace)
	}
	return nil
}

// writeAt writes data at off: with direct (O_DIRECT) when given, through the
// page cache when not or when the filesystem refuses the direct write.
func (s *Store) writeAt(f, direct *os.File, data []byte, off int64) error {
	if direct != nil {
		m, err := direct.WriteAt(data, off)
		if err == nil || m > 0 || !errors.Is(err, syscall.EINVAL) {
			return err
		}
		s.directRefused(err)
	}
	_, err := f.WriteAt(data, off)
	return err
}

// writeErr describes a failed block write; a full disk is ErrNoSpace.
func (s *Store) writeErr(id string, idx int, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("write block %d of task %s to %s: %w (%w)", idx, id, s.dir, ErrNoSpace, err)
	}
	if errors.Is(err, errGone) || errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("write block %d of task %s: task deleted: %w", idx, id, ErrNotFound)
	}
	if errors.Is(err, ErrClosed) {
		return fmt.Errorf("write block %d of task %s: %w", idx, id, err)
	}
	return fmt.Errorf("write block %d of task %s to %s: %w", idx, id, s.dir, err)
}

// DropBlock removes block idx (for example after a peer reported it bad).
func (s *Store) DropBlock(id string, idx int) error {
	st, err := s.state(id)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return s.dropLocked(st, idx)
}

// dropLocked removes a block; a complete task becomes pending again. st.mu is held.
func (s *Store) dropLocked(st *taskState, idx int) error {
	id := st.task.ID
	t, demote := demoted(st.task)
	err := s.db.Update(func(txn *badger.Txn) error {
		if demote { // in the same transaction: never a complete task missing a block
			if err := setTask(txn, t); err != nil {
				return err
			}
		}
		return txn.Delete(blockKey(id, idx))
	})
	if err != nil {
		return fmt.Errorf("drop block %d of task %s: %w", idx, id, err)
	}
	st.bitmap.Clear(idx)
	st.checked.Clear(idx)
	st.gen[idx]++
	st.task = t
	return nil
}
