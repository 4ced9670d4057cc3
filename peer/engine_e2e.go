package peer

// End-to-end encrypted tasks on the peer (blockstore/e2e.go): the store,
// the swarm and the upload server hold and move ciphertext; the engine
// decrypts what leaves it in the clear (ReadAt, download outputs, the
// whole-content hash) and encrypts what it fetches from the origin itself,
// with the task key the supernode handed out with the task token (kept in
// memory only).

import (
	"context"
	"errors"
	"fmt"

	"github.com/dfly-p2p/dfly/blockstore"
)

// E2EKeys is implemented by a Swarm that hands out the keys of end-to-end
// encrypted tasks (the supernode gives them with the task token).
type E2EKeys interface {
	TaskKey(ctx context.Context, req Request, id string) ([]byte, error)
}

// errNoTaskKey: the key of an end-to-end encrypted task is not to be had
// (no swarm, or the supernode does not answer).
var errNoTaskKey = errors.New("no task key")

// plain decrypts block idx (stored bytes, the caller's own buffer) in place
// when the task is end-to-end encrypted.
func (t *Task) plain(idx int, blk []byte) error {
	x, err := t.cipherFor()
	if err != nil || x == nil {
		return err
	}
	x.XOR(idx, blk, blk)
	return nil
}

// cipherFor returns the task's cipher (nil for a plain task), or why an
// end-to-end encrypted task has none.
func (t *Task) cipherFor() (*blockstore.E2E, error) {
	if x := t.e2e.Load(); x != nil {
		return x, nil
	}
	meta, err := t.meta()
	if err != nil {
		return nil, err
	}
	if meta.E2E {
		return nil, fmt.Errorf("task %s: %w: open it with its request to get the key from the supernode", t.id, blockstore.ErrE2EKey)
	}
	return nil, nil
}

// fromOrigin returns the bytes to store for block idx fetched from the
// origin in the clear: data itself, or its ciphertext for an end-to-end
// encrypted task (a new buffer: data is still needed in the clear).
func (t *Task) fromOrigin(meta blockstore.Task, idx int, data []byte) ([]byte, error) {
	if !meta.E2E {
		return data, nil
	}
	x, err := t.cipherFor()
	if err != nil {
		return nil, err
	}
	enc := make([]byte, len(data))
	x.XOR(idx, enc, data)
	return enc, nil
}

// verifyAndComplete is the store's VerifyAndCompleteFunc, hashing (and
// emitting) an end-to-end encrypted task in the clear.
func (t *Task) verifyAndComplete(ctx context.Context, emit func(int, []byte) error) (blockstore.Task, error) {
	x, err := t.cipherFor()
	if err != nil {
		return t.Info(), err
	}
	if x == nil {
		return t.e.store.VerifyAndCompleteFunc(ctx, t.id, emit)
	}
	c, err := t.e.store.NewContentHash(t.id)
	if err != nil {
		return t.Info(), err
	}
	c.SetE2E(x)
	return t.e.store.CompleteHash(ctx, c, emit)
}

// openE2E opens the end-to-end encrypted representation of req: the key
// first (errNoTaskKey when there is none to be had), then the task, whose
// stored copy must be under that key (else it is fetched again).
func (e *Engine) openE2E(ctx context.Context, req Request, id string) (*Task, error) {
	keys, ok := e.cfg.Swarm.(E2EKeys)
	if e.cfg.Swarm == nil || !ok {
		return nil, fmt.Errorf("task %s: no supernode to get its end-to-end key from: %w", id, errNoTaskKey)
	}
	key, err := keys.TaskKey(ctx, req, id)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("task %s: %w: %w", id, errNoTaskKey, err)
	}
	x, err := blockstore.NewE2E(key)
	if err != nil {
		return nil, fmt.Errorf("task %s: the supernode's key: %w", id, err)
	}
	o := &opener{e: e, id: id, req: req, cred: credentials(req.Header), x: x}
	return e.opens.do(ctx, o.key(), o.open)
}

// plainRequest is req for the plain representation (the fallback of an
// end-to-end request without a key).
func plainRequest(req Request) Request {
	p := req
	p.E2E = false
	p.TaskID = ""
	if req.TaskID != "" && req.Digest != "" {
		if id, err := blockstore.TaskIDForDigest(req.Digest); err == nil && blockstore.E2ETaskID(id) == req.TaskID {
			p.TaskID = id
		}
	}
	return p
}
