package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode"
)

// Config is one simulated experiment: N peers download one file at once
// from a seed that fetches it from the origin.
type Config struct {
	N         int
	Size      int64 // bytes
	BlockSize int64 // 0: blockstore.BlockSizeFor(Size), as the real task
	// Rates in bit/s. Peers and the seed host have symmetric links; the
	// origin's upload is OriginBps. SeedBps 0: OriginBps (as netbench).
	PeerBps, OriginBps, SeedBps int64
	// Concurrency is each peer's parallel block fetches (peer.Config.Concurrency, default 8).
	Concurrency int
	// SeedConcurrency is the seed's parallel origin Range requests (supernode.SeedConfig.Concurrency, default 6).
	SeedConcurrency int
	// Latency is added before every transfer's first byte (request round
	// trip; default 1ms).
	Latency time.Duration
	// SyncInterval is how often a peer asks again for blocks that got no
	// parent (peer/swarm.go syncInterval, default 50ms); Coalesce how long a
	// new want waits for others before its Sync (coalesceDelay, default 5ms).
	SyncInterval, Coalesce time.Duration
	// PeerMaxUploads and SeedMaxUploads cap concurrent uploads of a peer's
	// and the seed's upload server (defaults 16 and 64, as
	// peer.UploadConfig and supernode.UploadConfig); one more request is
	// refused (429) and the requester tries its next parent.
	PeerMaxUploads, SeedMaxUploads int
	// Heartbeat is the announce interval (default the scheduler's, 2s).
	Heartbeat time.Duration
	// Start spreads the peers' start uniformly over [0, Start) (default 0:
	// all at once).
	Start time.Duration
	// Seed seeds every random choice (peers' orders, heartbeat phases).
	Seed uint64
	// Scheduler configures the real scheduler; its Now is replaced by the
	// virtual clock.
	Scheduler supernode.SchedulerConfig
	// Probe, when set, is called every second of virtual time with the
	// swarm's state (for diagnosis).
	Probe func(Sample)
	// MaxVirtual aborts a run that has not completed after this much
	// virtual time (default 100 × the bound + 60s).
	MaxVirtual time.Duration
}

func (c *Config) defaults() error {
	if c.N <= 0 || c.Size <= 0 || c.PeerBps <= 0 || c.OriginBps <= 0 {
		return fmt.Errorf("sim config: N %d, size %d, peer rate %d, origin rate %d must be positive", c.N, c.Size, c.PeerBps, c.OriginBps)
	}
	if c.BlockSize <= 0 {
		c.BlockSize = blockstore.BlockSizeFor(c.Size)
	}
	if n := blockstore.NumBlocks(c.Size, c.BlockSize); n > blockstore.MaxBlocks {
		return fmt.Errorf("sim config: %d blocks of %d bytes exceed the task limit %d; use a bigger block size", n, c.BlockSize, blockstore.MaxBlocks)
	}
	if c.SeedBps <= 0 {
		c.SeedBps = c.OriginBps
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.SeedConcurrency <= 0 {
		c.SeedConcurrency = 6
	}
	if c.Latency <= 0 {
		c.Latency = time.Millisecond
	}
	if c.SyncInterval <= 0 {
		c.SyncInterval = 50 * time.Millisecond
	}
	if c.Coalesce <= 0 {
		c.Coalesce = 5 * time.Millisecond
	}
	if c.PeerMaxUploads <= 0 {
		c.PeerMaxUploads = 16
	}
	if c.SeedMaxUploads <= 0 {
		c.SeedMaxUploads = 64
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = c.Scheduler.HeartbeatInterval
		if c.Heartbeat <= 0 {
			c.Heartbeat = 2 * time.Second
		}
	}
	if c.MaxVirtual <= 0 {
		c.MaxVirtual = 100*Bound(c.Size, c.N, c.SeedBps, c.PeerBps) + time.Minute
	}
	return nil
}

// Sample is the swarm's state at one moment.
type Sample struct {
	T                 float64 // virtual seconds
	Flows             int     // transfers in progress (peers' downloads)
	Waiting, Fetching int     // peers' workers waiting for a parent, fetching
	Done              int     // peers complete
	SeedBlocks        int     // blocks the seed holds
	SeedUploads       int
	MaxUploads        int     // most uploads of one peer
	IdleUploaders     int     // peers uploading nothing
	Rate              float64 // sum of the flows' rates, bytes/s
}

// Result is what one run measured.
type Result struct {
	N         int   `json:"n"`
	Size      int64 `json:"size"`
	BlockSize int64 `json:"block_size"`
	Blocks    int   `json:"blocks"`
	PeerBps   int64 `json:"peer_bps"`
	OriginBps int64 `json:"origin_bps"`
	SeedBps   int64 `json:"seed_bps"`
	// Completion times, seconds of virtual time since the peer started.
	Completions []float64 `json:"-"`
	P50         float64   `json:"p50_s"`
	P99         float64   `json:"p99_s"`
	Max         float64   `json:"max_s"`
	Bound       float64   `json:"bound_s"`
	// Origin and seed egress in copies of the file.
	OriginCopies float64 `json:"origin_copies"`
	SeedCopies   float64 `json:"seed_copies"`
	// Scheduler use: Assign calls, assignments with the seed or a peer as
	// first parent, blocks withheld for a closer copy.
	AssignCalls     int    `json:"assign_calls"`
	SeedAssignments int    `json:"seed_assignments"`
	PeerAssignments int    `json:"peer_assignments"`
	Withheld        uint64 `json:"withheld"`
	Transfers       int    `json:"transfers"`
	Refused         int    `json:"refused"` // requests a busy parent refused (429)
	// Complete: every peer holds every block.
	Complete     bool    `json:"complete"`
	Events       uint64  `json:"events"`
	WallSeconds  float64 `json:"wall_s"`
	EventsPerSec float64 `json:"events_per_s"`
}

// Ratio returns p50, p99 and max over the bound.
func (r Result) Ratio() (p50, p99, mx float64) {
	if r.Bound <= 0 {
		return 0, 0, 0
	}
	return r.P50 / r.Bound, r.P99 / r.Bound, r.Max / r.Bound
}

// Bound is the physical lower bound of the time for n hosts of symmetric
// rate peerBps to each get size bytes when the only other upload is the
// seed's, sourceBps (bit/s): every host must receive size at peerBps, the
// source must send it once, and the n·size bytes received must be uploaded
// by the source and the peers together:
// max(S/Bs, S/Bp, N·S/(Bs+N·Bp)). It is netbench.Bound without the
// framing factor (the model has no protocol overhead).
func Bound(size int64, n int, sourceBps, peerBps int64) time.Duration {
	if n <= 0 || sourceBps <= 0 || peerBps <= 0 {
		return 0
	}
	bits := float64(size) * 8
	bs, bp := float64(sourceBps), float64(peerBps)
	t := max(bits/bs, bits/bp, float64(n)*bits/(bs+float64(n)*bp))
	return time.Duration(t * float64(time.Second))
}

// Percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of xs.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(float64(len(s))*p/100 + 0.9999999)
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

const (
	taskID    = "sim-task"
	seedID    = "seed"
	tailFrac  = 4  // the last quarter of a download goes in file order (peer/engine_download.go)
	reorderAt = 64 // the swarm order is re-asked every 64 blocks
	maxWant   = 64 // wants per Sync (protocol bound)
)

// world is one run's state.
type world struct {
	cfg   Config
	q     *events
	net   *Net
	sched *supernode.Scheduler
	base  time.Time
	info  supernode.TaskInfo
	n     int

	origin *Host
	seed   *seedModel
	peers  []*peerModel
	byID   map[string]*Host
	left   int // peers not complete

	res Result
}

func (w *world) clock() time.Time {
	return w.base.Add(time.Duration(w.q.now * float64(time.Second)))
}

func sec(d time.Duration) float64 { return d.Seconds() }

// Run simulates one experiment. It returns an error when the swarm does not
// complete within cfg.MaxVirtual or ctx ends.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	began := time.Now()
	q := &events{}
	w := &world{cfg: cfg, q: q, net: newNet(q), base: time.Unix(1_000_000_000, 0).UTC(), byID: map[string]*Host{}}
	sc := cfg.Scheduler
	sc.Now = w.clock
	w.sched = supernode.NewScheduler(sc)
	w.info = supernode.TaskInfo{ID: taskID, URL: "http://origin/file", Length: cfg.Size, BlockSize: cfg.BlockSize}
	w.n = w.info.NumBlocks()
	if err := w.sched.EnsureTask(w.info); err != nil {
		return Result{}, fmt.Errorf("simulate: register the task: %w", err)
	}
	w.res = Result{N: cfg.N, Size: cfg.Size, BlockSize: cfg.BlockSize, Blocks: w.n, PeerBps: cfg.PeerBps,
		OriginBps: cfg.OriginBps, SeedBps: cfg.SeedBps, Bound: sec(Bound(cfg.Size, cfg.N, cfg.SeedBps, cfg.PeerBps))}

	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	w.origin = w.net.NewHost(float64(cfg.OriginBps)/8, 0)
	seedRate := float64(cfg.SeedBps) / 8
	w.seed = &seedModel{w: w, h: w.net.NewHost(seedRate, seedRate), have: make([]bool, w.n), claimed: make([]bool, w.n)}
	w.byID[seedID] = w.seed.h
	w.sched.UpsertHost(supernode.HostInfo{ID: seedID, UploadAddr: "seed:8002", Capacity: int64(seedRate), IsSeed: true}, 0)
	w.seed.start()

	peerRate := float64(cfg.PeerBps) / 8
	w.left = cfg.N
	for i := range cfg.N {
		p := &peerModel{w: w, id: "p" + strconv.Itoa(i), h: w.net.NewHost(peerRate, peerRate),
			have: make([]bool, w.n), holders: map[int]int{},
			rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1))}
		p.info = supernode.HostInfo{ID: p.id, UploadAddr: p.id + ":65001", Capacity: int64(peerRate)}
		w.byID[p.id] = p.h
		w.peers = append(w.peers, p)
		at := 0.0
		if cfg.Start > 0 {
			at = rng.Float64() * sec(cfg.Start)
		}
		phase := rng.Float64() * sec(cfg.Heartbeat)
		q.at(at, p.join)
		q.at(at+phase, p.heartbeat)
	}
	q.at(0, w.seed.heartbeat)
	if cfg.Probe != nil {
		q.at(0, w.probe)
	}

	limit := sec(cfg.MaxVirtual)
	for w.left > 0 {
		if q.fired&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return w.res, fmt.Errorf("simulate N=%d: %w", cfg.N, err)
			}
		}
		if !q.step() {
			return w.res, fmt.Errorf("simulate N=%d: no events left with %d peers incomplete (a model or scheduler stall)", cfg.N, w.left)
		}
		if q.now > limit {
			return w.res, fmt.Errorf("simulate N=%d: %d peers incomplete after %v of virtual time: %w", cfg.N, w.left, cfg.MaxVirtual, errStalled)
		}
	}
	w.finish(began)
	return w.res, nil
}

func (w *world) probe() {
	if w.left == 0 {
		return
	}
	s := Sample{T: w.q.now, Done: w.cfg.N - w.left, SeedUploads: w.seed.h.Uploads()}
	for _, p := range w.peers {
		s.Flows += p.h.Downloads()
		s.Waiting += len(p.waiting)
		s.Fetching += p.fetching
		s.MaxUploads = max(s.MaxUploads, p.h.Uploads())
		if p.h.Uploads() == 0 {
			s.IdleUploaders++
		}
		for _, f := range p.h.downs {
			s.Rate += f.rate
		}
	}
	for _, h := range w.seed.have {
		if h {
			s.SeedBlocks++
		}
	}
	w.cfg.Probe(s)
	w.q.after(1, w.probe)
}

var errStalled = errors.New("swarm did not complete")

func (w *world) finish(began time.Time) {
	r := &w.res
	r.Complete = true
	for _, p := range w.peers {
		r.Completions = append(r.Completions, p.doneAt-p.startAt)
		if p.count != w.n {
			r.Complete = false
		}
		for b := range w.n {
			if !p.have[b] {
				r.Complete = false
			}
		}
	}
	r.P50 = Percentile(r.Completions, 50)
	r.P99 = Percentile(r.Completions, 99)
	r.Max = Percentile(r.Completions, 100)
	r.OriginCopies = float64(w.origin.Sent) / float64(w.cfg.Size)
	r.SeedCopies = float64(w.seed.h.Sent) / float64(w.cfg.Size)
	r.Withheld = w.sched.Counts().Withheld
	r.Events = w.q.fired
	r.WallSeconds = time.Since(began).Seconds()
	if r.WallSeconds > 0 {
		r.EventsPerSec = float64(r.Events) / r.WallSeconds
	}
}

// seedModel is supernode/seed.go's fetch loop: SeedConcurrency parallel
// Range requests of one block each, wanted blocks first, then in order; a
// block is announced to the scheduler the moment it lands.
type seedModel struct {
	w       *world
	h       *Host
	have    []bool
	claimed []bool
	prio    []int
	cursor  int
}

func (s *seedModel) start() {
	for range s.w.cfg.SeedConcurrency {
		s.fetchNext()
	}
}

func (s *seedModel) next() (int, bool) {
	for len(s.prio) > 0 {
		b := s.prio[0]
		s.prio = s.prio[1:]
		if !s.claimed[b] {
			s.claimed[b] = true
			return b, true
		}
	}
	for s.cursor < s.w.n {
		b := s.cursor
		s.cursor++
		if !s.claimed[b] {
			s.claimed[b] = true
			return b, true
		}
	}
	return 0, false
}

func (s *seedModel) fetchNext() {
	b, ok := s.next()
	if !ok {
		return
	}
	w := s.w
	w.q.after(sec(w.cfg.Latency), func() {
		w.net.Start(w.origin, s.h, w.info.BlockLen(b), func(*Flow) {
			s.have[b] = true
			_ = w.sched.AddBlocks(taskID, seedID, []int{b})
			s.fetchNext()
		})
	})
}

// prioritize is Seed.Prioritize: wanted blocks not yet claimed jump the queue.
func (s *seedModel) prioritize(wants []int) {
	var front []int
	for _, b := range wants {
		if !s.claimed[b] && !slices.Contains(front, b) {
			front = append(front, b)
		}
	}
	if len(front) == 0 {
		return
	}
	rest := make([]int, 0, len(s.prio))
	for _, b := range s.prio {
		if !slices.Contains(front, b) && !s.claimed[b] {
			rest = append(rest, b)
		}
	}
	s.prio = append(front, rest...)
	if len(s.prio) > 4096 {
		s.prio = s.prio[:4096]
	}
}

func (s *seedModel) heartbeat() {
	w := s.w
	if w.left == 0 {
		return
	}
	w.sched.UpsertHost(supernode.HostInfo{ID: seedID, UploadAddr: "seed:8002", Capacity: int64(s.h.Up), IsSeed: true}, s.h.Uploads())
	w.q.after(sec(w.cfg.Heartbeat), s.heartbeat)
}

// peerModel is one dfdaemon downloading the file: Concurrency workers each
// take the next block of the feed (the swarm's rarest-first order, re-asked
// every 64 blocks, the last quarter in file order) and wait for a parent
// from a Sync; a block that lands is announced and its result reported at
// once.
type peerModel struct {
	w    *world
	id   string
	info supernode.HostInfo
	h    *Host
	rng  *rand.Rand

	have    []bool
	count   int
	holders map[int]int // holder counts from Sync answers (the swarm's cache)

	batch, rest []int // the feed: blocks handed out in order, then the rest to reorder
	started     bool
	waiting     []int // blocks workers wait for a parent for
	fetching    int
	syncAt      bool // a Sync is scheduled

	startAt, doneAt float64
}

func (p *peerModel) join() {
	w := p.w
	p.startAt = w.q.now
	w.sched.UpsertHost(p.info, 0)
	p.rest = make([]int, w.n)
	for b := range w.n {
		p.rest[b] = b
	}
	p.started = true
	for range w.cfg.Concurrency {
		p.takeNext()
	}
}

func (p *peerModel) heartbeat() {
	w := p.w
	if w.left == 0 {
		return
	}
	if p.started {
		w.sched.UpsertHost(p.info, p.h.Uploads())
	}
	w.q.after(sec(w.cfg.Heartbeat), p.heartbeat)
}

// nextBlock is the engine's feed.
func (p *peerModel) nextBlock() (int, bool) {
	if len(p.batch) == 0 && len(p.rest) > 0 {
		tail := p.w.n / tailFrac
		if len(p.rest) <= tail {
			slices.Sort(p.rest)
			p.batch, p.rest = p.rest, nil
		} else {
			order := rarestFirst(p.rest, p.holders, p.rng)
			k := min(reorderAt, len(order)-tail)
			p.batch, p.rest = order[:k], order[k:]
		}
	}
	if len(p.batch) == 0 {
		return 0, false
	}
	b := p.batch[0]
	p.batch = p.batch[1:]
	return b, true
}

// takeNext gives a free worker its next block.
func (p *peerModel) takeNext() {
	b, ok := p.nextBlock()
	if !ok {
		return
	}
	p.waiting = append(p.waiting, b)
	p.scheduleSync(sec(p.w.cfg.Coalesce))
}

func (p *peerModel) scheduleSync(d float64) {
	if p.syncAt {
		return
	}
	p.syncAt = true
	p.w.q.after(d, p.sync)
}

// sync is one Sync round: the waiting blocks as wants (the seed
// prioritises them), the real Assign, a transfer from each assignment's
// first parent.
func (p *peerModel) sync() {
	p.syncAt = false
	w := p.w
	if len(p.waiting) == 0 {
		return
	}
	wants := p.waiting
	if len(wants) > maxWant {
		wants = wants[:maxWant]
	}
	w.seed.prioritize(wants)
	as, err := w.sched.Assign(taskID, p.id, wants, nil, len(wants))
	w.res.AssignCalls++
	if err != nil {
		// The scheduler forgot us (it must not: heartbeats keep us): re-announce.
		w.sched.UpsertHost(p.info, p.h.Uploads())
	}
	for _, a := range as {
		p.holders[a.Block] = a.Holders
		if len(a.Parents) == 0 {
			continue
		}
		i := slices.Index(p.waiting, a.Block)
		if i < 0 {
			continue
		}
		p.waiting = slices.Delete(p.waiting, i, i+1)
		if a.Parents[0].IsSeed {
			w.res.SeedAssignments++
		} else {
			w.res.PeerAssignments++
		}
		p.fetching++
		p.fetch(a.Block, a.Parents, w.q.now)
	}
	if len(p.waiting) > 0 {
		p.scheduleSync(sec(w.cfg.SyncInterval))
	}
}

// fetch is swarmTask.fetchFrom: the parents in order; one refusing (its
// upload server is full: 429) is reported failed and the next is tried;
// when all refused, the block waits 50ms and is wanted again.
func (p *peerModel) fetch(b int, parents []supernode.Parent, asked float64) {
	w := p.w
	parent := parents[0]
	src := w.byID[parent.HostID]
	w.q.after(sec(w.cfg.Latency), func() {
		limit := w.cfg.PeerMaxUploads
		if parent.IsSeed {
			limit = w.cfg.SeedMaxUploads
		}
		if src.Uploads() >= limit {
			w.res.Refused++
			w.sched.Report(taskID, p.id, []supernode.Result{{Block: b, ParentID: parent.HostID,
				Duration: time.Duration((w.q.now - asked) * float64(time.Second))}})
			if len(parents) > 1 {
				p.fetch(b, parents[1:], w.q.now)
				return
			}
			w.q.after(0.05, func() {
				p.fetching--
				p.waiting = append(p.waiting, b)
				p.scheduleSync(0)
			})
			return
		}
		w.net.Start(src, p.h, w.info.BlockLen(b), func(f *Flow) {
			w.res.Transfers++
			p.fetching--
			p.have[b] = true
			p.count++
			_ = w.sched.AddBlocks(taskID, p.id, []int{b})
			w.sched.Report(taskID, p.id, []supernode.Result{{Block: b, ParentID: parent.HostID, OK: true,
				Bytes: f.Bytes, Duration: time.Duration((w.q.now - asked) * float64(time.Second))}})
			if p.count == w.n {
				p.doneAt = w.q.now
				w.left--
				return
			}
			p.takeNext()
		})
	})
}

// rarestFirst mirrors peer/swarm.go's order: blocks with a known holder
// count by ascending count (ties random), then the others shuffled.
func rarestFirst(missing []int, holders map[int]int, rng *rand.Rand) []int {
	held := make([]int, 0, len(missing))
	var unheld []int
	for _, b := range missing {
		if holders[b] > 0 {
			held = append(held, b)
		} else {
			unheld = append(unheld, b)
		}
	}
	rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
	slices.SortStableFunc(held, func(a, b int) int { return holders[a] - holders[b] })
	slices.Sort(unheld)
	rng.Shuffle(len(unheld), func(i, j int) { unheld[i], unheld[j] = unheld[j], unheld[i] })
	return append(held, unheld...)
}
