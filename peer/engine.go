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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// Request names content to fetch.
type Request struct {
	URL    string      // origin URL (http/https); for OCI blobs the registry blob URL
	Header http.Header // forwarded to the origin and, in a swarm, to the seed
	Digest string      // optional whole-content digest, "sha256:HEX" or "md5:HEX"
	TaskID string      // optional; default blockstore.TaskIDForURL(URL, Tag, "")
	Tag    string
	// E2E asks for the end-to-end encrypted representation (see
	// blockstore/e2e.go): blocks travel and are stored encrypted under a
	// task key from the supernode; its id is blockstore.E2ETaskID of the
	// plain one. Without a supernode to give the key, Open falls back to
	// the plain content from the origin (with a warning).
	E2E bool
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
	// RevalidateTimeout bounds the origin check of an Open of stored
	// content (see Open). Default 10s.
	RevalidateTimeout time.Duration
	// Metrics, if set, counts bytes by provenance, downloads, block fetch
	// times, origin fallbacks, rate-limit waits and active tasks.
	Metrics *Metrics
	// Recent, if set, keeps the last hour's bytes by provenance, downloads,
	// origin fallbacks and errors for `dfctl status` (see Recent).
	Recent *Recent
	// Tracing makes the spans of Open and Download (children of the
	// caller's span, or roots; see trace.go); nil: off.
	Tracing *telemetry.Tracing
}

// Engine fetches tasks into the block store. It is safe for concurrent use.
type Engine struct {
	cfg     Config
	store   *blockstore.Store
	src     *source.Client
	log     *slog.Logger
	limiter atomic.Pointer[rate.Limiter] // nil = unlimited; SetDownloadRate changes it
	bg      chan struct{}
	// bgLimiter paces background writes (PaceBackground; nil = unlimited):
	// the disk backoff of internal/flow sets it.
	bgLimiter atomic.Pointer[rate.Limiter]
	// received counts the bytes downloads received (swarm and origin), as
	// they pass the download limiter: the flow controller's view of dfly's
	// own download traffic.
	received atomic.Int64

	mu    sync.Mutex
	tasks map[string]*Task // published only once their store entry exists

	opens     flightGroup[*Task]   // one Open per request at a time (see opener.key)
	mutations flightGroup[created] // one creation or replacement per task ID at a time

	fallbacks atomic.Int64
	// foreground counts downloads and foreground block fetches in flight
	// (preheats, which pace themselves, are not counted): see Busy.
	foreground atomic.Int64
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
	if cfg.RevalidateTimeout <= 0 {
		cfg.RevalidateTimeout = defaultRevalidateTimeout
	}
	e := &Engine{cfg: cfg, store: cfg.Store, src: cfg.Source, log: cfg.Logger,
		bg: make(chan struct{}, cfg.Concurrency), tasks: map[string]*Task{}}
	if cfg.DownloadRate > 0 {
		burst := int(min(cfg.DownloadRate, 1<<20))
		e.limiter.Store(rate.NewLimiter(rate.Limit(cfg.DownloadRate), burst))
	}
	return e, nil
}

// rateLimit is bps as a rate.Limit: 0 or less = unlimited.
func rateLimit(bps int64) rate.Limit {
	if bps <= 0 {
		return rate.Inf
	}
	return rate.Limit(bps)
}

// setLimit sets the rate of the limiter in p (bytes/s, 0 = unlimited),
// creating it with burst on first use. The burst never changes: waiters
// take at most a burst at a time.
func setLimit(p *atomic.Pointer[rate.Limiter], bps int64, burst int) {
	l := p.Load()
	if l == nil {
		if bps <= 0 {
			return
		}
		if p.CompareAndSwap(nil, rate.NewLimiter(rateLimit(bps), burst)) {
			return
		}
		l = p.Load() // another caller made it first
	}
	l.SetLimit(rateLimit(bps))
}

// SetDownloadRate changes the engine's download limit (Config.DownloadRate)
// while it runs: bytes/s, 0 = unlimited. The flow controller
// (internal/flow, dfdaemon --flow auto) calls it. A limiter it creates
// has a burst of 64 KiB: after an idle spell a download then starts at
// the limit, not with a megabyte at the link's full rate.
func (e *Engine) SetDownloadRate(bps int64) { setLimit(&e.limiter, bps, 64<<10) }

// ReceivedBytes is how many bytes the engine's downloads received so far
// (from the swarm and the origin), counted as they pass the download limiter.
func (e *Engine) ReceivedBytes() int64 { return e.received.Load() }

// SetBackgroundRate sets the pace of background writes (PaceBackground):
// bytes/s, 0 = unlimited. dfdaemon's --disk-backoff sets it.
func (e *Engine) SetBackgroundRate(bps int64) { setLimit(&e.bgLimiter, bps, 1<<20) }

// PaceBackground waits until background work (a preheat, a prefetch) may
// write n more bytes under SetBackgroundRate; at once when unlimited.
// Foreground work never calls it.
func (e *Engine) PaceBackground(ctx context.Context, n int64) error {
	return waitLimiter(ctx, e.bgLimiter.Load(), n)
}

// waitLimiter takes n bytes from l, a burst at a time (nil l: unlimited).
func waitLimiter(ctx context.Context, l *rate.Limiter, n int64) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		c := min(n, int64(l.Burst()))
		if err := l.WaitN(ctx, int(c)); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// Store returns the engine's block store.
func (e *Engine) Store() *blockstore.Store { return e.store }

// Busy reports whether a download (other than a paced one, such as a
// preheat) or a foreground block fetch (a reader waiting) is in flight:
// background work yields while it is.
func (e *Engine) Busy() bool { return e.foreground.Load() > 0 }

// Fallbacks counts operations that went to the origin because the swarm failed.
func (e *Engine) Fallbacks() int64 { return e.fallbacks.Load() }

// Close stops the Opens in progress and forgets open tasks. The store is
// owned by the caller.
func (e *Engine) Close() error {
	e.opens.close()
	e.mutations.close()
	e.mu.Lock()
	e.tasks = map[string]*Task{}
	e.mu.Unlock()
	return nil
}

// Task is an open task. Handles are shared: opening the same task twice gives
// the same *Task, so concurrent readers share in-flight fetches.
type Task struct {
	e  *Engine
	id string

	reqMu sync.Mutex
	req   Request // the last request the origin accepted for it (origin fetches use it)

	// gen is held shared while a block is stored and exclusively to retire
	// the handle (Engine.retire: the task is being replaced because the
	// origin's content changed); a retired handle stores nothing more.
	gen     sync.RWMutex
	retired bool // guarded by gen

	completing chan struct{} // holds one token: serialises the final verification of concurrent downloads

	mu       sync.Mutex
	inflight map[int]*call
	mirrors  map[*outputMirror]struct{} // outputs of running downloads (OutputAt)
	stream   sync.Mutex                 // serialises the one-stream fallback
	cache    *blockCache

	// e2e is the cipher of an end-to-end encrypted task (set by Open).
	e2e atomic.Pointer[blockstore.E2E]

	bytesLocal, bytesOrigin, bytesSeed, bytesPeers atomic.Int64
	fg                                             atomic.Int32
	rangeIgnored                                   atomic.Bool
	active                                         atomic.Int32 // operations in flight (Metrics.taskBegin)
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

// Request returns the request the task was last opened with that the
// origin accepted (or the first, when none was checked).
func (t *Task) Request() Request {
	t.reqMu.Lock()
	defer t.reqMu.Unlock()
	return t.req
}

func (t *Task) setRequest(r Request) {
	t.reqMu.Lock()
	t.req = r
	t.reqMu.Unlock()
}

// Engine returns the engine the task belongs to.
func (t *Task) Engine() *Engine { return t.e }

// Info returns the task's current metadata (only the ID if the store lost
// the task, e.g. it was evicted or replaced).
func (t *Task) Info() blockstore.Task {
	meta, err := t.meta()
	if err != nil {
		return blockstore.Task{ID: t.id}
	}
	return meta
}

// meta returns the task's current metadata, or why there is none.
func (t *Task) meta() (blockstore.Task, error) {
	t.gen.RLock()
	retired := t.retired
	t.gen.RUnlock()
	if retired {
		return blockstore.Task{ID: t.id}, fmt.Errorf("task %s: %w", t.id, errReplaced)
	}
	meta, err := t.e.store.Task(t.id)
	if err != nil {
		return blockstore.Task{ID: t.id}, fmt.Errorf("task %s: %w", t.id, err)
	}
	return meta, nil
}

// errReplaced: the handle's task was replaced by a newer copy (the origin's
// content changed while it was in use).
var errReplaced = errors.New("the origin's content changed while it was downloaded and the task was started over; run again")

// put stores block idx unless the handle was retired.
func (t *Task) put(ctx context.Context, idx int, data []byte) error {
	t.gen.RLock()
	defer t.gen.RUnlock()
	if t.retired {
		return fmt.Errorf("store block %d of task %s: %w", idx, t.id, errReplaced)
	}
	return t.e.store.PutBlock(ctx, t.id, idx, data)
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

// adoptDigest makes d (a digest the caller declared) the task's digest: a
// complete task must then be verified against it again. A complete task
// whose content was hashed whole to d is verified against it.
func (t *Task) adoptDigest(d string) error {
	if d == "" {
		return nil
	}
	meta, err := t.meta()
	if err != nil {
		return err
	}
	if strings.EqualFold(meta.Digest, d) {
		if meta.State != blockstore.StateComplete || meta.Verified {
			return nil
		}
		_, err = t.e.store.UpdateTask(t.id, func(m *blockstore.Task) error {
			if m.State == blockstore.StateComplete && strings.EqualFold(m.Digest, d) {
				m.Verified = true
			}
			return nil
		})
		return err
	}
	_, err = t.e.store.UpdateTask(t.id, func(m *blockstore.Task) error { m.Digest = d; return nil })
	return err
}

// Fetch makes sure block idx is stored and verified.
func (t *Task) Fetch(ctx context.Context, idx int, prio Priority) error {
	t.e.cfg.Metrics.taskBegin(&t.active)
	defer t.e.cfg.Metrics.taskEnd(&t.active)
	if prio == Foreground {
		t.e.foreground.Add(1)
		defer t.e.foreground.Add(-1)
	}
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
		meta, err := t.meta()
		if err != nil {
			return fmt.Errorf("fetch block %d: %w", idx, err)
		}
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
	meta, err := t.meta()
	if err != nil {
		return fmt.Errorf("fetch block %d: %w", idx, err)
	}
	n := meta.BlockLen(idx)
	if sw := t.e.cfg.Swarm; sw != nil {
		began := time.Now()
		from, err := t.fetchFromSwarm(ctx, sw, idx, prio)
		if err == nil {
			t.e.cfg.Metrics.blockFetched(from, time.Since(began))
			t.count(from, n)
			sw.Stored(t, idx)
			return nil
		}
		if isCtxErr(err) && ctx.Err() != nil || errors.Is(err, errReplaced) {
			return err
		}
		t.e.fallbacks.Add(1)
		t.e.cfg.Metrics.fallback()
		t.e.cfg.Recent.Fallback(fmt.Errorf("block %d of task %s: %w", idx, t.id, err))
		t.e.log.Warn("swarm could not deliver block; fetching it from the origin", "task", t.id, "block", idx, "err", err)
	}
	req := t.Request()
	if req.URL == "" {
		return fmt.Errorf("block %d of task %s: no origin URL to fetch it from: %w", idx, t.id, blockstore.ErrNotFound)
	}
	began := time.Now()
	if err := t.e.wait(ctx, n); err != nil {
		return err
	}
	data, err := t.e.src.ReadRange(ctx, req.URL, req.Header, int64(idx)*meta.BlockSize, n)
	if errors.Is(err, source.ErrRangeIgnored) {
		t.e.log.Warn("origin ignores Range requests; falling back to one stream", "url", req.URL)
		t.rangeIgnored.Store(true)
		return t.streamAll(ctx)
	}
	if err != nil {
		return fmt.Errorf("fetch block %d of task %s from origin: %w", idx, t.id, err)
	}
	stored, err := t.fromOrigin(meta, idx, data)
	if err != nil {
		return err
	}
	if err := t.put(ctx, idx, stored); err != nil {
		return err
	}
	t.storedPlain(idx, data)
	t.e.cfg.Metrics.blockFetched(FromOrigin, time.Since(began))
	t.count(FromOrigin, n)
	if sw := t.e.cfg.Swarm; sw != nil {
		sw.Stored(t, idx)
	}
	return nil
}

// fetchFromSwarm fetches block idx through the swarm and stores it. The
// handle cannot be retired meanwhile (the swarm may store the block itself).
func (t *Task) fetchFromSwarm(ctx context.Context, sw Swarm, idx int, prio Priority) (From, error) {
	t.gen.RLock()
	defer t.gen.RUnlock()
	if t.retired {
		return 0, fmt.Errorf("fetch block %d of task %s: %w", idx, t.id, errReplaced)
	}
	data, from, err := sw.FetchBlock(WithPriority(ctx, prio), t, idx)
	if err == nil && data != nil { // nil: the swarm stored it itself
		if err = t.e.store.PutBlock(ctx, t.id, idx, data); err == nil {
			t.stored(idx, data)
		}
	}
	return from, err
}

func (t *Task) count(from From, n int64) {
	t.e.cfg.Metrics.delivered(from, n)
	t.e.cfg.Recent.AddBytes(from, n)
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

// wait applies the engine's download rate limit to n bytes (and counts
// them: ReceivedBytes).
func (e *Engine) wait(ctx context.Context, n int64) error {
	e.received.Add(n)
	l := e.limiter.Load()
	if l == nil {
		return nil
	}
	began := time.Now()
	defer func() { e.cfg.Metrics.waited(limiterDownload, time.Since(began)) }()
	return waitLimiter(ctx, l, n)
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
	meta, err := t.meta()
	if err != nil {
		return err
	}
	req := t.Request()
	body, _, err := t.e.src.Stream(ctx, req.URL, req.Header, 0)
	if err != nil {
		return fmt.Errorf("stream %s: %w", req.URL, err)
	}
	defer body.Close()
	buf := make([]byte, meta.BlockSize)
	for idx := 0; idx < meta.NumBlocks(); idx++ {
		n := meta.BlockLen(idx)
		if err := t.e.wait(ctx, n); err != nil {
			return err
		}
		if _, err := io.ReadFull(body, buf[:n]); err != nil {
			return fmt.Errorf("stream %s: block %d: %w", req.URL, idx, err)
		}
		t.bytesOrigin.Add(n)
		t.e.cfg.Metrics.delivered(FromOrigin, n)
		t.e.cfg.Recent.AddBytes(FromOrigin, n)
		if t.e.store.HasBlock(t.id, idx) {
			continue
		}
		stored, err := t.fromOrigin(meta, idx, buf[:n])
		if err != nil {
			return err
		}
		if err := t.put(ctx, idx, stored); err != nil {
			return err
		}
		t.storedPlain(idx, buf[:n])
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
	meta, err := t.meta()
	if err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
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
			if err := t.plain(idx, b); err != nil {
				return nil, err
			}
			t.cache.put(idx, b)
			return b, nil
		}
		// A corrupt block was dropped by the store; fetch it again once.
		if !errors.Is(err, blockstore.ErrCorrupt) && !errors.Is(err, blockstore.ErrNotFound) || attempt > 0 {
			return nil, err
		}
	}
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
