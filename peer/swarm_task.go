package peer

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// The per-task half of the swarm client: registration and tokens, the
// Sync loop that batches wants, haves and results, and the cache of the
// supernode's assignments.

// assignment is a cached answer of the supernode for one block.
type assignment struct {
	parents []*api.Parent
	at      time.Time
}

// round is one Sync round trip that waiters can wait for.
type round struct {
	done chan struct{}
	err  error
}

func newRound() *round { return &round{done: make(chan struct{})} }

// swarmTask is the swarm state of one task.
type swarmTask struct {
	s      *SupernodeSwarm
	id     string
	req    Request
	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{}

	regMu sync.Mutex // serialises RegisterTask

	mu                        sync.Mutex
	registered                bool
	meta                      blockstore.Task
	token                     string
	taskKey                   []byte // of an end-to-end encrypted task (memory only)
	tokenIssued, tokenExpires time.Time
	next                      *round         // the next background Sync round
	nextFg                    *round         // the next foreground Sync round
	sent                      map[int]*round // awaited blocks a Sync in flight carries
	bgRounds                  int            // background Syncs in flight
	rounds                    sync.WaitGroup // Syncs in flight (the loop waits for them)
	awaited                   map[int]int    // block → number of FetchBlock calls waiting for parents
	awaitOrder                []int          // awaited blocks in arrival order
	fgAwait                   map[int]int    // block → foreground callers among them
	assign                    map[int]assignment
	holders                   map[int]int
	pending                   map[int]bool // wanted blocks the seed had not fetched yet at the last answer
	have                      []int32
	results                   []*api.BlockResult
	excluded                  map[string]bool // parents that served a bad block (this task)
	fails                     map[string]int  // consecutive failures per parent
	typical                   time.Duration   // moving average of successful block fetches
	seedError                 string
	rng                       *mrand.Rand
	loopDone                  chan struct{}
	trace                     swarmTrace // the trace its Sync rounds carry (trace.go)
}

func (st *swarmTask) markUnregistered() {
	st.mu.Lock()
	st.registered = false
	st.mu.Unlock()
	st.poke()
}

func (st *swarmTask) poke() {
	select {
	case st.kick <- struct{}{}:
	default:
	}
}

// register calls RegisterTask and records the metadata and token.
func (st *swarmTask) register(ctx context.Context) (blockstore.Task, error) {
	st.regMu.Lock()
	defer st.regMu.Unlock()
	s := st.s
	req := &api.RegisterTaskRequest{HostId: s.cfg.HostID, TaskId: st.id, Url: st.req.URL, Tag: st.req.Tag, Digest: st.req.Digest, E2E: st.req.E2E}
	for name, vs := range st.req.Header {
		for _, v := range vs {
			req.Headers = append(req.Headers, &api.Header{Name: name, Value: v})
		}
	}
	if bm, err := s.store.Bitmap(st.id); err == nil && s.cfg.UploadAddr != "" {
		req.Bitmap = bm
		if local, err := s.store.Task(st.id); err == nil {
			req.Etag = local.ETag
		}
	}
	var resp *api.RegisterTaskResponse
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 3*s.cfg.RPCTimeout) // the seed may HEAD the origin first
		resp, err = s.client.RegisterTask(rctx, req)
		cancel()
		if code := status.Code(err); attempt == 0 && (code == codes.NotFound || code == codes.FailedPrecondition) {
			// The supernode does not know this host (it restarted): announce and retry.
			if _, aerr := s.announce(ctx); aerr != nil {
				break
			}
			continue
		}
		break
	}
	if err != nil {
		s.markDown(err)
		return blockstore.Task{}, fmt.Errorf("register task %s with supernode %s: %v: %w", st.id, s.cfg.Supernode, err, ErrSwarmUnavailable)
	}
	m := resp.GetMeta()
	if m.GetSeedError() != "" {
		st.mu.Lock()
		st.seedError = m.GetSeedError()
		st.mu.Unlock()
		return blockstore.Task{}, fmt.Errorf("task %s: the supernode's seed failed: %s: %w", st.id, m.GetSeedError(), ErrSwarmUnavailable)
	}
	meta := blockstore.Task{
		ID: st.id, Source: m.GetUrl(), Length: m.GetLength(), BlockSize: m.GetBlockSize(),
		Digest: m.GetDigest(), ETag: m.GetEtag(), LastModified: m.GetLastModified(),
	}
	if st.req.E2E != m.GetE2E() || st.req.E2E && len(resp.GetTaskKey()) != blockstore.E2EKeySize {
		return blockstore.Task{}, fmt.Errorf("task %s: asked for end-to-end encryption %v, the supernode answers %v with a %d-byte key (an older supernode?): %w",
			st.id, st.req.E2E, m.GetE2E(), len(resp.GetTaskKey()), ErrSwarmUnavailable)
	}
	meta.E2E = m.GetE2E()
	if meta.Source == "" {
		meta.Source = st.req.URL
	}
	if local, err := s.store.Task(st.id); err == nil && (local.Length != meta.Length || local.BlockSize != meta.BlockSize) {
		return blockstore.Task{}, fmt.Errorf("task %s: the supernode says %d bytes in blocks of %d, the local store has %d/%d: %w",
			st.id, meta.Length, meta.BlockSize, local.Length, local.BlockSize, ErrSwarmUnavailable)
	}
	st.mu.Lock()
	st.registered, st.meta, st.token, st.seedError = true, meta, resp.GetToken(), ""
	st.taskKey = resp.GetTaskKey()
	st.tokenIssued, st.tokenExpires = time.Now(), time.Unix(resp.GetTokenExpiresUnix(), 0)
	st.mu.Unlock()
	return meta, nil
}

func (st *swarmTask) ensureRegistered(ctx context.Context) error {
	st.mu.Lock()
	ok := st.registered
	st.mu.Unlock()
	if ok {
		return nil
	}
	_, err := st.register(ctx)
	return err
}

// tokenFor returns the token to present to parents: the one the supernode
// issued to this host. Past three quarters of its life the task registers
// again (in the background, through the Sync loop) for a fresh one.
func (st *swarmTask) tokenFor() string {
	st.mu.Lock()
	tok, refresh := st.token, st.registered && tokenDue(st.tokenIssued, st.tokenExpires, time.Now())
	st.mu.Unlock()
	if refresh {
		st.markUnregistered()
	}
	return tok
}

// tokenDue reports whether a token issued at issued and expiring at expires
// should be renewed at now (past three quarters of its life).
func tokenDue(issued, expires, now time.Time) bool {
	if expires.IsZero() || !expires.After(issued) {
		return false
	}
	return now.After(issued.Add(expires.Sub(issued) * 3 / 4))
}

func (st *swarmTask) stored(idx int) {
	st.mu.Lock()
	st.have = append(st.have, int32(idx))
	n := len(st.have)
	st.mu.Unlock()
	if n >= 32 {
		st.poke()
	}
}

func (st *swarmTask) report(r *api.BlockResult, urgent bool) {
	st.mu.Lock()
	st.results = append(st.results, r)
	st.mu.Unlock()
	if urgent {
		st.poke()
	}
}

// finish flushes pending haves/results with a final Sync and stops the loop.
func (st *swarmTask) finish(complete bool) {
	st.cancel()
	<-st.loopDone
	st.mu.Lock()
	req := &api.SyncRequest{HostId: st.s.cfg.HostID, TaskId: st.id, Have: st.have, Results: st.results, Done: complete}
	st.have, st.results = nil, nil
	registered := st.registered
	st.mu.Unlock()
	if !registered || st.s.isDown() {
		return
	}
	ctx, cancel := st.s.rpcCtx(context.Background())
	defer cancel()
	if _, err := st.s.client.Sync(ctx, req); err != nil {
		st.s.log.Debug("final sync", "task", st.id, "err", err)
	}
}

// loop starts Sync rounds: at once when kicked (a waiter, an urgent result,
// many haves), else every syncInterval while something is pending. Rounds
// run concurrently (see startRoundsLocked): a Sync the supernode holds while
// its seed fetches a wanted block never delays the wants that came after it.
func (st *swarmTask) loop() {
	defer close(st.loopDone)
	defer st.rounds.Wait()
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		select {
		case <-st.ctx.Done():
			st.mu.Lock()
			rs := []*round{st.next, st.nextFg}
			st.next, st.nextFg = newRound(), newRound()
			st.mu.Unlock()
			for _, r := range rs {
				r.err = fmt.Errorf("task %s left the swarm: %w", st.id, context.Canceled)
				close(r.done)
			}
			return
		case <-st.kick:
			// Background wants wait a moment for the wants of the other
			// workers, so that they share the round trip; a waiting reader
			// (foreground) does not.
			st.mu.Lock()
			fg := st.fgUnsentLocked()
			if fg {
				st.startRoundsLocked(true)
			}
			st.mu.Unlock()
			if !fg {
				select {
				case <-time.After(coalesceDelay):
				case <-st.ctx.Done():
				}
			}
		case <-t.C:
		}
		st.mu.Lock()
		st.startRoundsLocked(false)
		st.mu.Unlock()
	}
}

// fgUnsentLocked reports whether a foreground caller waits for a block no
// Sync in flight carries.
func (st *swarmTask) fgUnsentLocked() bool {
	for b, n := range st.fgAwait {
		if n > 0 && st.sent[b] == nil {
			return true
		}
	}
	return false
}

// startRoundsLocked starts the Syncs that are due: one for the foreground
// wants no Sync in flight carries (never held back: a reader waits), and,
// unless fgOnly, one for the other pending wants, haves and results when
// fewer than maxRounds background Syncs are in flight.
func (st *swarmTask) startRoundsLocked(fgOnly bool) {
	if st.ctx.Err() != nil {
		return
	}
	if st.fgUnsentLocked() {
		r := st.nextFg
		st.nextFg = newRound()
		st.launchLocked(r, st.wantsLocked(true, r), true)
	}
	if fgOnly || st.bgRounds >= maxRounds || len(st.fgAwait) > 0 {
		// While a reader waits for parents, background wants stay home:
		// each one the supernode sees moves its block up the seed's
		// fetch queue, ahead of the reader's.
		return
	}
	want := st.wantsLocked(false, nil)
	if len(want) == 0 && len(st.have) == 0 && len(st.results) == 0 && st.registered {
		return
	}
	r := st.next
	st.next = newRound()
	for _, b := range want {
		st.sent[int(b)] = r
	}
	st.launchLocked(r, want, false)
}

// launchLocked runs one Sync round in its own goroutine (owned by the loop,
// which waits for it) and wakes r's waiters when it is answered.
func (st *swarmTask) launchLocked(r *round, want []int32, fg bool) {
	if !fg {
		st.bgRounds++
	}
	have, results := st.have, st.results
	st.have, st.results = nil, nil
	st.rounds.Add(1)
	go func() {
		defer st.rounds.Done()
		r.err = st.syncRound(want, have, results)
		st.mu.Lock()
		for _, b := range want {
			if st.sent[int(b)] == r {
				delete(st.sent, int(b))
			}
		}
		if !fg {
			st.bgRounds--
		}
		st.mu.Unlock()
		close(r.done)
	}()
}

// syncRound sends one Sync and records its answer. What it could not
// deliver (haves, results) is kept for the next round.
func (st *swarmTask) syncRound(want, have []int32, results []*api.BlockResult) error {
	s := st.s
	keep := func() {
		st.mu.Lock()
		st.have = append(have, st.have...)
		st.results = append(results, st.results...)
		st.mu.Unlock()
	}
	if s.isDown() {
		keep()
		return fmt.Errorf("supernode %s is unreachable: %w", s.cfg.Supernode, ErrSwarmUnavailable)
	}
	st.mu.Lock()
	registered := st.registered
	st.mu.Unlock()
	if !registered {
		if _, err := st.register(st.ctx); err != nil {
			keep()
			return err
		}
	}
	meta, err := s.store.Task(st.id)
	if err != nil {
		keep()
		return fmt.Errorf("task %s: %w", st.id, err)
	}
	req := &api.SyncRequest{HostId: s.cfg.HostID, TaskId: st.id, Have: have, Results: results, Want: want}
	resp, err := st.syncRPC(st.trace.round(st.ctx), req)
	if err != nil {
		keep()
		if s.forgotten(err) {
			st.markUnregistered()
		}
		return fmt.Errorf("sync task %s with supernode %s: %v: %w", st.id, s.cfg.Supernode, err, ErrSwarmUnavailable)
	}
	st.absorb(meta, want, resp)
	return nil
}

func (st *swarmTask) syncRPC(ctx context.Context, req *api.SyncRequest) (*api.SyncResponse, error) {
	rctx, cancel := st.s.rpcCtx(ctx)
	defer cancel()
	st.s.syncs.Add(1)
	resp, err := st.s.client.Sync(rctx, req)
	if err != nil {
		st.s.markDown(err)
	} else {
		st.s.markUp()
	}
	return resp, err
}

// wantsLocked lists up to maxWant awaited blocks that no Sync in flight
// carries, in arrival order: with fg the blocks a foreground caller waits
// for (marked as sent in r), else the others (the caller marks them). Only
// blocks a caller is about to fetch are wanted: the supernode charges each
// assignment to the parent's upload slots until its result is reported.
func (st *swarmTask) wantsLocked(fg bool, r *round) []int32 {
	want := make([]int32, 0, min(len(st.awaitOrder), maxWant))
	seen := map[int]bool{}
	kept := st.awaitOrder[:0]
	for _, b := range st.awaitOrder {
		if st.awaited[b] <= 0 || seen[b] {
			continue
		}
		seen[b] = true
		kept = append(kept, b)
		if len(want) < maxWant && st.sent[b] == nil && (st.fgAwait[b] > 0) == fg {
			want = append(want, int32(b))
			if r != nil {
				st.sent[b] = r
			}
		}
	}
	st.awaitOrder = kept
	return want
}

// absorb records digests (in the store) and assignments from a Sync answer.
func (st *swarmTask) absorb(meta blockstore.Task, want []int32, resp *api.SyncResponse) {
	for _, d := range resp.GetDigests() {
		if err := st.s.store.SetBlockDigest(st.id, int(d.GetBlock()), d.GetSha256()); err != nil {
			st.s.log.Warn("supernode sent an unusable block digest", "task", st.id, "block", d.GetBlock(), "err", err)
		}
	}
	now := time.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, a := range resp.GetAssignments() {
		b := int(a.GetBlock())
		st.holders[b] = int(a.GetHolders())
		if len(a.GetParents()) > 0 {
			st.assign[b] = assignment{parents: a.GetParents(), at: now}
		}
	}
	st.seedError = resp.GetSeedError()
	for _, b := range want {
		delete(st.pending, int(b))
	}
	for _, b := range resp.GetPending() {
		st.pending[int(b)] = true
	}
	// Forget stale assignments so the map stays small.
	if len(st.assign) > 4*maxWant {
		for b, a := range st.assign {
			if now.Sub(a.at) > assignTTL {
				delete(st.assign, b)
			}
		}
	}
}

// parents returns the usable parents the last round assigned for block idx
// (consuming the assignment), best first.
func (st *swarmTask) parents(idx int) []*api.Parent {
	st.mu.Lock()
	defer st.mu.Unlock()
	a, ok := st.assign[idx]
	if !ok || time.Since(a.at) > assignTTL {
		return nil
	}
	delete(st.assign, idx) // an assignment is used once
	var ps []*api.Parent
	for _, p := range a.parents {
		// Three failures in a row skip a peer for the task, but never the
		// seed: its failures mean the supernode went away (transfers cut by
		// a restart), and the supernode assigns it only once it is back —
		// skipping it then left blocks only it held waiting BlockTimeout.
		failed := st.fails[p.GetHostId()] >= 3 && !p.GetIsSeed()
		if !st.excluded[p.GetHostId()] && !failed && p.GetHostId() != st.s.cfg.HostID && p.GetUploadAddr() != "" {
			ps = append(ps, p)
		}
	}
	return ps
}

// await registers a caller waiting for block idx's parents and returns the
// round whose answer will include it: the Sync in flight that carries it,
// else the next foreground or background round.
func (st *swarmTask) await(idx int, prio Priority) *round {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.awaited[idx] == 0 {
		st.awaitOrder = append(st.awaitOrder, idx)
	}
	st.awaited[idx]++
	if prio == Foreground {
		st.fgAwait[idx]++
	}
	if r := st.sent[idx]; r != nil {
		return r
	}
	if st.fgAwait[idx] > 0 {
		return st.nextFg
	}
	return st.next
}

// waitParents waits for a Sync round that includes idx in its wants and
// returns the parents it got (nil when nobody holds the block yet).
func (st *swarmTask) waitParents(ctx context.Context, idx int, urgent bool) ([]*api.Parent, error) {
	prio := priorityOf(ctx)
	r := st.await(idx, prio)
	defer func() {
		st.mu.Lock()
		if st.awaited[idx]--; st.awaited[idx] <= 0 {
			delete(st.awaited, idx)
		}
		if prio == Foreground {
			if st.fgAwait[idx]--; st.fgAwait[idx] <= 0 {
				delete(st.fgAwait, idx)
			}
		}
		st.mu.Unlock()
	}()
	if urgent || prio == Foreground {
		st.poke()
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.done:
	}
	if r.err != nil {
		return nil, r.err
	}
	st.mu.Lock()
	serr := st.seedError
	st.mu.Unlock()
	if serr != "" {
		return nil, fmt.Errorf("task %s: the supernode's seed failed: %s: %w", st.id, serr, ErrSwarmUnavailable)
	}
	return st.parents(idx), nil
}
