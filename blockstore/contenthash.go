package blockstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
)

// ContentHash is the whole-content hash of one task, computed in block
// order. It can start while the task is still being fetched: HashPresent
// hashes the blocks present after the last one hashed, and CompleteHash
// hashes the rest and completes the task (what VerifyAndComplete does in one
// go). A download whose last blocks arrive in file order thus has little
// left to hash when its last block lands. A ContentHash is used by one
// goroutine at a time.
type ContentHash struct {
	id         string
	digest     string // the task's digest when the hash started
	algo, want string // want: the declared hex digest, "" when none
	h          hash.Hash
	next       int // blocks hashed
	buf        []byte
	// changes is the task's count of replaced block digests when the hash
	// started: a block hashed before its digest changed may be stale.
	changes uint64
	// e2e decrypts the blocks of an end-to-end encrypted task before they
	// are hashed and emitted (SetE2E); e2eTask: the task is one.
	e2e     *E2E
	e2eTask bool
	e2eKey  string // the task's E2EKeyID
}

// SetE2E gives c the key of an end-to-end encrypted task: the blocks are
// decrypted, then hashed and emitted in the clear. Without it such a task
// cannot be hashed (ErrE2EKey), nor with a key its blocks were not stored
// under.
func (c *ContentHash) SetE2E(x *E2E) { c.e2e = x }

// plain turns stored block idx (in the hash's own buffer) into plaintext.
func (c *ContentHash) plain(idx int, blk []byte) error {
	if !c.e2eTask {
		return nil
	}
	if c.e2e == nil || c.e2e.KeyID() != c.e2eKey {
		return fmt.Errorf("hash task %s: %w: hashing its content needs the task key from the supernode", c.id, ErrE2EKey)
	}
	c.e2e.XOR(idx, blk, blk)
	return nil
}

// NewContentHash starts the whole-content hash of task id, with the task's
// declared digest algorithm (SHA-256 when none is declared).
func (s *Store) NewContentHash(id string) (*ContentHash, error) {
	t, changes, err := s.hashState(id)
	if err != nil {
		return nil, err
	}
	return newContentHash(t, changes)
}

// hashState returns the task and its count of replaced block digests.
func (s *Store) hashState(id string) (Task, uint64, error) {
	st, err := s.state(id)
	if err != nil {
		return Task{}, 0, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.task, st.digestChanges, nil
}

func newContentHash(t Task, changes uint64) (*ContentHash, error) {
	id := t.ID
	c := &ContentHash{id: id, digest: t.Digest, algo: "sha256", changes: changes, e2eTask: t.E2E, e2eKey: t.E2EKeyID}
	var err error
	if t.Digest != "" {
		if c.algo, c.want, err = ParseDigest(t.Digest); err != nil {
			return nil, fmt.Errorf("task %s: %w", id, err)
		}
	}
	if c.h, err = NewHash(c.algo); err != nil {
		return nil, fmt.Errorf("task %s: %w", id, err)
	}
	return c, nil
}

// Hashed returns how many blocks, from the first, c has hashed.
func (c *ContentHash) Hashed() int { return c.next }

// HashPresent hashes the blocks that follow the last one hashed for as long
// as they are present, handing each to emit (if not nil) as CompleteHash
// does, and returns how many blocks c has hashed. It stops, without error,
// at the first block that is missing (or dropped while being read). As in
// CompleteHash, with a declared digest blocks are not checked one by one:
// the whole digest covers them, and CompleteHash reports a mismatch.
func (s *Store) HashPresent(ctx context.Context, c *ContentHash, emit func(idx int, blk []byte) error) (int, error) {
	t, changes, err := s.hashState(c.id)
	if err != nil {
		return c.next, err
	}
	if err := c.restartIfDigestChanged(t, changes); err != nil {
		return c.next, err
	}
	for c.next < t.NumBlocks() && s.HasBlock(c.id, c.next) {
		if err := ctx.Err(); err != nil {
			return c.next, err
		}
		blk, err := s.readBlock(c.id, c.next, c.buf, c.want == "")
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			return c.next, nil // dropped meanwhile: it will be fetched again
		}
		if err != nil {
			return c.next, fmt.Errorf("hash task %s: %w", c.id, err)
		}
		c.buf = blk[:0]
		if err := c.plain(c.next, blk); err != nil {
			return c.next, err
		}
		if emit != nil {
			if err := emit(c.next, blk); err != nil {
				return c.next, err
			}
		}
		c.h.Write(blk)
		c.next++
	}
	return c.next, nil
}

// CompleteHash hashes the blocks c has not hashed yet, checks the whole
// content against the task's digest and marks the task complete; see
// VerifyAndCompleteFunc for emit and the errors. c is used up either way.
func (s *Store) CompleteHash(ctx context.Context, c *ContentHash, emit func(idx int, blk []byte) error) (Task, error) {
	t, changes, err := s.hashState(c.id)
	if err != nil {
		return Task{}, err
	}
	if err := c.restartIfDigestChanged(t, changes); err != nil {
		return t, err
	}
	if missing, _ := s.Missing(c.id); len(missing) > 0 {
		return t, fmt.Errorf("verify task %s: %d of %d blocks missing: %w", c.id, len(missing), t.NumBlocks(), ErrIncomplete)
	}
	h := c.h
	// Hash and write each block at the same time (they only read it),
	// while the next blocks are read.
	werr := make(chan error, 1)
	if c.e2eTask {
		if err := c.plain(0, nil); err != nil {
			return t, err
		}
	}
	err = s.streamBlocksFrom(ctx, c.id, c.next, c.want == "", func(idx int, blk []byte) error {
		if err := c.plain(idx, blk); err != nil {
			return err
		}
		if emit == nil {
			h.Write(blk)
			return nil
		}
		go func() { werr <- emit(idx, blk) }()
		h.Write(blk)
		return <-werr
	})
	c.next = t.NumBlocks()
	if err != nil {
		return t, fmt.Errorf("verify task %s: %w", c.id, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if c.want != "" && got != c.want {
		return t, fmt.Errorf("task %s: content %s is %s:%s, want %s: %w", c.id, t.Source, c.algo, got, t.Digest, ErrDigestMismatch)
	}
	return s.complete(c, got)
}

// complete marks the task complete after c hashed all of it to got (hex),
// unless the task changed under the hash: its digest, a block's digest, or
// a block dropped since it was hashed (ErrIncomplete: fetch what is missing
// and verify again).
func (s *Store) complete(c *ContentHash, got string) (Task, error) {
	st, err := s.state(c.id)
	if err != nil {
		return Task{}, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	t := st.task
	if t.Digest != c.digest {
		return t, fmt.Errorf("task %s: digest changed from %q to %q during verification; verify again", c.id, c.digest, t.Digest)
	}
	if missing := len(st.digests) - st.bitmap.Count(); missing > 0 {
		return t, fmt.Errorf("verify task %s: %d blocks dropped during verification; fetch them and verify again: %w", c.id, missing, ErrIncomplete)
	}
	if st.digestChanges != c.changes {
		return t, fmt.Errorf("verify task %s: block digests changed during verification; verify again: %w", c.id, ErrIncomplete)
	}
	if t.Digest == "" {
		t.Digest = c.algo + ":" + got
	} else {
		t.Verified = true
	}
	t.State = StateComplete
	if err := s.writeTask(t); err != nil {
		return st.task, err
	}
	st.task = t
	return t, nil
}

// restartIfDigestChanged starts c over when the task's digest changed since
// c started (a digest adopted during the download): what was hashed was
// hashed with the wrong algorithm, or without checking each block. So it
// does when a block's digest was replaced since (what was hashed of that
// block may be stale).
func (c *ContentHash) restartIfDigestChanged(t Task, changes uint64) error {
	if t.Digest == c.digest && changes == c.changes {
		return nil
	}
	n, err := newContentHash(t, changes)
	if err != nil {
		return err
	}
	*c = *n
	return nil
}
