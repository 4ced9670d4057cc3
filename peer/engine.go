// Package peer is the per-host engine: it turns a request for content into a
// task in the local block store and fills it block by block — from the local
// store, from the swarm (peers and the seed, through a Swarm) or from the
// origin — verifying every block before it is stored. Foreground reads (a
// lazy filesystem's page fault) never wait behind background work.
package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
)

// Request names content to fetch.
type Request struct {
	URL    string      // origin URL (http/https); for OCI blobs the registry blob URL
	Header http.Header // forwarded to the origin and, in a swarm, to the seed
	Digest string      // optional whole-content digest, "sha256:HEX" or "md5:HEX"
	TaskID string      // optional; default blockstore.TaskIDForURL(URL, Tag, "")
	Tag    string
}

// Priority orders block fetches.
type Priority int

const (
	// Foreground fetches serve a reader that is waiting; they never queue behind background work.
	Foreground Priority = iota
	// Background fetches (whole downloads, prefetch) share Config.Concurrency slots.
	Background
)

// From says where a block came from.
type From int

const (
	FromLocal From = iota
	FromOrigin
	FromSeed
	FromPeer
)

func (f From) String() string {
	return [...]string{"local", "origin", "seed", "peer"}[f]
}

// ErrSwarmUnavailable marks a swarm failure after which the engine uses the origin.
var ErrSwarmUnavailable = errors.New("swarm unavailable")

// Swarm plugs peer-to-peer fetching into the engine. See docs/architecture.md.
type Swarm interface {
	// Resolve registers the task with the supernode (starting the seed) and
	// returns its metadata. On error the engine asks the origin itself.
	Resolve(ctx context.Context, req Request, id string) (blockstore.Task, error)
	// FetchBlock returns block idx from a peer or the seed; it records the
	// block's digest in the store first so that PutBlock verifies it. It
	// may store the block itself and return nil bytes (the engine's PutBlock
	// is then a no-op, so each block is hashed once, and the swarm can reuse
	// its buffers). On error the engine fetches the block from the origin.
	FetchBlock(ctx context.Context, t *Task, idx int) ([]byte, From, error)
	// Stored is called after a block was verified and stored.
	Stored(t *Task, idx int)
	// Order returns the order in which a whole download fetches missing blocks.
	Order(t *Task, missing []int) []int
	// Done is called when a download completed (err == nil) or gave up.
	Done(t *Task, err error)
}

// Config configures an Engine.
type Config struct {
	Store        *blockstore.Store
	Source       *source.Client
	Concurrency  int   // parallel background block fetches; default 8
	DownloadRate int64 // bytes/s for the whole engine; 0 = unlimited
	Logger       *slog.Logger
	Swarm        Swarm // nil = pure origin mode
	// CacheBlocks is how many verified blocks each open task keeps in memory
	// for small reads (a FUSE read of 4 KiB should not re-read and re-verify a
	// 16 MiB block). Default 4.
	CacheBlocks int
}

// Engine fetches tasks into the block store. It is safe for concurrent use.
type Engine struct {
	cfg     Config
	store   *blockstore.Store
	src     *source.Client
	log     *slog.Logger
	limiter *rate.Limiter
	bg      chan struct{}

	mu    sync.Mutex
	tasks map[string]*Task

	fallbacks atomic.Int64
}

// New returns an engine.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("peer engine: no block store: %w", blockstore.ErrInvalid)
	}
	if cfg.Source == nil {
		cfg.Source = source.New(source.Options{Logger: cfg.Logger})
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CacheBlocks <= 0 {
		cfg.CacheBlocks = 4
	}
	e := &Engine{cfg: cfg, store: cfg.Store, src: cfg.Source, log: cfg.Logger,
		bg: make(chan struct{}, cfg.Concurrency), tasks: map[string]*Task{}}
	if cfg.DownloadRate > 0 {
		burst := int(min(cfg.DownloadRate, 1<<20))
		e.limiter = rate.NewLimiter(rate.Limit(cfg.DownloadRate), burst)
	}
	return e, nil
}

// Store returns the engine's block store.
func (e *Engine) Store() *blockstore.Store { return e.store }

// Fallbacks counts operations that went to the origin because the swarm failed.
func (e *Engine) Fallbacks() int64 { return e.fallbacks.Load() }

// Close forgets open tasks. The store is owned by the caller.
func (e *Engine) Close() error {
	e.mu.Lock()
	e.tasks = map[string]*Task{}
	e.mu.Unlock()
	return nil
}

// ID returns the task ID a request maps to.
func (r Request) ID() (string, error) {
	if r.TaskID != "" {
		return r.TaskID, nil
	}
	if r.URL == "" {
		return "", fmt.Errorf("request has neither URL nor task ID: %w", blockstore.ErrInvalid)
	}
	return blockstore.TaskIDForURL(r.URL, r.Tag, "")
}

// Open resolves a task. If the store has it, no network is used (unless the
// task is pending and the origin reports changed content); otherwise the swarm
// or the origin is asked for its metadata and the task is created.
func (e *Engine) Open(ctx context.Context, req Request) (*Task, error) {
	id, err := req.ID()
	if err != nil {
		return nil, err
	}
	if req.Digest != "" {
		if _, _, err := blockstore.ParseDigest(req.Digest); err != nil {
			return nil, err
		}
	}
	e.mu.Lock()
	if t, ok := e.tasks[id]; ok {
		e.mu.Unlock()
		if err := t.adoptDigest(req.Digest); err != nil {
			return nil, err
		}
		return t, nil
	}
	e.mu.Unlock()

	if meta, err := e.store.Task(id); err == nil {
		t := e.register(id, req)
		if meta.State == blockstore.StatePending && req.URL != "" && e.cfg.Swarm == nil {
			if changed := e.originChanged(ctx, req, meta); changed {
				e.log.Warn("origin content changed since the download started; starting over", "task", id, "url", req.URL)
				if err := e.store.DeleteTask(id); err != nil {
					return nil, err
				}
				return e.create(ctx, id, req, t)
			}
		}
		if err := t.adoptDigest(req.Digest); err != nil {
			return nil, err
		}
		return t, nil
	} else if !errors.Is(err, blockstore.ErrNotFound) {
		return nil, err
	}
	return e.create(ctx, id, req, e.register(id, req))
}

func (e *Engine) register(id string, req Request) *Task {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t, ok := e.tasks[id]; ok {
		return t
	}
	t := &Task{e: e, id: id, req: req, inflight: map[int]*call{}, cache: newBlockCache(e.cfg.CacheBlocks)}
	e.tasks[id] = t
	return t
}

// originChanged reports whether the origin's validators differ from the
// stored ones (a resumed download must not mix two versions). Errors mean
// "cannot tell": the stored blocks are kept.
func (e *Engine) originChanged(ctx context.Context, req Request, meta blockstore.Task) bool {
	if meta.ETag == "" && meta.LastModified == "" {
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := e.src.Stat(sctx, req.URL, req.Header)
	if err != nil {
		return false
	}
	return info.Length != meta.Length || (meta.ETag != "" && info.ETag != "" && info.ETag != meta.ETag)
}

func (e *Engine) create(ctx context.Context, id string, req Request, t *Task) (*Task, error) {
	var meta blockstore.Task
	var err error
	if e.cfg.Swarm != nil {
		meta, err = e.cfg.Swarm.Resolve(ctx, req, id)
		if err != nil {
			e.fallbacks.Add(1)
			e.log.Warn("swarm could not resolve the task; asking the origin", "task", id, "err", err)
		}
	}
	if e.cfg.Swarm == nil || err != nil {
		if req.URL == "" {
			return nil, fmt.Errorf("task %s is not in the store and the request has no URL: %w", id, blockstore.ErrNotFound)
		}
		info, err := e.src.Stat(ctx, req.URL, req.Header)
		if err != nil {
			return nil, fmt.Errorf("ask origin about %s: %w", req.URL, err)
		}
		if info.Length < 0 {
			return nil, fmt.Errorf("origin %s did not report the content length; dfly needs it to cut the content into blocks: %w", req.URL, blockstore.ErrInvalid)
		}
		meta = blockstore.Task{Length: info.Length, Digest: info.Digest, ETag: info.ETag, LastModified: info.LastModified}
	}
	meta.ID = id
	if meta.Source == "" {
		meta.Source = req.URL
	}
	if req.Digest != "" {
		meta.Digest = req.Digest // the user's digest wins over the origin's
	}
	if _, err := e.store.CreateTask(ctx, meta); err != nil {
		e.mu.Lock()
		delete(e.tasks, id)
		e.mu.Unlock()
		return nil, err
	}
	return t, nil
}

// Task is an open task. Handles are shared: opening the same task twice gives
// the same *Task, so concurrent readers share in-flight fetches.
type Task struct {
	e   *Engine
	id  string
	req Request

	mu       sync.Mutex
	inflight map[int]*call
	mirrors  map[*outputMirror]struct{} // outputs of running downloads (OutputAt)
	stream   sync.Mutex                 // serialises the one-stream fallback
	cache    *blockCache

	bytesLocal, bytesOrigin, bytesSeed, bytesPeers atomic.Int64
	fg                                             atomic.Int32
	rangeIgnored                                   atomic.Bool
}

type call struct {
	done chan struct{}
	err  error
}

// TaskStats says where a task's bytes came from during this process's life.
type TaskStats struct {
	BytesLocal  int64 `json:"bytes_local"`
	BytesOrigin int64 `json:"bytes_origin"`
	BytesSeed   int64 `json:"bytes_seed"`
	BytesPeers  int64 `json:"bytes_peers"`
}

// ID returns the task ID.
func (t *Task) ID() string { return t.id }

// Request returns the request the task was opened with.
func (t *Task) Request() Request { return t.req }

// Engine returns the engine the task belongs to.
func (t *Task) Engine() *Engine { return t.e }

// Info returns the task's current metadata.
func (t *Task) Info() blockstore.Task {
	meta, err := t.e.store.Task(t.id)
	if err != nil {
		return blockstore.Task{ID: t.id}
	}
	return meta
}

// Missing lists the blocks not yet stored.
func (t *Task) Missing() []int {
	m, _ := t.e.store.Missing(t.id)
	return m
}

// Stats returns byte counts by provenance.
func (t *Task) Stats() TaskStats {
	return TaskStats{BytesLocal: t.bytesLocal.Load(), BytesOrigin: t.bytesOrigin.Load(), BytesSeed: t.bytesSeed.Load(), BytesPeers: t.bytesPeers.Load()}
}

// ForegroundInFlight is the number of foreground reads in progress.
func (t *Task) ForegroundInFlight() int { return int(t.fg.Load()) }

func (t *Task) adoptDigest(d string) error {
	if d == "" {
		return nil
	}
	meta, err := t.e.store.Task(t.id)
	if err != nil || meta.Digest == d {
		return err
	}
	_, err = t.e.store.UpdateTask(t.id, func(m *blockstore.Task) error { m.Digest = d; return nil })
	return err
}

// Fetch makes sure block idx is stored and verified.
func (t *Task) Fetch(ctx context.Context, idx int, prio Priority) error {
	if prio == Background && !t.e.store.HasBlock(t.id, idx) {
		// Take a background slot before announcing the fetch as in flight, so
		// a foreground reader of the same block never waits behind the
		// background queue: it only ever waits for a fetch that is running.
		select {
		case t.e.bg <- struct{}{}:
			defer func() { <-t.e.bg }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		if t.e.store.HasBlock(t.id, idx) {
			return nil
		}
		meta := t.Info()
		if idx < 0 || idx >= meta.NumBlocks() {
			return fmt.Errorf("block %d of task %s: out of range [0,%d): %w", idx, t.id, meta.NumBlocks(), blockstore.ErrInvalid)
		}
		t.mu.Lock()
		c, ok := t.inflight[idx]
		if !ok {
			c = &call{done: make(chan struct{})}
			t.inflight[idx] = c
		}
		t.mu.Unlock()
		if ok { // someone else is fetching it: wait
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-c.done:
			}
			if c.err == nil || !isCtxErr(c.err) {
				return c.err
			}
			continue // the other fetcher gave up; try ourselves
		}
		c.err = t.fetch(ctx, idx, prio)
		t.mu.Lock()
		delete(t.inflight, idx)
		t.mu.Unlock()
		close(c.done)
		return c.err
	}
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (t *Task) fetch(ctx context.Context, idx int, prio Priority) error {
	if t.rangeIgnored.Load() {
		return t.streamAll(ctx)
	}
	meta := t.Info()
	n := meta.BlockLen(idx)
	if sw := t.e.cfg.Swarm; sw != nil {
		data, from, err := sw.FetchBlock(WithPriority(ctx, prio), t, idx)
		if err == nil && data != nil { // nil: the swarm stored it itself
			if err = t.e.store.PutBlock(ctx, t.id, idx, data); err == nil {
				t.stored(idx, data)
			}
		}
		if err == nil {
			t.count(from, n)
			sw.Stored(t, idx)
			return nil
		}
		if isCtxErr(err) && ctx.Err() != nil {
			return err
		}
		t.e.fallbacks.Add(1)
		t.e.log.Warn("swarm could not deliver block; fetching it from the origin", "task", t.id, "block", idx, "err", err)
	}
	if t.req.URL == "" {
		return fmt.Errorf("block %d of task %s: no origin URL to fetch it from: %w", idx, t.id, blockstore.ErrNotFound)
	}
	if err := t.e.wait(ctx, n); err != nil {
		return err
	}
	data, err := t.e.src.ReadRange(ctx, t.req.URL, t.req.Header, int64(idx)*meta.BlockSize, n)
	if errors.Is(err, source.ErrRangeIgnored) {
		t.e.log.Warn("origin ignores Range requests; falling back to one stream", "url", t.req.URL)
		t.rangeIgnored.Store(true)
		return t.streamAll(ctx)
	}
	if err != nil {
		return fmt.Errorf("fetch block %d of task %s from origin: %w", idx, t.id, err)
	}
	if err := t.e.store.PutBlock(ctx, t.id, idx, data); err != nil {
		return err
	}
	t.stored(idx, data)
	t.count(FromOrigin, n)
	if sw := t.e.cfg.Swarm; sw != nil {
		sw.Stored(t, idx)
	}
	return nil
}

func (t *Task) count(from From, n int64) {
	switch from {
	case FromOrigin:
		t.bytesOrigin.Add(n)
	case FromSeed:
		t.bytesSeed.Add(n)
	case FromPeer:
		t.bytesPeers.Add(n)
	default:
		t.bytesLocal.Add(n)
	}
}

// wait applies the engine's download rate limit to n bytes.
func (e *Engine) wait(ctx context.Context, n int64) error {
	if e.limiter == nil {
		return nil
	}
	for n > 0 {
		c := min(n, int64(e.limiter.Burst()))
		if err := e.limiter.WaitN(ctx, int(c)); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// streamAll reads the whole content in one stream (for origins that ignore
// Range) and stores every missing block.
func (t *Task) streamAll(ctx context.Context) error {
	t.stream.Lock()
	defer t.stream.Unlock()
	missing := t.Missing()
	if len(missing) == 0 {
		return nil
	}
	meta := t.Info()
	body, _, err := t.e.src.Stream(ctx, t.req.URL, t.req.Header, 0)
	if err != nil {
		return fmt.Errorf("stream %s: %w", t.req.URL, err)
	}
	defer body.Close()
	buf := make([]byte, meta.BlockSize)
	for idx := 0; idx < meta.NumBlocks(); idx++ {
		n := meta.BlockLen(idx)
		if err := t.e.wait(ctx, n); err != nil {
			return err
		}
		if _, err := io.ReadFull(body, buf[:n]); err != nil {
			return fmt.Errorf("stream %s: block %d: %w", t.req.URL, idx, err)
		}
		t.bytesOrigin.Add(n)
		if t.e.store.HasBlock(t.id, idx) {
			continue
		}
		if err := t.e.store.PutBlock(ctx, t.id, idx, buf[:n]); err != nil {
			return err
		}
		t.stored(idx, buf[:n])
		if sw := t.e.cfg.Swarm; sw != nil {
			sw.Stored(t, idx)
		}
	}
	return nil
}

// ReadAt reads len(p) bytes at off, fetching (foreground) only the blocks
// that cover the range. It returns io.EOF when the range passes the end.
func (t *Task) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	t.fg.Add(1)
	defer t.fg.Add(-1)
	meta := t.Info()
	if off < 0 {
		return 0, fmt.Errorf("read task %s at %d: %w", t.id, off, blockstore.ErrInvalid)
	}
	if off >= meta.Length {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), meta.Length)
	first, last := int(off/meta.BlockSize), int((end-1)/meta.BlockSize)
	if last > first { // several blocks: fetch them in parallel
		var wg sync.WaitGroup
		errs := make([]error, last-first+1)
		for i := first; i <= last; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i-first] = t.Fetch(ctx, i, Foreground)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return 0, err
		}
	}
	n := 0
	for idx := first; idx <= last; idx++ {
		blk, err := t.block(ctx, idx)
		if err != nil {
			return n, err
		}
		pos := off + int64(n)
		n += copy(p[n:end-off], blk[pos-int64(idx)*meta.BlockSize:])
	}
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// block returns verified block idx, fetching it (foreground) if needed.
func (t *Task) block(ctx context.Context, idx int) ([]byte, error) {
	if b := t.cache.get(idx); b != nil {
		return b, nil
	}
	for attempt := 0; ; attempt++ {
		if err := t.Fetch(ctx, idx, Foreground); err != nil {
			return nil, err
		}
		b, err := t.e.store.ReadBlock(t.id, idx)
		if err == nil {
			t.cache.put(idx, b)
			return b, nil
		}
		// A corrupt block was dropped by the store; fetch it again once.
		if !errors.Is(err, blockstore.ErrCorrupt) && !errors.Is(err, blockstore.ErrNotFound) || attempt > 0 {
			return nil, err
		}
	}
}

// Complete verifies the whole content and marks the task complete. When a
// stored block turns out corrupt (or the whole digest does not match), every
// block is scrubbed, the bad ones are refetched and verification runs again
// (twice at most). A mismatch with no corrupt block is final.
func (t *Task) Complete(ctx context.Context) (blockstore.Task, error) {
	return t.complete(ctx, nil)
}

// complete is Complete streaming the verified content to w (nil: nowhere).
// w must accept a restart: after a failed pass it is rewound via Seek, or,
// when it cannot be, the error is returned.
func (t *Task) complete(ctx context.Context, w io.Writer) (blockstore.Task, error) {
	emit, reset := writerOutput(w)
	return t.completeFunc(ctx, nil, emit, reset)
}

// completeAt is Complete writing each block at its offset in w.
func (t *Task) completeAt(ctx context.Context, w io.WriterAt) (blockstore.Task, error) {
	emit, reset := t.writerAtOutput(w, nil)
	return t.completeFunc(ctx, nil, emit, reset)
}

// writerOutput returns the emit and reset of the verification passes (see
// completeFunc) that write the content to w in order; a repair pass
// rewinds w first.
func writerOutput(w io.Writer) (emit func(int, []byte) error, reset func() error) {
	if w == nil {
		return nil, nil
	}
	emit = func(_ int, blk []byte) error {
		_, err := w.Write(blk)
		return err
	}
	return emit, func() error { return rewind(w) }
}

// writerAtOutput returns the emit and reset of the verification passes (see
// completeFunc) that write each block at its offset in w, except the blocks
// m (if not nil) already wrote there. After a repair every block is written
// again.
func (t *Task) writerAtOutput(w io.WriterAt, m *outputMirror) (emit func(int, []byte) error, reset func() error) {
	bs := t.Info().BlockSize
	// emit and reset never run at the same time: reset runs between the
	// passes of completeFunc, after the download's early hash stopped.
	emit = func(idx int, blk []byte) error {
		if m != nil && m.wrote(idx) {
			return nil
		}
		_, err := w.WriteAt(blk, int64(idx)*bs)
		return err
	}
	reset = func() error {
		m = nil
		return nil
	}
	return emit, reset
}

// completeFunc runs the verification passes, emitting every block of a
// pass that verifies (reset is called before a pass that follows a repair).
// The first pass continues c when c is not nil (a hash the download
// advanced while its blocks arrived); the others start from the first block.
func (t *Task) completeFunc(ctx context.Context, c *blockstore.ContentHash, emit func(int, []byte) error, reset func() error) (blockstore.Task, error) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 && reset != nil {
			if err := reset(); err != nil {
				return t.Info(), err
			}
		}
		var meta blockstore.Task
		var err error
		early := attempt == 0 && c != nil && c.Hashed() > 0
		if attempt == 0 && c != nil {
			meta, err = t.e.store.CompleteHash(ctx, c, emit)
		} else {
			meta, err = t.e.store.VerifyAndCompleteFunc(ctx, t.id, emit)
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
	// digest, and the pass checked the whole content.
	OutputAt io.WriterAt
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

func newOutputMirror(t *Task, w io.WriterAt) *outputMirror {
	meta := t.Info()
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

// stored hands block idx, just verified and stored, to the outputs of the
// downloads of this task that are running (see DownloadOptions.OutputAt).
// data is only read, during the call.
func (t *Task) stored(idx int, data []byte) {
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

// Download fetches every missing block of the task and verifies the whole content.
func (e *Engine) Download(ctx context.Context, req Request, opt DownloadOptions) (Result, error) {
	start := time.Now()
	fb := e.fallbacks.Load()
	t, err := e.Open(ctx, req)
	if err != nil {
		return Result{}, err
	}
	opened := time.Since(start)
	res, err := t.download(ctx, opt)
	res.Duration, res.Open = time.Since(start), opened
	if res.FirstBlock > 0 {
		res.FirstBlock += opened
	}
	res.Fallback = e.fallbacks.Load() - fb
	if sw := e.cfg.Swarm; sw != nil {
		sw.Done(t, err)
	}
	return res, err
}

func (t *Task) download(ctx context.Context, opt DownloadOptions) (Result, error) {
	meta := t.Info()
	if meta.State == blockstore.StateComplete {
		t.bytesLocal.Add(meta.Length)
		if opt.Output != nil {
			if _, err := t.e.store.WriteTo(ctx, t.id, opt.Output); err != nil {
				if !errors.Is(err, blockstore.ErrCorrupt) {
					return Result{Task: meta, Stats: t.Stats()}, err
				}
				// A block rotted since completion: repair, then write again.
				meta, err = t.complete(ctx, opt.Output)
				return Result{Task: meta, Stats: t.Stats()}, err
			}
		}
		if w := opt.OutputAt; w != nil {
			err := t.e.store.ForEachBlock(ctx, t.id, func(idx int, blk []byte) error {
				_, err := w.WriteAt(blk, int64(idx)*meta.BlockSize)
				return err
			})
			if errors.Is(err, blockstore.ErrCorrupt) { // rotted since completion: repair, write again
				meta, err = t.completeAt(ctx, w)
			}
			return Result{Task: meta, Stats: t.Stats()}, err
		}
		return Result{Task: meta, Stats: t.Stats()}, nil
	}
	missing := t.Missing()
	var done atomic.Int64
	done.Store(meta.Length - missingBytes(meta, missing))
	t.bytesLocal.Add(done.Load())
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
	emit, reset := writerOutput(opt.Output)
	if opt.OutputAt != nil {
		mirror = newOutputMirror(t, opt.OutputAt)
		emit, reset = t.writerAtOutput(opt.OutputAt, mirror)
	}
	began := time.Now()
	var first sync.Once
	var firstBlock time.Duration
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	hasher := t.startPrefixHash(ctx, mirror.holdBack(missing, emit))
	work := make(chan int)
	var wg sync.WaitGroup
	for range t.e.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idx := range work {
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
	t.feed(ctx, missing, work)
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
	meta, err := t.completeFunc(ctx, c, emit, reset)
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

// holdBack wraps the emit of a download's early hash (emit writes what m
// has not written): a block the download was missing when it started is
// present in the store a moment before m writes it, so the hash waits for
// m rather than write it twice. Without m it returns emit.
func (m *outputMirror) holdBack(missing []int, emit func(int, []byte) error) func(int, []byte) error {
	if m == nil {
		return emit
	}
	fetching := blockstore.NewBitmap(m.t.Info().NumBlocks())
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
func (t *Task) feed(ctx context.Context, missing []int, work chan<- int) {
	sw := t.e.cfg.Swarm
	tail := t.Info().NumBlocks() / tailFraction
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

// blockCache keeps the last few verified blocks of a task in memory.
type blockCache struct {
	mu    sync.Mutex
	max   int
	order []int
	data  map[int][]byte
}

func newBlockCache(n int) *blockCache { return &blockCache{max: n, data: map[int][]byte{}} }

func (c *blockCache) get(idx int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.data[idx]
}

func (c *blockCache) put(idx int, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.data[idx]; ok {
		return
	}
	if len(c.order) >= c.max {
		delete(c.data, c.order[0])
		c.order = c.order[1:]
	}
	c.order = append(c.order, idx)
	c.data[idx] = b
}
