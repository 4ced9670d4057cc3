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

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
)

// SeedRequest asks the seed for a task.
type SeedRequest struct {
	TaskID string
	URL    string
	Header http.Header // forwarded to the origin (e.g. Authorization)
	Digest string      // whole-content digest declared by the requester, "" if unknown
}

// SeedConfig configures a Seed.
type SeedConfig struct {
	Store  *blockstore.Store
	Source *source.Client
	// Concurrency is the number of parallel Range requests per task (default 6).
	Concurrency int
	// RetryAfter is how long a failed task stays failed before a new request
	// starts it again (default 5s).
	RetryAfter time.Duration
	// OnMeta is called once a task's metadata is known, with the blocks the
	// seed already holds. OnBlock is called for each block stored afterwards.
	// OnReset is called when the origin's content changed and every copy
	// held elsewhere is stale. They must not block.
	OnMeta  func(t blockstore.Task, have blockstore.Bitmap)
	OnBlock func(taskID string, idx int)
	OnReset func(taskID string)
	// OnDropped is called with blocks the seed's store no longer holds
	// (found corrupt); they are fetched again.
	OnDropped func(taskID string, blocks []int)
	Logger    *slog.Logger
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
}

// Seed task states.
const (
	SeedResolving = "resolving"
	SeedFetching  = "fetching"
	SeedComplete  = "complete"
	SeedFailed    = "failed"
)

type seedTask struct {
	req   SeedRequest
	ready chan struct{} // closed once meta or err is set
	done  chan struct{} // closed when the run ends

	mu       sync.Mutex
	state    string
	meta     blockstore.Task
	err      error
	failedAt time.Time
	prio     []int             // wanted blocks, most urgent first
	claimed  blockstore.Bitmap // blocks being fetched or stored
	cursor   int
	changed  chan struct{} // closed and replaced whenever a block is stored
	fromOrig int64
}

// NewSeed returns a seed; Close stops its work.
func NewSeed(cfg SeedConfig) *Seed {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 6
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 5 * time.Second
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
	return &Seed{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel, tasks: map[string]*seedTask{}}
}

// Close cancels every fetch and waits for them to end.
func (s *Seed) Close() {
	s.cancel()
	s.wg.Wait()
}

// BytesFromOrigin is the number of content bytes the seed fetched from origins.
func (s *Seed) BytesFromOrigin() int64 { return s.bytesOrigin.Load() }

// Ensure starts seeding the task unless it is already being seeded (or
// seeded and complete). A task that failed more than RetryAfter ago is
// started again. It waits until the task's metadata is known (or the seed
// failed, or ctx ends) and returns the metadata; a seed failure is returned
// as an error that explains it.
func (s *Seed) Ensure(ctx context.Context, req SeedRequest) (blockstore.Task, error) {
	st := s.start(req)
	select {
	case <-st.ready:
	case <-ctx.Done():
		return blockstore.Task{}, fmt.Errorf("wait for the seed to resolve task %s: %w", req.TaskID, ctx.Err())
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.meta, st.err
}

func (s *Seed) start(req SeedRequest) *seedTask {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.tasks[req.TaskID]; ok {
		st.mu.Lock()
		retry := st.state == SeedFailed && time.Since(st.failedAt) >= s.cfg.RetryAfter
		if st.state == SeedComplete {
			// Evicted from the store since (quota), or a block was dropped
			// as corrupt: seed it again (a resume fetches only what is missing).
			missing, err := s.cfg.Store.Missing(req.TaskID)
			retry = errors.Is(err, blockstore.ErrNotFound) || len(missing) > 0
		}
		st.mu.Unlock()
		if !retry {
			return st
		}
	}
	st := &seedTask{req: req, state: SeedResolving, ready: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{})}
	s.tasks[req.TaskID] = st
	if s.ctx.Err() != nil {
		st.fail(fmt.Errorf("seed task %s: supernode is shutting down: %w", req.TaskID, s.ctx.Err()))
		close(st.done)
		return st
	}
	s.log.Info("seeding task", "task", req.TaskID, "url", req.URL)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(st.done)
		if err := s.run(st); err != nil {
			s.log.Warn("seed failed", "task", req.TaskID, "url", req.URL, "err", err)
			st.fail(err)
		}
	}()
	return st
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

func (s *Seed) lookup(taskID string) *seedTask {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tasks[taskID]
}

// Resume makes sure a task is being seeded or complete: an unknown task is
// started from url (without request headers), a task that failed more than
// RetryAfter ago is retried, and one whose stored copy lost blocks (dropped
// as corrupt, or evicted) is fetched again, with the headers of the request
// that first started it. It does not wait.
func (s *Seed) Resume(taskID, url string) {
	if st := s.lookup(taskID); st != nil {
		s.start(st.req)
		return
	}
	if url != "" {
		s.start(SeedRequest{TaskID: taskID, URL: url})
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
// task's fetch order and returns those the seed does not hold yet.
func (s *Seed) Prioritize(taskID string, blocks []int) []int {
	st := s.lookup(taskID)
	if st == nil {
		return nil
	}
	var pending []int
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.state == SeedFailed || st.claimed == nil {
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
		x := SeedTaskState{ID: st.req.TaskID, URL: st.req.URL, State: st.state, Blocks: st.meta.NumBlocks(), BytesFromOrigin: st.fromOrig}
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
func (s *Seed) run(st *seedTask) error {
	ctx := s.ctx
	meta, err := s.resolve(ctx, st.req)
	if err != nil {
		return err
	}
	have, err := s.cfg.Store.Bitmap(meta.ID)
	if err != nil {
		return fmt.Errorf("seed task %s: %w", meta.ID, err)
	}
	complete := meta.State == blockstore.StateComplete
	st.mu.Lock()
	st.meta = meta
	st.claimed = have.Clone()
	st.state = SeedFetching
	if complete {
		st.state = SeedComplete
	}
	st.mu.Unlock()
	s.cfg.OnMeta(meta, have)
	close(st.ready)
	if complete {
		return nil
	}
	done, err := s.fetchAndVerify(ctx, st, meta)
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
func (s *Seed) fetchAndVerify(ctx context.Context, st *seedTask, meta blockstore.Task) (blockstore.Task, error) {
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
		if err := s.fetchAll(ctx, st); err != nil {
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
		done, err := store.VerifyAndComplete(ctx, meta.ID, nil)
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
			return blockstore.Task{}, fmt.Errorf("seed task %s from %s: whole-content verification: %w", meta.ID, st.req.URL, err)
		}
		return done, nil
	}
}

// resolve returns the task in the store, creating it from the origin's Stat or
// revalidating a cached copy: 304 keeps it, 200 refetches it, errors fail.
func (s *Seed) resolve(ctx context.Context, req SeedRequest) (blockstore.Task, error) {
	store := s.cfg.Store
	if cached, err := store.Task(req.TaskID); err == nil {
		switch {
		case req.Digest != "" && cached.Verified && sameDigest(cached.Digest, req.Digest):
			// Content-addressed and verified: nothing to revalidate.
			return cached, nil
		default:
			info, err := s.cfg.Source.Revalidate(ctx, req.URL, req.Header, cached.ETag, cached.LastModified)
			if errors.Is(err, source.ErrNotModified) {
				s.log.Debug("seed cache revalidated", "task", req.TaskID)
				return cached, nil
			}
			if err != nil {
				return blockstore.Task{}, fmt.Errorf("revalidate cached task %s at %s: %w", req.TaskID, req.URL, err)
			}
			if cached.ETag != "" && info.ETag == cached.ETag && info.Length == cached.Length {
				// The origin ignored the condition but its validator is unchanged.
				return cached, nil
			}
			s.log.Info("origin content changed; refetching", "task", req.TaskID, "url", req.URL)
			if err := store.DeleteTask(req.TaskID); err != nil && !errors.Is(err, blockstore.ErrNotFound) {
				return blockstore.Task{}, fmt.Errorf("drop stale copy of task %s: %w", req.TaskID, err)
			}
			s.cfg.OnReset(req.TaskID)
			return s.create(ctx, req, info)
		}
	} else if !errors.Is(err, blockstore.ErrNotFound) {
		return blockstore.Task{}, fmt.Errorf("look up task %s in the seed's store: %w", req.TaskID, err)
	}
	info, err := s.cfg.Source.Stat(ctx, req.URL, req.Header)
	if err != nil {
		return blockstore.Task{}, fmt.Errorf("seed task %s: stat origin %s: %w", req.TaskID, req.URL, err)
	}
	return s.create(ctx, req, info)
}

func sameDigest(a, b string) bool {
	aa, ah, err1 := blockstore.ParseDigest(a)
	ba, bh, err2 := blockstore.ParseDigest(b)
	return err1 == nil && err2 == nil && aa == ba && ah == bh
}

func (s *Seed) create(ctx context.Context, req SeedRequest, info source.Info) (blockstore.Task, error) {
	if info.Length < 0 {
		return blockstore.Task{}, fmt.Errorf("seed task %s: origin %s declares no Content-Length, so the content cannot be cut into blocks; peers fetch it from the origin", req.TaskID, req.URL)
	}
	digest := req.Digest
	if digest == "" {
		digest = info.Digest
	}
	t, err := s.cfg.Store.CreateTask(ctx, blockstore.Task{
		ID: req.TaskID, Source: req.URL, Length: info.Length, Digest: digest,
		ETag: info.ETag, LastModified: info.LastModified,
	})
	if err != nil {
		return blockstore.Task{}, fmt.Errorf("seed task %s: create it in the store: %w", req.TaskID, err)
	}
	return t, nil
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
// requests; if the origin ignores Range it falls back to one stream.
func (s *Seed) fetchAll(ctx context.Context, st *seedTask) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var rangeIgnored atomic.Bool
	st.mu.Lock()
	meta := st.meta
	st.mu.Unlock()
	id, url := meta.ID, st.req.URL
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
				data, err := s.cfg.Source.ReadRange(ctx, url, st.req.Header, off, n)
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
		return s.streamAll(s.ctx, st, meta)
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

func (s *Seed) putBlock(ctx context.Context, st *seedTask, id string, b int, data []byte) error {
	if err := s.cfg.Store.PutBlock(ctx, id, b, data); err != nil {
		return fmt.Errorf("seed task %s: store block %d: %w", id, b, err)
	}
	st.stored(int64(len(data)))
	s.cfg.OnBlock(id, b)
	return nil
}

// streamAll reads the whole body once and stores the blocks still missing.
func (s *Seed) streamAll(ctx context.Context, st *seedTask, meta blockstore.Task) error {
	id, url := meta.ID, st.req.URL
	s.log.Info("origin ignores Range; seeding from one stream", "task", id, "url", url)
	body, _, err := s.cfg.Source.Stream(ctx, url, st.req.Header, 0)
	if err != nil {
		return fmt.Errorf("seed task %s: stream %s: %w", id, url, err)
	}
	defer body.Close()
	buf := make([]byte, meta.BlockSize)
	for b := range meta.NumBlocks() {
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
