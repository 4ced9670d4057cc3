package supernode

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
)

// ErrUnknownTask is returned for a task the scheduler has not seen.
var ErrUnknownTask = errors.New("task not registered")

// ErrUnknownHost is returned for a host that has not announced itself.
var ErrUnknownHost = errors.New("host not announced")

// SchedulerConfig tunes the scheduler. Zero values take the defaults below.
type SchedulerConfig struct {
	// HeartbeatInterval is how often hosts announce (default 2s). A host
	// that misses MissedHeartbeats (default 3) in a row expires.
	HeartbeatInterval time.Duration
	MissedHeartbeats  int
	// MaxParents is the length of a ranked parent list (default 4).
	MaxParents int
	// MaxAssignPerParent bounds the uploads in flight plus recent
	// assignments of a peer before it counts as saturated (default 6).
	MaxAssignPerParent int
	// SeedMaxAssign is the same bound for the seed (default 16).
	SeedMaxAssign int
	// AssignTTL is how long an assignment counts as load when no result for
	// it is reported (default 10s).
	AssignTTL time.Duration
	// DedupTTL: while a peer is fetching a block (assigned less than this
	// ago, no result or "have" yet), a requester whose best parent for it is
	// remote — the seed, or a host in another idc when the fetching peer is
	// in the requester's idc — waits and gets it from that peer afterwards,
	// so the seed uploads each block about once and each block crosses into
	// an idc about once (default 3s).
	DedupTTL time.Duration
	// MaxCrossIDCTransfers bounds the block transfers in flight per task
	// from parents in another idc into one idc (default 16; negative:
	// unbounded). Fewer transfers sharing the inter-idc link each finish
	// sooner, and a finished block is then shared inside the idc.
	MaxCrossIDCTransfers int
	// DefaultCapacity is the upload capacity (bytes/s) assumed for hosts
	// that declare none (default 100 MiB/s).
	DefaultCapacity int64
	// SlowFactor: a peer whose throughput is below norm/SlowFactor is
	// deprioritised (default 4).
	SlowFactor float64
	// MinSamples is how many results a host needs before it can be judged
	// slow (default 3).
	MinSamples int
	// FailuresToDeprioritise consecutive failed fetches deprioritise a peer (default 3).
	FailuresToDeprioritise int
	// ScanLimit bounds the eligible holders examined per decision (default 64).
	ScanLimit int
	// TaskIdle: a task nobody but the seed holds and nobody asked about for
	// this long is forgotten by Expire (default 10m); it comes back on the
	// next RegisterTask.
	TaskIdle time.Duration
	// Now is the clock (default time.Now); tests replace it.
	Now func() time.Time
}

func (c *SchedulerConfig) defaults() {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 2 * time.Second
	}
	if c.MissedHeartbeats <= 0 {
		c.MissedHeartbeats = 3
	}
	if c.MaxParents <= 0 {
		c.MaxParents = 4
	}
	if c.MaxAssignPerParent <= 0 {
		c.MaxAssignPerParent = 6
	}
	if c.SeedMaxAssign <= 0 {
		c.SeedMaxAssign = 16
	}
	if c.AssignTTL <= 0 {
		c.AssignTTL = 10 * time.Second
	}
	if c.DedupTTL <= 0 {
		c.DedupTTL = 3 * time.Second
	}
	if c.MaxCrossIDCTransfers == 0 {
		c.MaxCrossIDCTransfers = 16
	}
	if c.DefaultCapacity <= 0 {
		c.DefaultCapacity = 100 << 20
	}
	if c.SlowFactor <= 1 {
		c.SlowFactor = 4
	}
	if c.MinSamples <= 0 {
		c.MinSamples = 3
	}
	if c.FailuresToDeprioritise <= 0 {
		c.FailuresToDeprioritise = 3
	}
	if c.ScanLimit <= 0 {
		c.ScanLimit = 64
	}
	if c.TaskIdle <= 0 {
		c.TaskIdle = 10 * time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// HostInfo is what a host says about itself.
type HostInfo struct {
	ID         string
	UploadAddr string // host:port of its upload server; empty: cannot be a parent
	IDC        string
	Rack       string
	Capacity   int64 // upload bytes/s; 0 = unknown
	IsSeed     bool
}

// TaskInfo is the shape of a task as far as scheduling goes.
type TaskInfo struct {
	ID        string `json:"id"`
	URL       string `json:"url,omitempty"`
	Length    int64  `json:"length"`
	BlockSize int64  `json:"block_size"`
}

// NumBlocks is the task's block count.
func (t TaskInfo) NumBlocks() int { return blockstore.NumBlocks(t.Length, t.BlockSize) }

// BlockLen is the length of block idx.
func (t TaskInfo) BlockLen(idx int) int64 { return blockstore.BlockLen(t.Length, t.BlockSize, idx) }

// Result is one fetch outcome reported by a requester about a parent.
type Result struct {
	Block     int
	ParentID  string
	OK        bool
	BadDigest bool
	Bytes     int64
	Duration  time.Duration
}

// Parent is one entry of a ranked parent list.
type Parent struct {
	HostID     string
	UploadAddr string
	IsSeed     bool
}

// Assignment is the answer for one wanted block.
type Assignment struct {
	Block   int
	Parents []Parent
	Holders int
}

type host struct {
	HostInfo
	lastSeen time.Time
	inFlight int         // uploads in flight, as last announced
	assigned []time.Time // recent assignments (oldest first)

	samples    int
	throughput float64 // EWMA bytes/s as a parent
	failRate   float64 // EWMA of failures as a parent
	consecFail int
	served     int64 // bytes served, as reported by requesters

	holdings map[string]*holding // by task id
}

type holding struct {
	host   *host
	bits   blockstore.Bitmap // blocks held
	listed blockstore.Bitmap // blocks whose holder list contains this holding
	count  int
	gone   bool
}

type task struct {
	TaskInfo
	n        int
	holdings map[string]*holding        // by host id
	lists    [][]*holding               // per block: holdings that (may) hold it
	stale    []int                      // per block: entries of lists known to be stale
	rot      []uint32                   // per block: rotating scan offset
	blocked  map[string]bool            // hosts blocked for this task
	excluded map[string]map[string]bool // requester → parents it reported for a bad block
	used     time.Time                  // last time a peer asked about or announced it
	inflight [][]flight                 // per block: recent assignments without a result yet
	crossIn  map[string][]time.Time     // per idc: starts of assignments from a parent in another idc, oldest first
}

// flight is an assignment of a block to a requester, until its result.
type flight struct {
	to    *host
	at    time.Time
	cross bool // from a parent in another idc
}

// maxFlights bounds the in-flight records kept per block.
const maxFlights = 8

// Scheduler keeps tasks, hosts and holdings, and decides parents. It does no
// I/O; all its methods are safe for concurrent use.
type Scheduler struct {
	cfg SchedulerConfig

	mu       sync.Mutex
	hosts    map[string]*host
	tasks    map[string]*task
	norm     float64
	normAt   time.Time
	normDirt bool
	// withheld counts the blocks Assign withheld for a closer copy on its
	// way (see DedupTTL), ever (read by Counts).
	withheld uint64
}

// NewScheduler returns an empty scheduler.
func NewScheduler(cfg SchedulerConfig) *Scheduler {
	cfg.defaults()
	return &Scheduler{cfg: cfg, hosts: map[string]*host{}, tasks: map[string]*task{}}
}

// Config returns the effective configuration.
func (s *Scheduler) Config() SchedulerConfig { return s.cfg }

// UpsertHost registers a host or refreshes it (a heartbeat). inFlight and
// uploadRate are its current upload load as it reports it.
func (s *Scheduler) UpsertHost(h HostInfo, inFlight int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	x, ok := s.hosts[h.ID]
	if !ok {
		x = &host{holdings: map[string]*holding{}}
		s.hosts[h.ID] = x
	}
	x.HostInfo = h
	x.lastSeen = now
	x.inFlight = max(inFlight, 0)
}

// Touch marks a host as alive; it reports false for an unknown host.
func (s *Scheduler) Touch(hostID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.hosts[hostID]
	if ok {
		h.lastSeen = s.cfg.Now()
	}
	return ok
}

// Host returns what is known of a host.
func (s *Scheduler) Host(hostID string) (HostInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.hosts[hostID]
	if !ok {
		return HostInfo{}, false
	}
	return h.HostInfo, true
}

// Hosts lists the known hosts (live: silent ones expire), seeds excluded,
// sorted by id.
func (s *Scheduler) Hosts() []HostInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]HostInfo, 0, len(s.hosts))
	for _, h := range s.hosts {
		if !h.IsSeed {
			out = append(out, h.HostInfo)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Held reports how many blocks of a task a host holds and the task's block
// count (0, 0 for an unknown task).
func (s *Scheduler) Held(taskID, hostID string) (held, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok {
		return 0, 0
	}
	if hd := t.holdings[hostID]; hd != nil && !hd.gone {
		held = hd.count
	}
	return held, t.n
}

// HasHost reports whether the host is known.
func (s *Scheduler) HasHost(hostID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.hosts[hostID]
	return ok
}

// EnsureTask registers a task (no-op when it exists with the same shape). A
// task whose length or block size changed is reset: every holding is dropped.
func (s *Scheduler) EnsureTask(t TaskInfo) error {
	n := t.NumBlocks()
	if t.ID == "" || t.Length < 0 || t.BlockSize <= 0 || n > blockstore.MaxBlocks {
		return fmt.Errorf("task %q: length %d, block size %d: %w", t.ID, t.Length, t.BlockSize, blockstore.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if x, ok := s.tasks[t.ID]; ok {
		if x.Length == t.Length && x.BlockSize == t.BlockSize {
			if t.URL != "" {
				x.URL = t.URL
			}
			return nil
		}
		s.dropTaskLocked(x)
	}
	s.tasks[t.ID] = &task{
		TaskInfo: t, n: n, holdings: map[string]*holding{},
		lists: make([][]*holding, n), stale: make([]int, n), rot: make([]uint32, n),
		blocked: map[string]bool{}, used: s.cfg.Now(), inflight: make([][]flight, n),
	}
	return nil
}

// Task returns a task's info.
func (s *Scheduler) Task(id string) (TaskInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return TaskInfo{}, false
	}
	return t.TaskInfo, true
}

// ResetTask drops every holding of the task except keep's (used when the
// seed found the content changed at the origin: old copies are stale).
func (s *Scheduler) ResetTask(id, keep string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return
	}
	for hid, hd := range t.holdings {
		if hid != keep {
			s.removeHoldingLocked(t, hd)
		}
	}
}

func (s *Scheduler) dropTaskLocked(t *task) {
	for _, hd := range t.holdings {
		s.removeHoldingLocked(t, hd)
	}
	delete(s.tasks, t.ID)
}

func (s *Scheduler) removeHoldingLocked(t *task, hd *holding) {
	hd.gone = true
	for b := range t.n {
		if hd.listed.Has(b) {
			t.stale[b]++
		}
	}
	delete(t.holdings, hd.host.ID)
	delete(hd.host.holdings, t.ID)
}

func (s *Scheduler) holdingLocked(t *task, h *host) *holding {
	hd, ok := t.holdings[h.ID]
	if !ok {
		hd = &holding{host: h, bits: blockstore.NewBitmap(t.n), listed: blockstore.NewBitmap(t.n)}
		t.holdings[h.ID] = hd
		h.holdings[t.ID] = hd
	}
	return hd
}

func (s *Scheduler) lookup(taskID, hostID string) (*task, *host, error) {
	t, ok := s.tasks[taskID]
	if !ok {
		return nil, nil, fmt.Errorf("task %s: %w", taskID, ErrUnknownTask)
	}
	h, ok := s.hosts[hostID]
	if !ok {
		return nil, nil, fmt.Errorf("host %s: %w", hostID, ErrUnknownHost)
	}
	return t, h, nil
}

// holderLocked returns the task, the host and its holding for an update of
// what the host holds; hd is nil (and err nil) when the host is blocked for
// the task, whose updates are ignored. A non-seed update marks the task used.
func (s *Scheduler) holderLocked(taskID, hostID string) (*task, *host, *holding, error) {
	t, h, err := s.lookup(taskID, hostID)
	if err != nil {
		return nil, nil, nil, err
	}
	if t.blocked[hostID] {
		return t, h, nil, nil
	}
	if !h.IsSeed {
		t.used = s.cfg.Now()
	}
	return t, h, s.holdingLocked(t, h), nil
}

// SetHolding replaces what a host holds of a task with bitmap (bits past the
// task's block count are ignored). Blocked hosts are ignored.
func (s *Scheduler) SetHolding(taskID, hostID string, bitmap []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, _, hd, err := s.holderLocked(taskID, hostID)
	if err != nil || hd == nil {
		return err
	}
	bm := blockstore.Bitmap(bitmap)
	for b := range t.n {
		if b/8 < len(bm) && bm.Has(b) {
			s.addLocked(t, hd, b)
		} else if hd.bits.Has(b) {
			hd.bits.Clear(b)
			hd.count--
			t.stale[b]++
		}
	}
	return nil
}

// AddBlocks records that a host now holds blocks of a task (out-of-range
// indices are ignored). Blocked hosts are ignored.
func (s *Scheduler) AddBlocks(taskID, hostID string, blocks []int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, h, hd, err := s.holderLocked(taskID, hostID)
	if err != nil || hd == nil {
		return err
	}
	for _, b := range blocks {
		if b >= 0 && b < t.n {
			s.addLocked(t, hd, b)
			t.landed(b, h)
		}
	}
	return nil
}

// RemoveBlocks records that a host no longer holds blocks of a task (for
// example a stored block failed verification and was dropped).
func (s *Scheduler) RemoveBlocks(taskID, hostID string, blocks []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok {
		return
	}
	hd, ok := t.holdings[hostID]
	if !ok {
		return
	}
	for _, b := range blocks {
		if b >= 0 && b < t.n && hd.bits.Has(b) {
			hd.bits.Clear(b)
			hd.count--
			t.stale[b]++
		}
	}
}

func (s *Scheduler) addLocked(t *task, hd *holding, b int) {
	if hd.bits.Has(b) {
		return
	}
	hd.bits.Set(b)
	hd.count++
	if !hd.listed.Has(b) {
		hd.listed.Set(b)
		t.lists[b] = append(t.lists[b], hd)
	} else if t.stale[b] > 0 {
		t.stale[b]-- // listed entry becomes valid again
	}
}

// Holders is how many live, unblocked hosts hold block b of a task.
func (s *Scheduler) Holders(taskID string, b int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok || b < 0 || b >= t.n {
		return 0
	}
	now := s.cfg.Now()
	n := 0
	for _, hd := range t.lists[b] {
		if s.eligibleLocked(t, hd, b, now) {
			n++
		}
	}
	return n
}

// Leave removes a host from a task, or from every task and the scheduler
// when taskID is empty.
func (s *Scheduler) Leave(hostID, taskID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.hosts[hostID]
	if !ok {
		return
	}
	if taskID != "" {
		if t, ok := s.tasks[taskID]; ok {
			if hd, ok := t.holdings[hostID]; ok {
				s.removeHoldingLocked(t, hd)
			}
		}
		return
	}
	s.removeHostLocked(h)
}

func (s *Scheduler) removeHostLocked(h *host) {
	for tid, hd := range h.holdings {
		if t, ok := s.tasks[tid]; ok {
			s.removeHoldingLocked(t, hd)
		}
	}
	delete(s.hosts, h.ID)
	s.normDirt = true
}

// Expire removes hosts (never the seed) that missed their heartbeats and
// returns their ids. It also forgets tasks that only the seed holds and that
// nobody used for TaskIdle.
func (s *Scheduler) Expire() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	var out []string
	for id, h := range s.hosts {
		if s.expiredLocked(h, now) {
			s.removeHostLocked(h)
			out = append(out, id)
		}
	}
	sort.Strings(out)
	for _, t := range s.tasks {
		if now.Sub(t.used) < s.cfg.TaskIdle {
			continue
		}
		idle := true
		for _, hd := range t.holdings {
			if !hd.host.IsSeed && hd.count > 0 {
				idle = false
				break
			}
		}
		if idle {
			s.dropTaskLocked(t)
		}
	}
	return out
}

func (s *Scheduler) expiredLocked(h *host, now time.Time) bool {
	return !h.IsSeed && now.Sub(h.lastSeen) > time.Duration(s.cfg.MissedHeartbeats)*s.cfg.HeartbeatInterval
}

// Report applies fetch results reported by requester for a task: parent
// history (throughput, failures), load release, and isolation — a parent
// reported for a bad digest is never assigned to that requester again for
// the task (see Block for isolating it from everyone).
func (s *Scheduler) Report(taskID, requester string, results []Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[taskID]
	for _, r := range results {
		p, ok := s.hosts[r.ParentID]
		if !ok || r.ParentID == requester {
			continue
		}
		if len(p.assigned) > 0 {
			p.assigned = p.assigned[1:]
		}
		if t != nil && r.Block >= 0 && r.Block < t.n {
			if rh, ok := s.hosts[requester]; ok {
				t.landed(r.Block, rh)
			}
		}
		const alpha = 0.3
		if r.OK {
			p.consecFail = 0
			p.failRate *= 1 - alpha
			p.served += r.Bytes
			if r.Duration > 0 && r.Bytes > 0 {
				tp := float64(r.Bytes) / r.Duration.Seconds()
				if p.samples == 0 {
					p.throughput = tp
				} else {
					p.throughput = alpha*tp + (1-alpha)*p.throughput
				}
				p.samples++
				s.normDirt = true
			}
			continue
		}
		p.consecFail++
		p.failRate = alpha + (1-alpha)*p.failRate
		if r.BadDigest && t != nil && !p.IsSeed {
			// The reporter never gets this parent again for the task. A
			// report alone blocks nobody for everyone (any host can send
			// one): the supernode checks the block itself and calls Block.
			if t.excluded == nil {
				t.excluded = map[string]map[string]bool{}
			}
			if t.excluded[requester] == nil {
				t.excluded[requester] = map[string]bool{}
			}
			t.excluded[requester][p.ID] = true
		}
	}
}

// ForgetTask drops a task with every holding, block and in-flight record:
// its content changed at the origin, so every copy is void.
func (s *Scheduler) ForgetTask(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tasks[id]; ok {
		s.dropTaskLocked(t)
	}
}

// Block isolates a host for a task: it is never a parent of the task again
// and what it announces of it is ignored (the seed is never blocked: its
// blocks are the reference). Called once a bad block from the host has
// been confirmed.
func (s *Scheduler) Block(taskID, hostID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok {
		return
	}
	if h, ok := s.hosts[hostID]; ok && h.IsSeed {
		return
	}
	t.blocked[hostID] = true
	if hd, ok := t.holdings[hostID]; ok {
		s.removeHoldingLocked(t, hd)
	}
}

// Excluded reports whether requester reported parent for a bad block of the task.
func (s *Scheduler) Excluded(taskID, requester, parent string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	return ok && t.excluded[requester][parent]
}

// Blocked reports whether a host is blocked for a task.
func (s *Scheduler) Blocked(taskID, hostID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	return ok && t.blocked[hostID]
}
