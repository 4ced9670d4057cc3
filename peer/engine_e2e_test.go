package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
)

// e2eSwarm is a supernode swarm of end-to-end encrypted content: it hands
// out a task key and serves the ciphertext of the content under it (the
// digests it records are over the ciphertext), or fails.
type e2eSwarm struct {
	e       *env
	mu      sync.Mutex
	key     []byte
	noKey   bool // TaskKey fails (supernode unreachable)
	fail    bool // FetchBlock fails (the engine goes to the origin)
	fetched int
}

func (f *e2eSwarm) x() *blockstore.E2E {
	f.mu.Lock()
	defer f.mu.Unlock()
	x, err := blockstore.NewE2E(f.key)
	if err != nil {
		panic(err)
	}
	return x
}

func (f *e2eSwarm) TaskKey(ctx context.Context, req Request, id string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noKey || !req.E2E {
		return nil, ErrSwarmUnavailable
	}
	return bytes.Clone(f.key), nil
}

func (f *e2eSwarm) Resolve(ctx context.Context, req Request, id string) (blockstore.Task, error) {
	if f.noKey {
		return blockstore.Task{}, ErrSwarmUnavailable
	}
	return blockstore.Task{ID: id, Length: f.e.c.Size, BlockSize: blockstore.BlockSizeFor(f.e.c.Size), E2E: req.E2E}, nil
}

func (f *e2eSwarm) FetchBlock(ctx context.Context, t *Task, idx int) ([]byte, From, error) {
	if f.fail || f.noKey {
		return nil, FromPeer, ErrSwarmUnavailable
	}
	m := t.Info()
	data := f.e.bytes(int64(idx)*m.BlockSize, m.BlockLen(idx))
	if m.E2E {
		f.x().XOR(idx, data, data)
	}
	sum := sha256.Sum256(data)
	if err := t.Engine().Store().SetBlockDigest(t.ID(), idx, sum[:]); err != nil {
		return nil, FromPeer, err
	}
	f.mu.Lock()
	f.fetched++
	f.mu.Unlock()
	return data, FromPeer, nil
}

func (f *e2eSwarm) Stored(t *Task, idx int)            {}
func (f *e2eSwarm) Order(t *Task, missing []int) []int { return missing }
func (f *e2eSwarm) Done(t *Task, err error)            {}

// ciphertext is the content encrypted as the seed stores it.
func ciphertext(e *env, x *blockstore.E2E) []byte {
	bs := blockstore.BlockSizeFor(e.c.Size)
	out := e.bytes(0, e.c.Size)
	for idx := 0; int64(idx)*bs < e.c.Size; idx++ {
		off := int64(idx) * bs
		end := min(off+bs, e.c.Size)
		x.XOR(idx, out[off:end], out[off:end])
	}
	return out
}

// storedBytes reads every block of task id as the store holds it.
func storedBytes(t *testing.T, s *blockstore.Store, id string) []byte {
	t.Helper()
	var out []byte
	if err := s.ForEachBlock(ctx, id, func(_ int, b []byte) error { out = append(out, b...); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestE2EDownload: an end-to-end encrypted download, from the swarm and
// (when the swarm fails) from the origin: the outputs (Output, OutputAt)
// and ReadAt are the plaintext, verified against its digest; the store
// holds exactly the seed's ciphertext under the task key, never the
// plaintext; the task is a separate one from the plain content's.
func TestE2EDownload(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail bool
	}{{"from the swarm", false}, {"from the origin", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 5<<20+333)
			sw := &e2eSwarm{e: e, key: bytes.Repeat([]byte{7}, 32), fail: tc.fail}
			eng := e.engine(t, Config{Swarm: sw, Logger: quietLogger()})
			plain := e.bytes(0, e.c.Size)
			req := Request{URL: e.url, Digest: e.c.Digest("sha256"), E2E: true}

			out := filepath.Join(t.TempDir(), "out")
			f, err := os.Create(out)
			if err != nil {
				t.Fatal(err)
			}
			res, err := eng.Download(ctx, req, DownloadOptions{OutputAt: f})
			f.Close()
			if err != nil || !res.Task.Verified {
				t.Fatalf("download: %v (verified %v)", err, res.Task.Verified)
			}
			if got, _ := os.ReadFile(out); !bytes.Equal(got, plain) {
				t.Fatal("OutputAt does not hold the plaintext")
			}
			if tc.fail != (res.Stats.BytesOrigin == e.c.Size) || !tc.fail && sw.fetched == 0 {
				t.Fatalf("stats %+v, swarm fetches %d", res.Stats, sw.fetched)
			}
			wantID, _ := req.ID()
			meta, err := e.store.Task(wantID)
			if err != nil || !meta.E2E || meta.E2EKeyID != sw.x().KeyID() || meta.State != blockstore.StateComplete {
				t.Fatalf("stored task %+v, %v", meta, err)
			}
			if got := storedBytes(t, e.store, wantID); !bytes.Equal(got, ciphertext(e, sw.x())) {
				t.Fatal("the store does not hold the seed's ciphertext")
			}
			if plainID, _ := (Request{URL: e.url}).ID(); plainID == wantID || e.store.HasBlock(plainID, 0) {
				t.Fatalf("the e2e task %s is the plain one's (%s) or stored it", wantID, plainID)
			}

			// A second download of the complete task (Output: the
			// verification pass) and ReadAt are the plaintext too.
			got, _, err := download(t, eng, req)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("second download: %v (plaintext %v)", err, bytes.Equal(got, plain))
			}
			task, err := eng.Open(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 100000)
			if _, err := task.ReadAt(ctx, p, 1<<20-500); err != nil || !bytes.Equal(p, plain[1<<20-500:1<<20-500+100000]) {
				t.Fatalf("ReadAt: %v (plaintext %v)", err, bytes.Equal(p, plain[1<<20-500:1<<20-500+100000]))
			}
		})
	}
}

// TestE2EKeyChanges: a copy stored under another key than the one the
// supernode hands out now (its secret changed) is fetched again, not
// decrypted into garbage.
func TestE2EKeyChanges(t *testing.T) {
	e := newEnv(t, 3<<20)
	sw := &e2eSwarm{e: e, key: bytes.Repeat([]byte{1}, 32)}
	eng := e.engine(t, Config{Swarm: sw, Logger: quietLogger()})
	req := Request{URL: e.url, E2E: true}
	plain := e.bytes(0, e.c.Size)
	if got, _, err := download(t, eng, req); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("first download: %v", err)
	}
	sw.mu.Lock()
	sw.key, sw.fetched = bytes.Repeat([]byte{2}, 32), 0
	sw.mu.Unlock()
	got, res, err := download(t, eng, req)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("download after the key changed: %v (plaintext %v)", err, bytes.Equal(got, plain))
	}
	if res.Stats.BytesLocal != 0 || sw.fetched == 0 {
		t.Fatalf("after the key changed: %+v, %d swarm fetches; want everything fetched again", res.Stats, sw.fetched)
	}
	id, _ := req.ID()
	if got := storedBytes(t, e.store, id); !bytes.Equal(got, ciphertext(e, sw.x())) {
		t.Fatal("the store does not hold the ciphertext under the new key")
	}
}

// TestE2EWithoutKey: no key to be had (no supernode) → the content comes
// from the origin in the clear, as the plain task; a task stored
// end-to-end encrypted is never handed out undecrypted.
func TestE2EWithoutKey(t *testing.T) {
	e := newEnv(t, 2<<20+5)
	sw := &e2eSwarm{e: e, key: bytes.Repeat([]byte{3}, 32), noKey: true}
	eng := e.engine(t, Config{Swarm: sw, Logger: quietLogger()})
	req := Request{URL: e.url, E2E: true}
	got, res, err := download(t, eng, req)
	if err != nil || !bytes.Equal(got, e.bytes(0, e.c.Size)) {
		t.Fatalf("download without a key: %v", err)
	}
	plainID, _ := Request{URL: e.url}.ID()
	if res.Task.ID != plainID || res.Task.E2E {
		t.Fatalf("fell back to task %s (e2e %v), want the plain %s", res.Task.ID, res.Task.E2E, plainID)
	}
	// Without a swarm at all: the same.
	if got, _, err := download(t, e.engine(t, Config{Logger: quietLogger()}), req); err != nil || !bytes.Equal(got, e.bytes(0, e.c.Size)) {
		t.Fatalf("download without a swarm: %v", err)
	}

	// An e2e task in the store, a handle without its key: refused.
	x := sw.x()
	id, _ := req.ID()
	if _, err := e.store.CreateTask(ctx, blockstore.Task{ID: id, Length: e.c.Size, BlockSize: blockstore.BlockSizeFor(e.c.Size), E2E: true, E2EKeyID: x.KeyID()}); err != nil {
		t.Fatal(err)
	}
	bare := eng.handle(id, req)
	if _, err := bare.ReadAt(ctx, make([]byte, 10), 0); !errors.Is(err, blockstore.ErrE2EKey) {
		t.Fatalf("ReadAt of an e2e task without its key: %v, want ErrE2EKey", err)
	}
}

func TestPlainRequest(t *testing.T) {
	const d = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	digestID, _ := blockstore.TaskIDForDigest(d)
	for _, tc := range []struct {
		in     Request
		wantID string
	}{
		{Request{URL: "http://o/f", E2E: true}, ""},
		{Request{URL: "http://o/f", Digest: d, TaskID: blockstore.E2ETaskID(digestID), E2E: true}, digestID},
		{Request{URL: "http://o/f", Digest: d, E2E: true}, ""},
	} {
		p := plainRequest(tc.in)
		if p.E2E || p.TaskID != tc.wantID || p.URL != tc.in.URL || p.Digest != tc.in.Digest {
			t.Errorf("plainRequest(%+v) = %+v, want task id %q", tc.in, p, tc.wantID)
		}
		if _, err := p.ID(); err != nil {
			t.Errorf("plainRequest(%+v).ID(): %v", tc.in, err)
		}
	}
}
