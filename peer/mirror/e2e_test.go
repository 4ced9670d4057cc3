package mirror

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/peer"
)

// keyOnlySwarm hands out a task key and delivers nothing else: blocks come
// from the registry through the engine, which encrypts them before they
// are stored.
type keyOnlySwarm struct{ key []byte }

func (s keyOnlySwarm) TaskKey(ctx context.Context, req peer.Request, id string) ([]byte, error) {
	return s.key, nil
}
func (keyOnlySwarm) Resolve(ctx context.Context, req peer.Request, id string) (blockstore.Task, error) {
	return blockstore.Task{}, peer.ErrSwarmUnavailable
}
func (keyOnlySwarm) FetchBlock(ctx context.Context, t *peer.Task, idx int) ([]byte, peer.From, error) {
	return nil, peer.FromPeer, peer.ErrSwarmUnavailable
}
func (keyOnlySwarm) Stored(*peer.Task, int)                  {}
func (keyOnlySwarm) Order(t *peer.Task, missing []int) []int { return missing }
func (keyOnlySwarm) Done(*peer.Task, error)                  {}

// TestMirrorE2EPrivate: with E2EPrivate, a private registry's blob is the
// end-to-end encrypted task: the client gets the exact blob, the store
// holds only its ciphertext, and no plain copy is made.
func TestMirrorE2EPrivate(t *testing.T) {
	reg := startRegistry(t, "alice", "pw")
	img := reg.push(t, "private/app", 3<<20+17, 1)
	d, want := layerOf(t, img, 0)

	log := slog.New(slog.DiscardHandler)
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: log, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := bytes.Repeat([]byte{5}, blockstore.E2EKeySize)
	eng, err := peer.New(peer.Config{Store: st, Logger: log, Swarm: keyOnlySwarm{key: key}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Engine: eng, Logger: log, E2EPrivate: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	t.Cleanup(func() { srv.Close(); m.Close() })
	f := &fixture{reg: reg, mirror: m, srv: srv, engine: eng}

	auth := http.Header{"Authorization": {"Basic " + basic("alice", "pw")}}
	resp, body, err := f.get(t, http.MethodGet, "/v2/private/app/blobs/"+d.String(), auth)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("private blob: HTTP %d, %d bytes (want %d), %v", resp.StatusCode, len(body), len(want), err)
	}
	plainID, _ := blockstore.TaskIDForDigest(d.String())
	e2eID := blockstore.E2ETaskID(plainID)
	task, err := st.Task(e2eID)
	if err != nil || !task.E2E || !task.Private || task.State != blockstore.StateComplete || !task.Verified {
		t.Fatalf("stored task %+v, %v: want the e2e one, private, complete and verified", task, err)
	}
	if _, err := st.Task(plainID); err == nil {
		t.Fatal("a plain copy of the private blob was stored too")
	}
	x, _ := blockstore.NewE2E(key)
	var stored []byte
	if err := st.ForEachBlock(context.Background(), e2eID, func(idx int, b []byte) error {
		stored = append(stored, b...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(stored, want) || len(stored) != len(want) {
		t.Fatal("the store holds the blob in the clear")
	}
	for idx := 0; int64(idx)*task.BlockSize < task.Length; idx++ {
		off := int64(idx) * task.BlockSize
		end := min(off+task.BlockSize, task.Length)
		x.XOR(idx, stored[off:end], stored[off:end])
	}
	if !bytes.Equal(stored, want) {
		t.Fatal("the stored ciphertext does not decrypt to the blob under the task key")
	}
}
