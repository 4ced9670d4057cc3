package supernode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// SeedRequest asks the seed for a task.
type SeedRequest struct {
	TaskID string
	URL    string
	// Header is forwarded to the origin (e.g. Authorization). Sensitive
	// headers (source.Sensitive) are held in memory only while a fetch runs:
	// never stored, logged, or kept once the task's run ends.
	Header http.Header
	Digest string // whole-content digest declared by the requester, "" if unknown
	// E2E: the end-to-end encrypted representation (TaskID is
	// blockstore.E2ETaskID(PlainID)); the seed encrypts every block it stores.
	E2E     bool
	PlainID string
}

// contentID is the id the content itself is named by (the plain one of an
// end-to-end encrypted task): a content-addressed one carries the digest.
func (r SeedRequest) contentID() string {
	if r.E2E {
		return r.PlainID
	}
	return r.TaskID
}

// SeedConfig configures a Seed.
type SeedConfig struct {
	Store  *blockstore.Store
	Source *source.Client
	// Concurrency is the number of parallel Range requests per task (default 6).
	Concurrency int
	// RetryAfter is how long a failed task stays failed before a new request
	// starts it again (default 5s). A registration bringing credentials
	// retries a task that failed for the lack of them at once.
	RetryAfter time.Duration
	// RevalidateAfter: a registration (Ensure) of a complete task whose
	// origin last confirmed it longer ago than this revalidates it first
	// (default 1s: a task registered by many hosts at once costs its origin
	// one conditional HEAD). Content-addressed tasks are never revalidated.
	RevalidateAfter time.Duration
	// Metrics counts the seed's cache results (nil: not counted).
	Metrics *Metrics
	// OnMeta is called once a task's metadata is known, with the blocks the
	// seed already holds. OnBlock is called for each block stored afterwards.
	// OnReset is called when the origin's content changed: the seed dropped
	// its copy (blocks and digests), and every copy held elsewhere is void;
	// OnMeta follows with the new content. They must not block.
	OnMeta  func(t blockstore.Task, have blockstore.Bitmap)
	OnBlock func(taskID string, idx int)
	OnReset func(taskID string)
	// OnDropped is called with blocks the seed's store no longer holds
	// (found corrupt); they are fetched again.
	OnDropped func(taskID string, blocks []int)
	// BeforeAnnounce, if set, is called with each block stored from the
	// origin (not of end-to-end encrypted tasks: ciphertext does not
	// compress), before the block is announced: the compression trial
	// (compress.go), bounded in time. data must not be kept.
	BeforeAnnounce func(ctx context.Context, taskID string, idx int, data []byte)
	Logger         *slog.Logger
	// Tracing traces seed runs ("seed.fetch", children of or linked to the
	// registration that needed them) and their sampled origin Range
	// requests (seed_trace.go); nil: off.
	Tracing *telemetry.Tracing
	// E2ESecret is the secret the keys of end-to-end encrypted tasks derive
	// from (see e2e.go); without it the seed refuses such tasks.
	E2ESecret []byte
}

// Seed fetches tasks from their origins into the supernode's store, streaming:
// every block is announced as soon as it is stored. It is safe for concurrent use.
type Seed struct {
	cfg SeedConfig
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	tasks map[string]*seedTask

	bytesOrigin atomic.Int64
	keys        *e2eKeys // nil: no end-to-end encrypted tasks
}

// Seed task states.
const (
	SeedResolving = "resolving"
	SeedFetching  = "fetching"
	SeedComplete  = "complete"
	SeedFailed    = "failed"
	// SeedWaiting: the stored copy is private (fetched with credentials)
	// and incomplete, and no request since this process started brought
	// credentials: the seed serves the blocks it holds and fetches nothing
	// until a registration with credentials starts it again.
	SeedWaiting = "waiting"
)

type seedTask struct {
	ready chan struct{} // closed once meta or err is set
	done  chan struct{} // closed when the run ends

	mu        sync.Mutex
	req       SeedRequest // Header: sensitive headers only while the run lasts
	state     string
	meta      blockstore.Task
	err       error
	failedAt  time.Time
	validated time.Time         // when the origin last confirmed meta; zero if it was not asked
	prio      []int             // wanted blocks, most urgent first
	claimed   blockstore.Bitmap // blocks being fetched or stored
	cursor    int
	changed   chan struct{} // closed and replaced whenever a block is stored
	fromOrig  int64
	e2e       *blockstore.E2E // the cipher of an end-to-end encrypted task (set before its blocks are fetched)
	span      trace.Span      // the run's "seed.fetch" span (seed_trace.go), set before the run starts
}

// NewSeed returns a seed; Close stops its work.
func NewSeed(cfg SeedConfig) *Seed {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 6
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 5 * time.Second
	}
	if cfg.RevalidateAfter <= 0 {
		cfg.RevalidateAfter = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.OnMeta == nil {
		cfg.OnMeta = func(blockstore.Task, blockstore.Bitmap) {}
	}
	if cfg.OnBlock == nil {
		cfg.OnBlock = func(string, int) {}
	}
	if cfg.OnDropped == nil {
		cfg.OnDropped = func(string, []int) {}
	}
	if cfg.OnReset == nil {
		cfg.OnReset = func(string) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Seed{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel, tasks: map[string]*seedTask{}}
	if len(cfg.E2ESecret) > 0 {
		s.keys = newE2EKeys(cfg.E2ESecret)
	}
	return s
}

// Close cancels every fetch and waits for them to end.
func (s *Seed) Close() {
	s.cancel()
	s.wg.Wait()
}

// BytesFromOrigin is the number of content bytes the seed fetched from origins.
func (s *Seed) BytesFromOrigin() int64 { return s.bytesOrigin.Load() }

// Ensure starts seeding the task unless it is already being seeded (or
// seeded and complete, and confirmed by its origin within RevalidateAfter).
// A task that failed more than RetryAfter ago is started again. It waits
// until the task's metadata is known (or the seed failed, or ctx ends) and
// returns the metadata; a seed failure is returned as an error that
// explains it.
func (s *Seed) Ensure(ctx context.Context, req SeedRequest) (blockstore.Task, error) {
	st := s.start(ctx, req, true)
	select {
	case <-st.ready:
	case <-ctx.Done():
		return blockstore.Task{}, fmt.Errorf("wait for the seed to resolve task %s: %w", req.TaskID, ctx.Err())
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.meta, st.err
}

// start returns the task's seed run, starting a new one when there is none
// or the current one must be redone (see restart). register is set for
// registrations (Ensure), which may revalidate a complete task.
// ctx only brings the trace of the registration: a new run's span is its
// child, a run under way is linked to it.
func (s *Seed) start(ctx context.Context, req SeedRequest, register bool) *seedTask {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, known := s.tasks[req.TaskID]
	if known && !s.restart(prev, req, register) {
		if register {
			s.cfg.Metrics.seedCached(cacheHit) // its copy, or its run under way
		}
		linkRun(ctx, prev)
		return prev
	}
	st := &seedTask{req: req, state: SeedResolving, ready: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{})}
	if known { // a new run of the task (revalidation, retry): its origin bytes add up
		prev.mu.Lock()
		st.fromOrig = prev.fromOrig
		prev.mu.Unlock()
	}
	s.tasks[req.TaskID] = st
	if s.ctx.Err() != nil {
		st.fail(fmt.Errorf("seed task %s: supernode is shutting down: %w", req.TaskID, s.ctx.Err()))
		st.forgetCredentials()
		close(st.done)
		return st
	}
	if known && prev.complete() {
		s.log.Debug("revalidating seeded task", "task", req.TaskID, "url", req.URL)
	} else {
		s.log.Info("seeding task", "task", req.TaskID, "url", req.URL)
	}
	rctx, span := s.startRunSpan(ctx, req)
	st.span = span
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(st.done)
		defer st.forgetCredentials()
		err := s.run(rctx, st)
		if err != nil {
			s.log.Warn("seed failed", "task", req.TaskID, "url", req.URL, "err", err)
			st.fail(err)
		}
		telemetry.EndSpan(span, err)
	}()
	return st
}

// restart reports whether st must be replaced by a new run for req:
//   - failed more than RetryAfter ago, or for the lack of credentials that
//     req brings;
//   - waiting for credentials, and req brings some;
//   - complete, but blocks are missing (evicted, or dropped as corrupt);
//   - complete, and a registration comes after RevalidateAfter (unless the
//     task is content-addressed, or private and req brings no credentials
//     to ask the origin with).
func (s *Seed) restart(st *seedTask, req SeedRequest, register bool) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	creds := source.Sensitive(req.Header)
	switch st.state {
	case SeedFailed:
		return time.Since(st.failedAt) >= s.cfg.RetryAfter || (creds && lacksCredentials(st.err))
	case SeedWaiting:
		return creds
	case SeedComplete:
		missing, err := s.cfg.Store.Missing(req.TaskID)
		if errors.Is(err, blockstore.ErrNotFound) || len(missing) > 0 {
			return true
		}
		if _, ok := digestOfTaskID(req.contentID()); ok || !register || (st.meta.Private && !creds) {
			return false
		}
		return time.Since(st.validated) >= s.cfg.RevalidateAfter
	}
	return false
}

// lacksCredentials reports whether err is the origin refusing the request's
// credentials (or their absence).
func lacksCredentials(err error) bool {
	var he *source.HTTPError
	return errors.As(err, &he) && (he.Status == http.StatusUnauthorized || he.Status == http.StatusForbidden || he.Status == http.StatusProxyAuthRequired)
}

func (st *seedTask) fail(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.state, st.err, st.failedAt = SeedFailed, err, time.Now()
	select {
	case <-st.ready:
	default:
		close(st.ready)
	}
	close(st.changed)
	st.changed = make(chan struct{})
}

func (st *seedTask) complete() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.state == SeedComplete
}

// request returns the task's request (its headers must not be modified).
func (st *seedTask) request() SeedRequest {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.req
}

// forgetCredentials drops the request's headers once the run ended, unless
// none of them is sensitive (they are then kept for later re-runs).
func (st *seedTask) forgetCredentials() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if source.Sensitive(st.req.Header) {
		st.req.Header = nil
	}
}

func (s *Seed) lookup(taskID string) *seedTask {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tasks[taskID]
}

// Resume makes sure a task is being seeded or complete: an unknown task is
// started from url (without request headers), a task that failed more than
// RetryAfter ago is retried, and one whose stored copy lost blocks (dropped
// as corrupt, or evicted) is fetched again. A re-run has the non-sensitive
// headers of the request that started the task; a private task (fetched
// with credentials) is not fetched without them: it waits for a
// registration that brings some. It does not wait.
func (s *Seed) Resume(taskID, url string) {
	if st := s.lookup(taskID); st != nil {
		s.start(context.Background(), st.request(), false)
		return
	}
	if url != "" {
		// (An end-to-end id resumes only a copy the seed's store holds:
		// see resolve.)
		s.start(context.Background(), SeedRequest{TaskID: taskID, URL: url, E2E: blockstore.IsE2ETaskID(taskID)}, false)
	}
}

// Known reports whether the seed has been asked for the task.
func (s *Seed) Known(taskID string) bool { return s.lookup(taskID) != nil }

// Err returns the task's seed failure, if any.
func (s *Seed) Err(taskID string) error {
	st := s.lookup(taskID)
	if st == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

// Prioritize moves the given blocks (most urgent first) to the front of the
// task's fetch order and returns those the seed does not hold yet and will
// fetch.
func (s *Seed) Prioritize(taskID string, blocks []int) []int {
	st := s.lookup(taskID)
	if st == nil {
		return nil
	}
	var pending []int
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.state == SeedFailed || st.state == SeedWaiting || st.claimed == nil {
		return nil
	}
	n := st.meta.NumBlocks()
	var front []int
	for _, b := range blocks {
		if b < 0 || b >= n || s.cfg.Store.HasBlock(taskID, b) {
			continue
		}
		pending = append(pending, b)
		if !st.claimed.Has(b) {
			front = append(front, b)
		}
	}
	if len(front) > 0 {
		rest := st.prio[:0:0]
		for _, b := range st.prio {
			if !containsInt(front, b) {
				rest = append(rest, b)
			}
		}
		st.prio = append(front, rest...)
		if len(st.prio) > 4096 {
			st.prio = st.prio[:4096]
		}
	}
	return pending
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// WaitReady waits until the task's metadata is resolved (or its seed
// failed, or ctx is done); it returns at once for an unknown task.
func (s *Seed) WaitReady(ctx context.Context, taskID string) {
	if st := s.lookup(taskID); st != nil {
		select {
		case <-st.ready:
		case <-ctx.Done():
		}
	}
}

// WaitBlocks waits until one of blocks is stored, the task's seed fails or
// ends, or ctx is done.
func (s *Seed) WaitBlocks(ctx context.Context, taskID string, blocks []int) {
	st := s.lookup(taskID)
	if st == nil {
		return
	}
	for {
		st.mu.Lock()
		ch, failed := st.changed, st.state == SeedFailed
		st.mu.Unlock()
		if failed {
			return
		}
		for _, b := range blocks {
			if s.cfg.Store.HasBlock(taskID, b) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-st.done:
			return
		case <-ch:
		}
	}
}

// SeedTaskState describes one seeded task (for /debug/state).
type SeedTaskState struct {
	ID              string `json:"id"`
	URL             string `json:"url"`
	State           string `json:"state"`
	Error           string `json:"error,omitempty"`
	Blocks          int    `json:"blocks"`
	Stored          int    `json:"stored"`
	BytesFromOrigin int64  `json:"bytes_from_origin"`
	Private         bool   `json:"private,omitempty"`
}

// State lists the seeded tasks, sorted by id.
func (s *Seed) State() []SeedTaskState {
	s.mu.Lock()
	sts := make([]*seedTask, 0, len(s.tasks))
	for _, st := range s.tasks {
		sts = append(sts, st)
	}
	s.mu.Unlock()
	out := make([]SeedTaskState, 0, len(sts))
	for _, st := range sts {
		st.mu.Lock()
		x := SeedTaskState{ID: st.req.TaskID, URL: st.req.URL, State: st.state, Blocks: st.meta.NumBlocks(), BytesFromOrigin: st.fromOrig, Private: st.meta.Private}
		if st.err != nil {
			x.Error = st.err.Error()
		}
		st.mu.Unlock()
		if bm, err := s.cfg.Store.Bitmap(x.ID); err == nil {
			x.Stored = bm.Count()
		}
		out = append(out, x)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// TaskState returns the task's seed state ("" when unknown), stored blocks and total blocks.
func (s *Seed) TaskState(taskID string) (state string, stored, total int) {
	st := s.lookup(taskID)
	if st == nil {
		return "", 0, 0
	}
	st.mu.Lock()
	state, total = st.state, st.meta.NumBlocks()
	st.mu.Unlock()
	if bm, err := s.cfg.Store.Bitmap(taskID); err == nil {
		stored = bm.Count()
	}
	return state, stored, total
}

// run resolves the task (stat or revalidate), then fetches its missing blocks.
func (s *Seed) run(ctx context.Context, st *seedTask) error {
	req := st.request()
	r, err := s.resolveCounted(ctx, req)
	if err != nil {
		return err
	}
	meta := r.task
	complete := meta.State == blockstore.StateComplete
	if !complete && !r.waiting {
		// Blocks are fetched with these headers: credentials make the content private.
		if meta, err = s.markPrivate(meta, source.Sensitive(req.Header)); err != nil {
			return err
		}
	}
	have, err := s.cfg.Store.Bitmap(meta.ID)
	if err != nil {
		return fmt.Errorf("seed task %s: read its blocks in the seed's store: %w", meta.ID, err)
	}
	var x *blockstore.E2E
	if meta.E2E {
		if x, err = s.e2eCipher(meta); err != nil {
			return err
		}
	}
	st.mu.Lock()
	st.e2e = x
	st.meta = meta
	st.claimed = have.Clone()
	st.validated = r.validated
	switch {
	case complete:
		st.state = SeedComplete
	case r.waiting:
		st.state = SeedWaiting
	default:
		st.state = SeedFetching
	}
	st.mu.Unlock()
	s.cfg.OnMeta(meta, have)
	close(st.ready)
	if r.waiting && !complete {
		s.log.Info("private task: serving the blocks held; fetching the rest once a registration brings credentials",
			"task", meta.ID, "stored", have.Count(), "blocks", meta.NumBlocks())
	}
	if complete || r.waiting {
		return nil
	}
	done, err := s.fetchAndVerify(ctx, st, req, meta)
	if err != nil {
		return err
	}
	st.mu.Lock()
	st.state, st.meta = SeedComplete, done
	st.mu.Unlock()
	s.log.Info("seed complete", "task", meta.ID, "bytes", meta.Length, "verified", done.Verified)
	return nil
}

// fetchAndVerify fetches the missing blocks and verifies the whole content.
// Blocks dropped meanwhile (read back corrupt while being served) are fetched
// again; after a whole-content mismatch a scrub tells corrupt stored blocks
// (dropped, announced through OnDropped and fetched again) from wrong
// content (an error). Both repairs are tried a bounded number of times.
func (s *Seed) fetchAndVerify(ctx context.Context, st *seedTask, req SeedRequest, meta blockstore.Task) (blockstore.Task, error) {
	store := s.cfg.Store
	refetch := func(blocks []int) {
		st.mu.Lock()
		defer st.mu.Unlock()
		for _, b := range blocks {
			st.claimed.Clear(b)
		}
		st.cursor = 0
	}
	for attempt := 0; ; attempt++ {
		if err := s.fetchAll(ctx, st, req, meta); err != nil {
			return blockstore.Task{}, err
		}
		missing, err := store.Missing(meta.ID)
		if err != nil {
			return blockstore.Task{}, fmt.Errorf("seed task %s: %w", meta.ID, err)
		}
		if len(missing) > 0 && attempt < 2 {
			refetch(missing)
			continue
		}
		done, err := s.verifyAndComplete(ctx, st, meta.ID)
		if (errors.Is(err, blockstore.ErrNotFound) || errors.Is(err, blockstore.ErrIncomplete)) && attempt < 2 {
			continue // a block was dropped while verifying: fetch it again
		}
		if errors.Is(err, blockstore.ErrDigestMismatch) && attempt < 2 {
			// Corrupt stored blocks (dropped by the scrub, or meanwhile by a
			// read) or wrong content? Only missing blocks tell them apart.
			if _, serr := store.Scrub(ctx, meta.ID); serr == nil {
				if dropped, _ := store.Missing(meta.ID); len(dropped) > 0 {
					s.log.Warn("seed store had corrupt blocks; fetching them again", "task", meta.ID, "blocks", dropped)
					s.cfg.OnDropped(meta.ID, dropped)
					refetch(dropped)
					continue
				}
			}
		}
		if err != nil {
			return blockstore.Task{}, fmt.Errorf("seed task %s from %s: whole-content verification: %w", meta.ID, req.URL, err)
		}
		return done, nil
	}
}

// next claims the next block to fetch: wanted blocks first, then in order.
func (st *seedTask) next(store *blockstore.Store) (int, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for len(st.prio) > 0 {
		b := st.prio[0]
		st.prio = st.prio[1:]
		if !st.claimed.Has(b) && !store.HasBlock(st.meta.ID, b) {
			st.claimed.Set(b)
			return b, true
		}
	}
	n := st.meta.NumBlocks()
	for st.cursor < n {
		b := st.cursor
		st.cursor++
		if !st.claimed.Has(b) && !store.HasBlock(st.meta.ID, b) {
			st.claimed.Set(b)
			return b, true
		}
	}
	return 0, false
}

func (st *seedTask) stored(n int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.fromOrig += n
	close(st.changed)
	st.changed = make(chan struct{})
}

// fetchAll fetches every missing block with Concurrency parallel Range
// requests, one block each; if the origin ignores Range it falls back to
// one stream.
func (s *Seed) fetchAll(ctx context.Context, st *seedTask, req SeedRequest, meta blockstore.Task) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var rangeIgnored atomic.Bool
	id, url := meta.ID, req.URL
	for range s.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				b, ok := st.next(s.cfg.Store)
				if !ok {
					return
				}
				off, n := int64(b)*meta.BlockSize, meta.BlockLen(b)
				data, err := s.readRange(ctx, b, url, req.Header, off, n)
				if errors.Is(err, source.ErrRangeIgnored) {
					rangeIgnored.Store(true)
					cancel(err)
					return
				}
				if err != nil {
					cancel(fmt.Errorf("seed task %s: fetch block %d (bytes %d-%d) from %s: %w", id, b, off, off+n-1, url, err))
					return
				}
				s.bytesOrigin.Add(int64(len(data)))
				if err := s.putBlock(ctx, st, id, b, data); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if rangeIgnored.Load() && s.ctx.Err() == nil {
		return s.streamAll(s.ctx, st, req, meta)
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// putBlock stores block b, fetched from the origin into data (which it may
// encrypt in place: data is the caller's own buffer).
func (s *Seed) putBlock(ctx context.Context, st *seedTask, id string, b int, data []byte) error {
	st.mu.Lock()
	x := st.e2e
	st.mu.Unlock()
	if x != nil {
		x.XOR(b, data, data) // encrypted once, here; every host stores and relays this
	}
	if err := s.cfg.Store.PutBlock(ctx, id, b, data); err != nil {
		return fmt.Errorf("seed task %s: store block %d: %w", id, b, err)
	}
	if x == nil && s.cfg.BeforeAnnounce != nil {
		s.cfg.BeforeAnnounce(ctx, id, b, data)
	}
	st.stored(int64(len(data)))
	s.cfg.OnBlock(id, b)
	return nil
}

// streamAll reads the body once and stores the blocks still missing; it
// stops reading after the last of them.
func (s *Seed) streamAll(ctx context.Context, st *seedTask, req SeedRequest, meta blockstore.Task) error {
	id, url := meta.ID, req.URL
	missing, err := s.cfg.Store.Missing(id)
	if err != nil {
		return fmt.Errorf("seed task %s: %w", id, err)
	}
	if len(missing) == 0 {
		return nil
	}
	last := missing[len(missing)-1]
	s.log.Info("origin ignores Range; seeding from one stream", "task", id, "url", url, "missing", len(missing))
	body, _, err := s.cfg.Source.Stream(ctx, url, req.Header, 0)
	if err != nil {
		return fmt.Errorf("seed task %s: stream %s: %w", id, url, err)
	}
	defer body.Close()
	buf := make([]byte, meta.BlockSize)
	for b := 0; b <= last; b++ {
		n := meta.BlockLen(b)
		if _, err := io.ReadFull(body, buf[:n]); err != nil {
			return fmt.Errorf("seed task %s: read block %d from the stream of %s: %w", id, b, url, err)
		}
		s.bytesOrigin.Add(n)
		if s.cfg.Store.HasBlock(id, b) {
			continue
		}
		if err := s.putBlock(ctx, st, id, b, bytes.Clone(buf[:n])); err != nil {
			return err
		}
	}
	return nil
}
