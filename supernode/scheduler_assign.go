package supernode

import (
	"slices"
	"time"
)

// Parent choice: eligibility, load and score, locality and in-flight
// dedup, and the ranked candidates of Assign (pure logic, no I/O).

// normLocked returns the swarm norm: the median throughput of peers (not
// the seed) with enough samples; 0 when nobody has. Recomputed at most once
// a second.
func (s *Scheduler) normLocked(now time.Time) float64 {
	if !s.normDirt || now.Sub(s.normAt) < time.Second {
		return s.norm
	}
	var tps []float64
	for _, h := range s.hosts {
		if !h.IsSeed && h.samples >= s.cfg.MinSamples {
			tps = append(tps, h.throughput)
		}
	}
	s.norm = 0
	if len(tps) > 0 {
		slices.Sort(tps)
		s.norm = tps[len(tps)/2]
	}
	s.normAt, s.normDirt = now, false
	return s.norm
}

func (s *Scheduler) eligibleLocked(t *task, hd *holding, b int, now time.Time) bool {
	return !hd.gone && hd.bits.Has(b) && hd.host.UploadAddr != "" && (len(t.blocked) == 0 || !t.blocked[hd.host.ID]) && !s.expiredLocked(hd.host, now)
}

// pruneAssigned drops assignments older than AssignTTL.
func (s *Scheduler) pruneAssigned(h *host, now time.Time) {
	i := 0
	for i < len(h.assigned) && now.Sub(h.assigned[i]) > s.cfg.AssignTTL {
		i++
	}
	if i > 0 {
		h.assigned = h.assigned[i:]
	}
}

func (s *Scheduler) slots(h *host) int {
	if h.IsSeed {
		return s.cfg.SeedMaxAssign
	}
	return s.cfg.MaxAssignPerParent
}

// scoreLocked computes the ranking key of parent p for requester r (see score.go).
func (s *Scheduler) scoreLocked(r, p *host, blockSize int64, norm float64, now time.Time) score {
	s.pruneAssigned(p, now)
	// A running transfer is both an upload in flight and an outstanding
	// assignment, so it counts twice and a busy parent looks full early.
	// That is deliberate: counting it once (max of the two) let remote idle
	// parents outrank busy local ones and raised cross-idc traffic (netbench
	// locality, N=10, 64 MB: 3.46 vs 2.98 copies) with no gain in speed.
	load := p.inFlight + len(p.assigned)
	sc := score{saturated: load >= s.slots(p), locality: localityOf(r.IDC, r.Rack, p.IDC, p.Rack), crossIDC: crossesIDC(r.IDC, p)}
	switch {
	case p.IsSeed:
		sc.class = classSeed
	case p.consecFail >= s.cfg.FailuresToDeprioritise,
		norm > 0 && p.samples >= s.cfg.MinSamples && p.throughput < norm/s.cfg.SlowFactor:
		sc.class = classDeprioritised
		sc.crossIDC = r.IDC != "" // not worth waiting for (rule 0)
	}
	capacity := p.Capacity
	if capacity <= 0 {
		capacity = s.cfg.DefaultCapacity
	}
	sc.load = float64(load) * float64(blockSize) / float64(capacity)
	tp := norm
	if p.samples > 0 {
		tp = p.throughput
	}
	sc.history = tp * (1 - p.failRate)
	return sc
}

// Assign answers the wants of requester for a task: for each wanted block
// that some eligible host holds and for which ok(block) is true (the
// supernode knows its digest), a ranked list of at most MaxParents parents.
// The first parent of each assignment is charged one assignment of load.
//
// Order and locality: wants are answered in the requester's order, except
// that a block whose best parent is in another idc (or is the seed) is
// deferred behind blocks a local parent can serve, so a peer spends its
// slots inside its idc first; the first want (the most urgent, e.g. a
// foreground read) is never deferred. Blocks whose every holder is saturated
// get no assignment, except that a requester always gets at least one
// assignment when any wanted block has a holder (every peer gets work).
// Blocks a closer copy of is on its way get none (see DedupTTL): the wait is
// short and bounded.
//
// limit > 0 caps the number of assignments (the requester's free download
// slots); 0 means no cap.
func (s *Scheduler) Assign(taskID, requester string, wants []int, ok func(block int) bool, limit int) ([]Assignment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, r, err := s.lookup(taskID, requester)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	t.used = now
	norm := s.normLocked(now)
	var out []Assignment
	var fallback *Assignment
	var deferred []int
	full := func() bool { return limit > 0 && len(out) >= limit }
	take := func(b int, cands []cand, holders int) {
		a := s.assignment(b, cands, holders)
		if cands[0].sc.saturated {
			if fallback == nil {
				fallback = &a
			}
			return
		}
		cands[0].h.assigned = append(cands[0].h.assigned, now)
		t.fly(b, r, now, knownCrossIDC(r, cands[0].h))
		out = append(out, a)
	}
	seen := map[int]bool{}
	first := true
	for _, b := range wants {
		if full() {
			break
		}
		if b < 0 || b >= t.n || seen[b] || (ok != nil && !ok(b)) {
			continue
		}
		seen[b] = true
		cands, holders := s.rankLocked(t, r, b, norm, now)
		if len(cands) == 0 {
			continue
		}
		if s.waitLocalLocked(t, r, b, cands[0], now) {
			s.withheld++
			continue // a closer copy is on its way (bounded by DedupTTL)
		}
		if s.crossFullLocked(t, r, cands[0], now) {
			continue
		}
		remote := cands[0].sc.locality == elsewhere || cands[0].sc.class == classSeed
		if !first && remote && r.IDC != "" && !cands[0].sc.saturated {
			deferred = append(deferred, b)
			continue
		}
		first = false
		take(b, cands, holders)
	}
	for _, b := range deferred {
		if full() {
			break
		}
		cands, holders := s.rankLocked(t, r, b, norm, now) // loads changed since the first pass
		if len(cands) == 0 {
			continue
		}
		if s.waitLocalLocked(t, r, b, cands[0], now) {
			s.withheld++
			continue
		}
		if !s.crossFullLocked(t, r, cands[0], now) {
			take(b, cands, holders)
		}
	}
	if len(out) == 0 && fallback != nil {
		p := s.hosts[fallback.Parents[0].HostID]
		p.assigned = append(p.assigned, now)
		t.fly(fallback.Block, r, now, knownCrossIDC(r, p))
		out = append(out, *fallback)
	}
	return out, nil
}

func (s *Scheduler) assignment(b int, cands []cand, holders int) Assignment {
	a := Assignment{Block: b, Holders: holders, Parents: make([]Parent, len(cands))}
	for i, c := range cands {
		a.Parents[i] = Parent{HostID: c.h.ID, UploadAddr: c.h.UploadAddr, IsSeed: c.h.IsSeed}
	}
	return a
}

// waitLocalLocked reports whether requester r should wait for block b
// instead of fetching it from best: best is the seed and another peer is
// already fetching b, or best is in another idc and a peer of r's idc is
// already fetching b (see DedupTTL).
func (s *Scheduler) waitLocalLocked(t *task, r *host, b int, best cand, now time.Time) bool {
	remoteIDC := best.sc.locality == elsewhere && r.IDC != ""
	if !best.h.IsSeed && !remoteIDC {
		return false
	}
	for _, f := range t.inflight[b] {
		if f.to == r || now.Sub(f.at) >= s.cfg.DedupTTL || f.to.IsSeed {
			continue
		}
		if best.h.IsSeed || f.to.IDC == r.IDC {
			return true
		}
	}
	return false
}

// knownCrossIDC reports whether parent p is in another idc than requester
// r, both labelled. Unlike crossesIDC (ranking, where an unlabelled seed
// counts as far), MaxCrossIDCTransfers only bounds transfers known to cross.
func knownCrossIDC(r, p *host) bool { return r.IDC != "" && p.IDC != "" && r.IDC != p.IDC }

// crossFullLocked reports whether taking best for requester r would exceed
// MaxCrossIDCTransfers into r's idc.
func (s *Scheduler) crossFullLocked(t *task, r *host, best cand, now time.Time) bool {
	return s.cfg.MaxCrossIDCTransfers > 0 && knownCrossIDC(r, best.h) &&
		t.crossInFlight(r.IDC, now, s.cfg.AssignTTL) >= s.cfg.MaxCrossIDCTransfers
}

// fly records that block b was assigned to r.
func (t *task) fly(b int, r *host, now time.Time, cross bool) {
	fs := t.inflight[b]
	if len(fs) >= maxFlights {
		t.unfly(fs[0])
		fs = fs[1:]
	}
	t.inflight[b] = append(fs, flight{to: r, at: now, cross: cross})
	if cross {
		if t.crossIn == nil {
			t.crossIn = map[string][]time.Time{}
		}
		t.crossIn[r.IDC] = append(t.crossIn[r.IDC], now)
	}
}

// unfly forgets f in the cross-idc counts.
func (t *task) unfly(f flight) {
	if !f.cross {
		return
	}
	ts := t.crossIn[f.to.IDC]
	if i := slices.Index(ts, f.at); i >= 0 {
		t.crossIn[f.to.IDC] = slices.Delete(ts, i, i+1)
	}
}

// crossInFlight counts the assignments from a parent in another idc to a
// requester in idc that started less than ttl ago and have no result yet.
func (t *task) crossInFlight(idc string, now time.Time, ttl time.Duration) int {
	ts := t.crossIn[idc]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= ttl {
		i++
	}
	if i > 0 {
		ts = slices.Delete(ts, 0, i)
		t.crossIn[idc] = ts
	}
	return len(ts)
}

// landed forgets r's fetch of block b (it reported a result or holds it).
func (t *task) landed(b int, r *host) {
	fs := t.inflight[b]
	for i := 0; i < len(fs); i++ {
		if fs[i].to == r {
			t.unfly(fs[i])
			fs = append(fs[:i], fs[i+1:]...)
			i--
		}
	}
	if len(fs) == 0 {
		fs = nil
	}
	t.inflight[b] = fs
}

type cand struct {
	h  *host
	sc score
}

// rankLocked returns the best MaxParents eligible holders of block b for
// requester r, best first, and the number of eligible holders seen.
func (s *Scheduler) rankLocked(t *task, r *host, b int, norm float64, now time.Time) ([]cand, int) {
	if t.stale[b] > 0 && t.stale[b]*4 >= len(t.lists[b]) {
		s.compactLocked(t, b)
	}
	list := t.lists[b]
	n := len(list)
	if n == 0 {
		return nil, 0
	}
	start := int(t.rot[b] % uint32(n))
	t.rot[b]++
	k := s.cfg.MaxParents
	top := make([]cand, 0, k+1)
	eligible := 0
	for i := 0; i < n && eligible < s.cfg.ScanLimit; i++ {
		hd := list[(start+i)%n]
		if hd.host == r || !s.eligibleLocked(t, hd, b, now) || (t.excluded != nil && t.excluded[r.ID][hd.host.ID]) {
			continue
		}
		eligible++
		c := cand{h: hd.host, sc: s.scoreLocked(r, hd.host, t.BlockSize, norm, now)}
		if len(top) == k && !c.sc.better(top[k-1].sc) {
			continue
		}
		j := len(top)
		for j > 0 && c.sc.better(top[j-1].sc) {
			j--
		}
		top = slices.Insert(top, j, c)
		if len(top) > k {
			top = top[:k]
		}
	}
	holders := eligible
	if eligible == s.cfg.ScanLimit {
		holders = max(n-t.stale[b], eligible) // estimate: the scan stopped early
	}
	return top, holders
}

// compactLocked removes stale entries from block b's holder list.
func (s *Scheduler) compactLocked(t *task, b int) {
	list := t.lists[b][:0]
	for _, hd := range t.lists[b] {
		if !hd.gone && hd.bits.Has(b) {
			list = append(list, hd)
		} else if !hd.gone {
			hd.listed.Clear(b)
		}
	}
	clear(t.lists[b][len(list):])
	t.lists[b] = list
	t.stale[b] = 0
}
