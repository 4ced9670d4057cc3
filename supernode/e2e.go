package supernode

// End-to-end encrypted tasks (blockstore/e2e.go): the seed encrypts each
// block once, as it stores it, under a key of the task's version; the
// supernode hands the key out only with a task token (for private content,
// after the origin accepted the registrant's own headers). Keys are never
// stored: each derives from a master secret (itself derived from the token
// key, StoreDir/token.key) and the task's id and random salt (kept in the
// seed's store with the task, new for each version of the content), so a
// restarted supernode hands out the same keys for the blocks it holds and a
// new version of the content never reuses a key.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/dfly-p2p/dfly/blockstore"
)

// e2eKeys derives the task keys of end-to-end encrypted tasks.
type e2eKeys struct {
	master []byte
}

// newE2EKeys derives the master secret from secret (the token key's seed).
func newE2EKeys(secret []byte) *e2eKeys {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("dfly-e2e-master/v1"))
	return &e2eKeys{master: m.Sum(nil)}
}

// newE2ESalt returns the random salt of a new version of a task.
func newE2ESalt() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// key returns the task key of t, an end-to-end encrypted task in the
// seed's store.
func (k *e2eKeys) key(t blockstore.Task) ([]byte, error) {
	if !t.E2E || t.E2ESalt == "" {
		return nil, fmt.Errorf("task %s: not an end-to-end encrypted task of this seed (no salt): %w", t.ID, blockstore.ErrE2EKey)
	}
	m := hmac.New(sha256.New, k.master)
	m.Write([]byte("task\x00" + t.ID + "\x00" + t.E2ESalt))
	return m.Sum(nil), nil
}

// cipher returns the cipher of t's key.
func (k *e2eKeys) cipher(t blockstore.Task) (*blockstore.E2E, error) {
	key, err := k.key(t)
	if err != nil {
		return nil, err
	}
	return blockstore.NewE2E(key)
}

// withE2E makes t (about to be created by the seed) end-to-end encrypted:
// a new salt and the id of the key it gives.
func (k *e2eKeys) withE2E(t blockstore.Task) (blockstore.Task, error) {
	t.E2E, t.E2ESalt = true, newE2ESalt()
	x, err := k.cipher(t)
	if err != nil {
		return t, err
	}
	t.E2EKeyID = x.KeyID()
	return t, nil
}

// e2eCipher returns the cipher of t, an end-to-end encrypted task of the
// seed's store, checking it is the key its blocks were stored under.
func (s *Seed) e2eCipher(t blockstore.Task) (*blockstore.E2E, error) {
	if s.keys == nil {
		return nil, fmt.Errorf("seed task %s: this seed has no secret for end-to-end encrypted tasks: %w", t.ID, blockstore.ErrE2EKey)
	}
	x, err := s.keys.cipher(t)
	if err != nil {
		return nil, fmt.Errorf("seed task %s: %w", t.ID, err)
	}
	if x.KeyID() != t.E2EKeyID {
		return nil, fmt.Errorf("seed task %s: its blocks were stored under key %s, the seed's secret gives %s (was StoreDir/token.key replaced?); delete the task to fetch it again: %w",
			t.ID, t.E2EKeyID, x.KeyID(), blockstore.ErrE2EKey)
	}
	return x, nil
}

// TaskKey returns the key of an end-to-end encrypted task meta the seed
// resolved (nil for a plain task). Callers hand it out only with a token.
func (s *Seed) TaskKey(meta blockstore.Task) ([]byte, error) {
	if !meta.E2E {
		return nil, nil
	}
	if _, err := s.e2eCipher(meta); err != nil {
		return nil, err
	}
	return s.keys.key(meta)
}

// verifyAndComplete checks the whole content of the seed's task id (in the
// clear, for an end-to-end encrypted one) and completes it.
func (s *Seed) verifyAndComplete(ctx context.Context, st *seedTask, id string) (blockstore.Task, error) {
	st.mu.Lock()
	x := st.e2e
	st.mu.Unlock()
	if x == nil {
		return s.cfg.Store.VerifyAndComplete(ctx, id, nil)
	}
	c, err := s.cfg.Store.NewContentHash(id)
	if err != nil {
		return blockstore.Task{}, err
	}
	c.SetE2E(x)
	return s.cfg.Store.CompleteHash(ctx, c, nil)
}
