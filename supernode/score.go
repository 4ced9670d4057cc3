package supernode

// Parent scoring.
//
// For a peer R that wants block b of task T, every candidate parent P is a
// host that holds b of T, is alive (announced within ExpireAfter), is not R,
// and is not blocked for T. Candidates are ranked by comparing, in order
// (lexicographically, the first difference decides):
//
//  0. across idcs: R has an idc label and P is in another idc (a seed
//     without a label counts as elsewhere, so it stays the last resort; a
//     peer without one counts as near). Such a parent comes after every
//     healthy parent inside R's idc, even a saturated one or the seed:
//     links between idcs are the scarce resource, and a saturated local
//     holder frees a slot within a block's transfer time, so the block
//     waits for it instead of crossing again (if R gets nothing else to do
//     in a Sync, it gets that parent anyway, see Assign). Each block then
//     crosses into an idc about once. A deprioritised parent (class 2)
//     gets no such advantage: a slow local peer is not worth waiting for.
//  1. saturated: P's uploads in flight plus assignments handed out recently
//     reach its slots (MaxAssignPerParent for peers, SeedMaxAssign for the
//     seed); a running transfer counts in both, which keeps busy local
//     parents from being swamped (see scoreLocked). Unsaturated parents always come first, so
//     parallel assignments per parent are bounded and load spreads over every
//     holder ("give every peer work, prefer idle uploaders").
//  2. class: healthy peer < deprioritised peer < seed. A peer is deprioritised
//     when its recent throughput as a parent is below norm/SlowFactor (norm =
//     median throughput of the swarm's peers) or when its last
//     FailuresToDeprioritise fetches in a row failed. The seed is the parent of
//     last resort: it is first only when no unsaturated peer holds the block.
//  3. locality: same rack (same idc and same non-empty rack) < same idc
//     (non-empty) < elsewhere.
//  4. load relative to capacity: (uploads in flight + recent assignments) ×
//     block size / upload capacity, i.e. the seconds of upload queued at P;
//     lower first. Hosts that did not declare a capacity count as
//     DefaultCapacity.
//  5. history: recent throughput × (1 − recent failure rate); higher first.
//     Hosts without samples count as the swarm norm (neither favoured nor
//     punished).
//
// Remaining ties keep scan order. The scan of a block's holders starts at an
// offset that rotates with every decision, so equal parents share the work.
// For very large swarms at most ScanLimit eligible holders are examined per
// decision (starting at the rotating offset), which bounds a decision's cost.
//
// Across the wants of one Sync (Scheduler.Assign): wants are answered in the
// peer's order, but a block whose best parent is in another idc (or is the
// seed) is deferred behind blocks a parent in the peer's idc can serve; the
// first want (the most urgent, e.g. a foreground read) is never deferred.
// A block whose best parent is remote while a closer copy is on its way is
// not assigned (for at most DedupTTL): the best parent is the seed and
// another peer is already fetching the block, or the best parent is in
// another idc and a peer of the requester's idc is already fetching it. The
// requester gets it from that peer a moment later, so the seed uploads each
// block about once and each block crosses into an idc about once.
// Only blocks whose SHA-256 the supernode knows are assigned; only the first
// parent of an assignment is charged load (released by a result naming it,
// or after AssignTTL); blocks whose holders are all saturated are not
// assigned, except that every Sync gets at least one assignment when any
// wanted block has a holder ("give every peer work").
//
// Isolation: a host reported for a bad digest is blocked for the task at
// once and never considered again for it (reports against the seed are
// ignored: its blocks define the digests); a host much slower than the swarm
// norm or failing repeatedly is deprioritised (class 2 above); hosts that
// miss three heartbeats expire and their holdings are dropped.

// class values, in rank order.
const (
	classPeer = iota
	classDeprioritised
	classSeed
)

// locality values, in rank order.
const (
	sameRack = iota
	sameIDC
	elsewhere
)

// score is the ranking key of one candidate parent; see the package comment
// above for the meaning of each field.
type score struct {
	crossIDC  bool
	saturated bool
	class     int
	locality  int
	load      float64 // seconds of queued upload
	history   float64 // bytes/s, discounted by failures
}

// better reports whether a ranks before b.
func (a score) better(b score) bool {
	if a.crossIDC != b.crossIDC {
		return !a.crossIDC
	}
	if a.saturated != b.saturated {
		return !a.saturated
	}
	if a.class != b.class {
		return a.class < b.class
	}
	if a.locality != b.locality {
		return a.locality < b.locality
	}
	if a.load != b.load {
		return a.load < b.load
	}
	return a.history > b.history
}

// crossesIDC reports whether a transfer from parent p to a requester in
// reqIDC crosses into the requester's idc (see rule 0 above).
func crossesIDC(reqIDC string, p *host) bool {
	return reqIDC != "" && p.IDC != reqIDC && (p.IDC != "" || p.IsSeed)
}

// localityOf classifies the network distance between a requester and a
// parent by their labels.
func localityOf(reqIDC, reqRack, parIDC, parRack string) int {
	if reqIDC != "" && reqIDC == parIDC {
		if reqRack != "" && reqRack == parRack {
			return sameRack
		}
		return sameIDC
	}
	return elsewhere
}
