package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/source"
)

var ctx = context.Background()

type env struct {
	origin *origin.Server
	store  *blockstore.Store
	url    string
	c      origin.Content
}

func newEnv(t *testing.T, size int64) *env {
	t.Helper()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	s, err := blockstore.Open(t.TempDir(), blockstore.Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := origin.Content{Size: size, Seed: 11}
	return &env{origin: o, store: s, url: o.Add("file.bin", c), c: c}
}

func (e *env) engine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	cfg.Store = e.store
	if cfg.Source == nil {
		cfg.Source = source.New(source.Options{Timeout: 2 * time.Second, Backoff: time.Millisecond, Retries: 1})
	}
	eng, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

func (e *env) bytes(off, n int64) []byte {
	b := make([]byte, n)
	_, _ = e.c.ReadAt(b, off)
	return b
}

func TestDownloadOriginMode(t *testing.T) {
	e := newEnv(t, 5<<20+123)
	eng := e.engine(t, Config{Concurrency: 3})
	var last Progress
	res, err := eng.Download(ctx, Request{URL: e.url, Digest: e.c.Digest("sha256")}, DownloadOptions{Progress: func(p Progress) { last = p }})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Task.Verified || res.Task.State != blockstore.StateComplete {
		t.Fatalf("task not verified: %+v", res.Task)
	}
	if res.Stats.BytesOrigin != e.c.Size || e.origin.BytesSent() != e.c.Size {
		t.Fatalf("origin bytes: stats %d, origin %d, size %d", res.Stats.BytesOrigin, e.origin.BytesSent(), e.c.Size)
	}
	if last.Done != last.Total || last.Total != e.c.Size {
		t.Fatalf("final progress %+v", last)
	}
	var out bytes.Buffer
	if _, err := e.store.WriteTo(ctx, res.Task.ID, &out); err != nil || !bytes.Equal(out.Bytes(), e.bytes(0, e.c.Size)) {
		t.Fatal("content differs")
	}
	if res2, err := e.engine(t, Config{}).Download(ctx, Request{URL: e.origin.Add("nodigest", origin.Content{Size: 3 << 20, Seed: 9})}, DownloadOptions{}); err != nil ||
		res2.Task.State != blockstore.StateComplete || res2.Task.Verified || !strings.HasPrefix(res2.Task.Digest, "sha256:") {
		t.Fatalf("download without a declared digest: %+v %v", res2.Task, err)
	}
	// A second download is served from the store after one conditional
	// request (the task's ID derives from its URL: the origin is asked
	// whether the content changed), and without any with the digest it was
	// verified against.
	e.origin.ResetCounters()
	res, err = eng.Download(ctx, Request{URL: e.url}, DownloadOptions{})
	if err != nil || e.origin.Requests() != 1 || e.origin.BytesSent() != 0 || res.Stats.BytesLocal != e.c.Size {
		t.Fatalf("second download: %v, origin requests %d, bytes %d, stats %+v", err, e.origin.Requests(), e.origin.BytesSent(), res.Stats)
	}
	e.origin.ResetCounters()
	res, err = eng.Download(ctx, Request{URL: e.url, Digest: e.c.Digest("sha256")}, DownloadOptions{})
	if err != nil || e.origin.Requests() != 0 || !res.Task.Verified {
		t.Fatalf("download pinned by its verified digest: %v, origin requests %d, %+v", err, e.origin.Requests(), res.Task)
	}
}

func TestReadAtFetchesOnlyCoveringBlocks(t *testing.T) {
	e := newEnv(t, 64<<20)
	eng := e.engine(t, Config{})
	task, err := eng.Open(ctx, Request{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	bs := task.Info().BlockSize
	p := make([]byte, 100)
	if n, err := task.ReadAt(ctx, p, 3*bs-50); err != nil || n != 100 || !bytes.Equal(p, e.bytes(3*bs-50, 100)) {
		t.Fatalf("ReadAt across a block boundary: %d %v", n, err)
	}
	if got := e.origin.BytesSent(); got != 2*bs {
		t.Fatalf("origin sent %d bytes, want exactly the 2 covering blocks (%d)", got, 2*bs)
	}
	if n, err := task.ReadAt(ctx, p, e.c.Size-40); n != 40 || err != io.EOF || !bytes.Equal(p[:40], e.bytes(e.c.Size-40, 40)) {
		t.Fatalf("ReadAt at the end: %d %v", n, err)
	}
	if _, err := task.ReadAt(ctx, p, e.c.Size); err != io.EOF {
		t.Fatalf("ReadAt past the end: %v", err)
	}
	if len(task.Missing()) != task.Info().NumBlocks()-3 {
		t.Fatalf("missing = %d", len(task.Missing()))
	}
}

func TestWrongDigestAndOriginMD5(t *testing.T) {
	e := newEnv(t, 2<<20)
	eng := e.engine(t, Config{})
	wrong := "sha256:" + string(bytes.Repeat([]byte("0"), 64))
	_, err := eng.Download(ctx, Request{URL: e.url, Digest: wrong}, DownloadOptions{})
	if !errors.Is(err, blockstore.ErrDigestMismatch) {
		t.Fatalf("wrong digest: %v", err)
	}
	// The origin's Content-MD5 is adopted and verified when the user gives none.
	e2 := newEnv(t, 2<<20)
	e2.origin.SendContentMD5(true)
	res, err := e2.engine(t, Config{}).Download(ctx, Request{URL: e2.url}, DownloadOptions{})
	if err != nil || !res.Task.Verified || res.Task.Digest != e2.c.Digest("md5") {
		t.Fatalf("Content-MD5: %+v %v", res.Task, err)
	}
}

func TestOriginIgnoringRangeFallsBackToOneStream(t *testing.T) {
	e := newEnv(t, 3<<20+5)
	e.origin.IgnoreRange(true)
	res, err := e.engine(t, Config{}).Download(ctx, Request{URL: e.url, Digest: e.c.Digest("sha256")}, DownloadOptions{})
	if err != nil || !res.Task.Verified {
		t.Fatalf("%+v %v", res.Task, err)
	}
}

func TestResumeRestartsWhenOriginChanged(t *testing.T) {
	e := newEnv(t, 4<<20)
	eng := e.engine(t, Config{})
	task, err := eng.Open(ctx, Request{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Fetch(ctx, 0, Foreground); err != nil {
		t.Fatal(err)
	}
	// Pretend the stored copy came from an older version of the file.
	if _, err := e.store.UpdateTask(task.ID(), func(m *blockstore.Task) error { m.ETag = `"old"`; return nil }); err != nil {
		t.Fatal(err)
	}
	res, err := e.engine(t, Config{}).Download(ctx, Request{URL: e.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.BytesOrigin != e.c.Size {
		t.Fatalf("changed origin: fetched %d, want a full refetch of %d", res.Stats.BytesOrigin, e.c.Size)
	}
}

// fakeSwarm serves blocks from the content, lying or failing on request.
type fakeSwarm struct {
	e       *env
	mu      sync.Mutex
	fail    bool
	lie     bool
	block   chan struct{} // if set, FetchBlock of block 0 waits on it
	stored  []int
	doneErr error
}

func (f *fakeSwarm) Resolve(ctx context.Context, req Request, id string) (blockstore.Task, error) {
	if f.fail {
		return blockstore.Task{}, ErrSwarmUnavailable
	}
	return blockstore.Task{ID: id, Length: f.e.c.Size, BlockSize: blockstore.BlockSizeFor(f.e.c.Size)}, nil
}

func (f *fakeSwarm) FetchBlock(ctx context.Context, t *Task, idx int) ([]byte, From, error) {
	if f.block != nil && idx == 0 {
		select {
		case <-f.block:
		case <-ctx.Done():
			return nil, FromPeer, ctx.Err()
		}
	}
	if f.fail {
		return nil, FromPeer, ErrSwarmUnavailable
	}
	m := t.Info()
	data := f.e.bytes(int64(idx)*m.BlockSize, m.BlockLen(idx))
	sum := sha256.Sum256(data)
	if err := t.Engine().Store().SetBlockDigest(t.ID(), idx, sum[:]); err != nil {
		return nil, FromPeer, err
	}
	if f.lie {
		data = bytes.Clone(data)
		data[0] ^= 1
	}
	return data, FromPeer, nil
}

func (f *fakeSwarm) Stored(t *Task, idx int) {
	f.mu.Lock()
	f.stored = append(f.stored, idx)
	f.mu.Unlock()
}
func (f *fakeSwarm) Order(t *Task, missing []int) []int { return missing }
func (f *fakeSwarm) Done(t *Task, err error)            { f.doneErr = err }

func TestSwarmBlocksAndFallbacks(t *testing.T) {
	for _, tc := range []struct {
		name               string
		fail, lie          bool
		wantPeers, wantOri bool
	}{
		{"healthy swarm", false, false, true, false},
		{"swarm down", true, false, false, true},
		{"lying peer", false, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 3<<20)
			sw := &fakeSwarm{e: e, fail: tc.fail, lie: tc.lie}
			eng := e.engine(t, Config{Swarm: sw})
			res, err := eng.Download(ctx, Request{URL: e.url, Digest: e.c.Digest("sha256")}, DownloadOptions{})
			if err != nil || !res.Task.Verified {
				t.Fatalf("%+v %v", res, err)
			}
			if (res.Stats.BytesPeers > 0) != tc.wantPeers || (res.Stats.BytesOrigin > 0) != tc.wantOri {
				t.Fatalf("stats %+v", res.Stats)
			}
			if tc.wantOri && eng.Fallbacks() == 0 {
				t.Fatal("fallbacks not counted")
			}
			if len(sw.stored) != 3 || sw.doneErr != nil {
				t.Fatalf("swarm saw stored=%v done=%v", sw.stored, sw.doneErr)
			}
		})
	}
}

func TestForegroundDoesNotQueueBehindBackground(t *testing.T) {
	e := newEnv(t, 3<<20)
	sw := &fakeSwarm{e: e, block: make(chan struct{})}
	eng := e.engine(t, Config{Swarm: sw, Concurrency: 1})
	task, err := eng.Open(ctx, Request{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	bgDone := make(chan error, 1)
	go func() { bgDone <- task.Fetch(ctx, 0, Background) }() // holds the only background slot
	time.Sleep(50 * time.Millisecond)
	p := make([]byte, 10)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := task.ReadAt(rctx, p, 1<<20+5); err != nil {
		t.Fatalf("foreground read while background is stuck: %v", err)
	}
	if !bytes.Equal(p, e.bytes(1<<20+5, 10)) {
		t.Fatal("wrong bytes")
	}
	close(sw.block)
	if err := <-bgDone; err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentReadersShareOneFetch(t *testing.T) {
	e := newEnv(t, 2<<20)
	eng := e.engine(t, Config{})
	task, _ := eng.Open(ctx, Request{URL: e.url})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			if _, err := task.ReadAt(ctx, p, 100); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := e.origin.BytesSent(); got != 1<<20 {
		t.Fatalf("origin sent %d bytes for one block read by 8 readers", got)
	}
}

func TestOpenErrors(t *testing.T) {
	e := newEnv(t, 1<<20)
	eng := e.engine(t, Config{})
	var he *source.HTTPError
	if _, err := eng.Open(ctx, Request{URL: e.origin.URL + "/nope"}); !errors.As(err, &he) || he.Status != 404 {
		t.Fatalf("404: %v", err)
	}
	if _, err := eng.Open(ctx, Request{URL: e.url, Digest: "sha256:zz"}); !errors.Is(err, blockstore.ErrInvalid) {
		t.Fatalf("bad digest: %v", err)
	}
	if _, err := eng.Open(ctx, Request{}); !errors.Is(err, blockstore.ErrInvalid) {
		t.Fatalf("empty request: %v", err)
	}
	e.origin.SetDown(true)
	if _, err := eng.Open(ctx, Request{URL: e.url}); !errors.Is(err, source.ErrUnreachable) {
		t.Fatalf("down origin: %v", err)
	}
}

// reversingSwarm asks for the highest blocks first and counts Order calls.
type reversingSwarm struct {
	fakeSwarm
	orders int
}

func (r *reversingSwarm) Order(t *Task, missing []int) []int {
	r.orders++
	out := append([]int(nil), missing...)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func TestFeedReordersEveryBatch(t *testing.T) {
	e := newEnv(t, 1<<20)
	sw := &reversingSwarm{fakeSwarm: fakeSwarm{e: e}}
	eng := e.engine(t, Config{Swarm: sw})
	task, err := eng.Open(ctx, Request{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	missing := make([]int, 150)
	for i := range missing {
		missing[i] = i
	}
	got := feedAll(t, task, missing)
	if len(got) != 150 || sw.orders != 3 {
		t.Fatalf("dispatched %d blocks with %d Order calls; want 150 and 3", len(got), sw.orders)
	}
	// Batch 1 is the reverse of all 150 (149..86); batch 2 reverses what is
	// left (0..85), so it starts at 0; batch 3 reverses again.
	if got[0] != 149 || got[63] != 86 || got[64] != 0 || got[127] != 63 || got[128] != 85 {
		t.Fatalf("order = %v", got)
	}
}

// feedAll runs task.feed over missing and returns the blocks in the order
// dispatched, failing the test if one is dispatched twice.
func feedAll(t *testing.T, task *Task, missing []int) []int {
	t.Helper()
	work := make(chan int, len(missing))
	task.feed(ctx, task.Info(), missing, work)
	close(work)
	var got []int
	seen := map[int]bool{}
	for idx := range work {
		if seen[idx] {
			t.Fatalf("block %d dispatched twice", idx)
		}
		seen[idx] = true
		got = append(got, idx)
	}
	return got
}

// TestForegroundNotBehindQueuedBackgroundFetch: a background fetch of block 1
// queued behind a stuck background fetch (one slot) must not make a
// foreground read of block 1 wait for that queue.
func TestForegroundNotBehindQueuedBackgroundFetch(t *testing.T) {
	e := newEnv(t, 3<<20)
	sw := &fakeSwarm{e: e, block: make(chan struct{})}
	eng := e.engine(t, Config{Swarm: sw, Concurrency: 1})
	task, err := eng.Open(ctx, Request{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	stuck := make(chan error, 1)
	go func() { stuck <- task.Fetch(ctx, 0, Background) }() // holds the only slot
	time.Sleep(50 * time.Millisecond)
	queued := make(chan error, 1)
	go func() { queued <- task.Fetch(ctx, 1, Background) }() // waits for the slot
	time.Sleep(50 * time.Millisecond)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	p := make([]byte, 10)
	if _, err := task.ReadAt(rctx, p, 1<<20+3); err != nil {
		t.Fatalf("foreground read of a block queued in the background: %v", err)
	}
	if !bytes.Equal(p, e.bytes(1<<20+3, 10)) {
		t.Fatal("wrong bytes")
	}
	close(sw.block)
	if err := <-stuck; err != nil {
		t.Fatal(err)
	}
	if err := <-queued; err != nil {
		t.Fatal(err)
	}
}

// recordingWriterAt is an in-memory io.WriterAt counting writes per offset.
type recordingWriterAt struct {
	mu     sync.Mutex
	buf    []byte
	writes map[int64]int
}

func (r *recordingWriterAt) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.writes == nil {
		r.writes = map[int64]int{}
	}
	if end := off + int64(len(p)); end > int64(len(r.buf)) {
		r.buf = append(r.buf, make([]byte, end-int64(len(r.buf)))...)
	}
	copy(r.buf[off:], p)
	r.writes[off]++
	return len(p), nil
}

// TestDownloadOutputAt: with OutputAt each block fetched by the download is
// written once, as it is stored (the verification pass skips it), blocks
// that were already stored are written by the verification pass, and an
// already complete task is written whole; the output is exact every time.
func TestDownloadOutputAt(t *testing.T) {
	e := newEnv(t, 6<<20+4321)
	eng := e.engine(t, Config{Concurrency: 3})
	req := Request{URL: e.url, Digest: e.c.Digest("sha256")}
	want := e.bytes(0, e.c.Size)

	// Some blocks are in the store before the download starts.
	task, err := eng.Open(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	bs := task.Info().BlockSize
	n := task.Info().NumBlocks()
	for _, idx := range []int{0, 3} {
		if err := task.Fetch(ctx, idx, Foreground); err != nil {
			t.Fatal(err)
		}
	}
	var out recordingWriterAt
	if _, err := eng.Download(ctx, req, DownloadOptions{OutputAt: &out}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.buf, want) {
		t.Fatal("output differs from the content")
	}
	for idx := range n {
		if c := out.writes[int64(idx)*bs]; c != 1 {
			t.Fatalf("block %d written %d times, want once (%v)", idx, c, out.writes)
		}
	}

	// Complete task: written whole from the store.
	var again recordingWriterAt
	if _, err := eng.Download(ctx, req, DownloadOptions{OutputAt: &again}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.buf, want) || len(again.writes) != n {
		t.Fatalf("output of a complete task differs (%d writes)", len(again.writes))
	}
}

// TestDownloadOutputAtRepairsCorruptBlock: a stored block that rots before
// the verification pass is refetched and the output written again, exact.
func TestDownloadOutputAtRepairsCorruptBlock(t *testing.T) {
	e := newEnv(t, 3<<20+99)
	dir := e.store.Dir()
	eng := e.engine(t, Config{Concurrency: 2})
	req := Request{URL: e.url, Digest: e.c.Digest("sha256")}
	task, err := eng.Open(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// Store block 1, then damage it on disk behind the store's back; a new
	// store (a restart) has not verified it yet.
	if err := task.Fetch(ctx, 1, Foreground); err != nil {
		t.Fatal(err)
	}
	bs := task.Info().BlockSize
	e.store.Close()
	path := dir + "/data/" + task.ID() + ".blocks"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[bs+10] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := blockstore.Open(dir, blockstore.Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e.store = s
	eng = e.engine(t, Config{Concurrency: 2})
	var out recordingWriterAt
	if _, err := eng.Download(ctx, req, DownloadOptions{OutputAt: &out}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.buf, e.bytes(0, e.c.Size)) {
		t.Fatal("output differs after the repair")
	}
	if s.Stats().Corrupt < 1 {
		t.Fatalf("the damaged block was not noticed: %+v", s.Stats())
	}
}

// flakyWriterAt fails its first `fail` writes, then records like recordingWriterAt.
type flakyWriterAt struct {
	recordingWriterAt
	fail int
}

func (f *flakyWriterAt) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	if f.fail > 0 {
		f.fail--
		f.mu.Unlock()
		return 0, errors.New("output disk hiccup")
	}
	f.mu.Unlock()
	return f.recordingWriterAt.WriteAt(p, off)
}

// TestDownloadOutputAtWriteFailure: a failed write while downloading leaves
// the rest to the verification pass (the output still ends up exact); an
// output that keeps failing fails the download with its error.
func TestDownloadOutputAtWriteFailure(t *testing.T) {
	e := newEnv(t, 4<<20+5)
	eng := e.engine(t, Config{Concurrency: 2})
	req := Request{URL: e.url, Digest: e.c.Digest("sha256")}
	out := &flakyWriterAt{fail: 1}
	if _, err := eng.Download(ctx, req, DownloadOptions{OutputAt: out}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.buf, e.bytes(0, e.c.Size)) {
		t.Fatal("output differs after a failed write")
	}
	broken := &flakyWriterAt{fail: 1 << 30}
	if _, err := eng.Download(ctx, req, DownloadOptions{OutputAt: broken}); err == nil || !strings.Contains(err.Error(), "output disk hiccup") {
		t.Fatalf("download into a broken output: %v", err)
	}
}

// droppingFile drops a block from the store on its first write, as a
// concurrent reader that found the block corrupt would.
type droppingFile struct {
	*os.File
	drop func()
}

func (d *droppingFile) Write(p []byte) (int, error) {
	if d.drop != nil {
		d.drop()
		d.drop = nil
	}
	return d.File.Write(p)
}

// TestBlockDroppedDuringVerification: a block that disappears while the
// final pass runs is fetched again and the pass repeated; the output is exact.
func TestBlockDroppedDuringVerification(t *testing.T) {
	e := newEnv(t, 6<<20+17)
	eng := e.engine(t, Config{Concurrency: 2})
	req := Request{URL: e.url, Digest: e.c.Digest("sha256")}
	task, err := eng.Open(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	last := task.Info().NumBlocks() - 1
	f, err := os.Create(t.TempDir() + "/out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := &droppingFile{File: f, drop: func() {
		if err := e.store.DropBlock(task.ID(), last); err != nil {
			t.Error(err)
		}
	}}
	if _, err := eng.Download(ctx, req, DownloadOptions{Output: out}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, e.bytes(0, e.c.Size)) {
		t.Fatalf("output differs after a block was dropped during verification (%d bytes)", len(got))
	}
}

// TestFeedTailInFileOrder: the last quarter of a task's blocks is
// dispatched in file order whatever order the swarm prefers, the rest in
// the swarm's order; every block exactly once.
func TestFeedTailInFileOrder(t *testing.T) {
	e := newEnv(t, 40<<20)
	sw := &reversingSwarm{fakeSwarm: fakeSwarm{e: e}}
	eng := e.engine(t, Config{Swarm: sw})
	task, err := eng.Open(ctx, Request{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	n := task.Info().NumBlocks()
	tail := n / tailFraction
	if tail < 2 {
		t.Fatalf("%d blocks: too few for a tail", n)
	}
	for _, skip := range []int{0, 1} { // every block missing; every other one
		var missing []int
		for i := 0; i < n; i += 1 + skip {
			missing = append(missing, i)
		}
		got := feedAll(t, task, missing)
		if len(got) != len(missing) {
			t.Fatalf("dispatched %d of %d blocks", len(got), len(missing))
		}
		k := min(tail, len(missing))
		head, end := got[:len(got)-k], got[len(got)-k:]
		for i := 1; i < len(end); i++ {
			if end[i] <= end[i-1] {
				t.Fatalf("skip %d: tail not in file order: %v", skip, end)
			}
		}
		if len(head) > 1 && head[0] < head[1] {
			t.Fatalf("skip %d: the swarm's (reversed) order was not followed before the tail: %v", skip, head)
		}
	}
}

// gatedWriterAt is a recordingWriterAt that closes first when the block at
// offset 0 is written.
type gatedWriterAt struct {
	recordingWriterAt
	once  sync.Once
	first chan struct{}
}

func (g *gatedWriterAt) WriteAt(p []byte, off int64) (int, error) {
	n, err := g.recordingWriterAt.WriteAt(p, off)
	if off == 0 {
		g.once.Do(func() { close(g.first) })
	}
	return n, err
}

// lastBlockGate holds the fetch of the task's last block until open is
// closed (or the test's patience ends).
type lastBlockGate struct {
	fakeSwarm
	open <-chan struct{}
}

func (g *lastBlockGate) FetchBlock(ctx context.Context, t *Task, idx int) ([]byte, From, error) {
	if idx == t.Info().NumBlocks()-1 {
		select {
		case <-g.open:
		case <-time.After(20 * time.Second):
			return nil, FromPeer, errors.New("the early hash never wrote block 0")
		case <-ctx.Done():
			return nil, FromPeer, ctx.Err()
		}
	}
	return g.fakeSwarm.FetchBlock(ctx, t, idx)
}

// TestDownloadHashesWhileBlocksArrive: the whole-content hash runs while
// blocks still arrive. Block 0 was stored before the download, so only the
// early hash can write it to the output; the swarm holds back the last block
// until that happened. The download reports the blocks hashed early, writes
// every block exactly once and verifies the content.
func TestDownloadHashesWhileBlocksArrive(t *testing.T) {
	e := newEnv(t, 6<<20+777)
	out := &gatedWriterAt{first: make(chan struct{})}
	sw := &lastBlockGate{fakeSwarm: fakeSwarm{e: e}, open: out.first}
	eng := e.engine(t, Config{Swarm: sw, Concurrency: 2})
	req := Request{URL: e.url, Digest: e.c.Digest("sha256")}
	task, err := eng.Open(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Fetch(ctx, 0, Foreground); err != nil {
		t.Fatal(err)
	}
	res, err := eng.Download(ctx, req, DownloadOptions{OutputAt: out})
	if err != nil || !res.Task.Verified {
		t.Fatalf("download: %+v %v", res, err)
	}
	if res.HashedEarly < 1 {
		t.Fatalf("HashedEarly = %d, want at least block 0", res.HashedEarly)
	}
	if !bytes.Equal(out.buf, e.bytes(0, e.c.Size)) {
		t.Fatal("output differs from the content")
	}
	bs := task.Info().BlockSize
	for idx := range task.Info().NumBlocks() {
		if c := out.writes[int64(idx)*bs]; c != 1 {
			t.Fatalf("block %d written %d times, want once (%v)", idx, c, out.writes)
		}
	}
}

// TestEarlyHashMismatchDecidedByFullPass: a whole-content hash advanced
// early read a block that was damaged on disk at that moment. Whether the
// block was repaired since (restored) or is still damaged, the download's
// verification ends with the content verified: a mismatch after an early
// hash is never taken for "the content is not what was declared" without a
// full pass.
func TestEarlyHashMismatchDecidedByFullPass(t *testing.T) {
	for _, restored := range []bool{true, false} {
		e := newEnv(t, 3<<20+99)
		eng := e.engine(t, Config{Concurrency: 2})
		task, err := eng.Open(ctx, Request{URL: e.url, Digest: e.c.Digest("sha256")})
		if err != nil {
			t.Fatal(err)
		}
		for idx := range task.Info().NumBlocks() {
			if err := task.Fetch(ctx, idx, Foreground); err != nil {
				t.Fatal(err)
			}
		}
		f, err := os.OpenFile(e.store.Dir()+"/data/"+task.ID()+".blocks", os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		off := task.Info().BlockSize + 10 // inside block 1
		flip := func() {
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, off); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0xff
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
		}
		flip()
		c, err := e.store.NewContentHash(task.ID())
		if err != nil {
			t.Fatal(err)
		}
		if n, err := e.store.HashPresent(ctx, c, nil); n != task.Info().NumBlocks() || err != nil {
			t.Fatalf("HashPresent: %d %v", n, err)
		}
		if restored {
			flip()
		}
		meta, err := task.completeFunc(ctx, c, nopSink{})
		if err != nil || !meta.Verified {
			t.Fatalf("restored=%v: verification after an early hash of a damaged block: %+v %v", restored, meta, err)
		}
	}
}
