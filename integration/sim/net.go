// Package sim is a discrete-event simulator of a dfly swarm: the real
// supernode.Scheduler decides every parent, in virtual time, over a
// flow-level network model (this file), with peers and the seed modelled on
// the real client (peer/engine_download.go, peer/swarm*.go) and seed
// (supernode/seed.go). See docs/benchmarks.md section 12.
package sim

import (
	"container/heap"
	"math"
)

// events is the simulator's clock: a heap of callbacks ordered by virtual
// time (seconds), ties broken by insertion order, so a run is deterministic.
type events struct {
	now   float64
	seq   uint64
	items eventHeap
	fired uint64 // callbacks and flow completions run
	net   *Net   // flow completions, kept apart: a rate change moves a flow in place
}

type event struct {
	at  float64
	seq uint64
	fn  func()
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = event{}
	*h = old[:len(old)-1]
	return e
}

// at schedules fn at virtual time t (never before now).
func (q *events) at(t float64, fn func()) {
	q.seq++
	heap.Push(&q.items, event{at: max(t, q.now), seq: q.seq, fn: fn})
}

// after schedules fn d seconds from now.
func (q *events) after(d float64, fn func()) { q.at(q.now+d, fn) }

// step runs the earliest callback or flow completion (flows first on a
// tie); false when none is left.
func (q *events) step() bool {
	if n := q.net; n != nil && len(n.flows) > 0 && (len(q.items) == 0 || n.flows[0].eta <= q.items[0].at) {
		f := n.flows[0]
		q.now = max(q.now, f.eta)
		q.fired++
		n.finish(f)
		return true
	}
	if len(q.items) == 0 {
		return false
	}
	e := heap.Pop(&q.items).(event)
	q.now = e.at
	q.fired++
	e.fn()
	return true
}

// Net is a flow-level network: every host has an upload and a download
// capacity (bytes/s), and every transfer in progress is a flow from one
// host's upload to another's download. Sharing is approximated, not
// max-min fair: a flow's rate is min(src.up/n_up(src), dst.down/n_down(dst))
// — each end splits its capacity evenly among its flows — recomputed for
// the flows of both ends whenever a flow starts or ends there, so an event
// costs O(flows at its two hosts), never O(all flows). The error: a flow
// held back by its other end leaves part of its share unused (max-min
// fairness would hand it to the others), so rates are a lower bound of
// max-min fair rates and completion times an upper bound.
type Net struct {
	q     *events
	flows flowHeap // by completion time
	seq   uint64   // flow creation order: ties of completion times
	stamp uint64   // dedup of flows touched by one update
	// Delivered counts the bytes of completed flows.
	Delivered int64
}

// Host is one end of flows.
type Host struct {
	Up, Down float64 // capacities, bytes/s (+Inf: unlimited)
	ups      []*Flow
	downs    []*Flow
	// Sent counts the bytes of completed flows this host uploaded.
	Sent int64
}

// Uploads is the number of flows this host uploads now.
func (h *Host) Uploads() int { return len(h.ups) }

// Downloads is the number of flows this host downloads now.
func (h *Host) Downloads() int { return len(h.downs) }

// Flow is one transfer in progress.
type Flow struct {
	Src, Dst  *Host
	Bytes     int64
	Start     float64 // virtual time it started
	remaining float64
	rate      float64
	last      float64 // virtual time remaining was last brought up to date
	eta       float64 // virtual time of the last byte at the current rate
	seq       uint64
	hi        int // index in Net.flows
	iu, id    int // indices in Src.ups, Dst.downs
	stamp     uint64
	done      func(*Flow)
}

// Rate is the flow's current rate, bytes/s.
func (f *Flow) Rate() float64 { return f.rate }

func newNet(q *events) *Net {
	n := &Net{q: q}
	q.net = n
	return n
}

type flowHeap []*Flow

func (h flowHeap) Len() int { return len(h) }
func (h flowHeap) Less(i, j int) bool {
	if h[i].eta != h[j].eta {
		return h[i].eta < h[j].eta
	}
	return h[i].seq < h[j].seq
}
func (h flowHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hi, h[j].hi = i, j
}
func (h *flowHeap) Push(x any) {
	f := x.(*Flow)
	f.hi = len(*h)
	*h = append(*h, f)
}
func (h *flowHeap) Pop() any {
	old := *h
	f := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	f.hi = -1
	return f
}

// NewHost returns a host with the given capacities (bytes/s); a capacity
// that is not positive counts as unlimited.
func (n *Net) NewHost(up, down float64) *Host {
	if !(up > 0) {
		up = math.Inf(1)
	}
	if !(down > 0) {
		down = math.Inf(1)
	}
	return &Host{Up: up, Down: down}
}

// Start begins a flow of bytes from src to dst; done runs at the virtual
// time its last byte is delivered.
func (n *Net) Start(src, dst *Host, bytes int64, done func(*Flow)) *Flow {
	n.seq++
	f := &Flow{Src: src, Dst: dst, Bytes: bytes, Start: n.q.now, remaining: float64(bytes), last: n.q.now, done: done, seq: n.seq, hi: -1}
	f.iu = len(src.ups)
	src.ups = append(src.ups, f)
	f.id = len(dst.downs)
	dst.downs = append(dst.downs, f)
	n.update(src, dst)
	return f
}

// update recomputes the rates of the flows at a and b.
func (n *Net) update(a, b *Host) {
	n.stamp++
	for _, h := range [2]*Host{a, b} {
		for _, f := range h.ups {
			n.rerate(f)
		}
		for _, f := range h.downs {
			n.rerate(f)
		}
	}
}

func (n *Net) rerate(f *Flow) {
	if f.stamp == n.stamp {
		return
	}
	f.stamp = n.stamp
	r := min(f.Src.Up/float64(len(f.Src.ups)), f.Dst.Down/float64(len(f.Dst.downs)))
	if math.IsInf(r, 1) {
		r = math.MaxFloat64 // both ends unlimited: at once, without Inf·0
	}
	if r == f.rate {
		return
	}
	now := n.q.now
	f.remaining = max(f.remaining-f.rate*(now-f.last), 0)
	f.last, f.rate = now, r
	f.eta = now
	if f.remaining > 0 {
		f.eta = now + f.remaining/r
	}
	if f.hi < 0 {
		heap.Push(&n.flows, f)
	} else {
		heap.Fix(&n.flows, f.hi)
	}
}

func (n *Net) finish(f *Flow) {
	heap.Remove(&n.flows, f.hi)
	f.remaining = 0
	src, dst := f.Src, f.Dst
	last := src.ups[len(src.ups)-1]
	src.ups[f.iu], last.iu = last, f.iu
	src.ups = src.ups[:len(src.ups)-1]
	last = dst.downs[len(dst.downs)-1]
	dst.downs[f.id], last.id = last, f.id
	dst.downs = dst.downs[:len(dst.downs)-1]
	n.Delivered += f.Bytes
	src.Sent += f.Bytes
	n.update(src, dst)
	f.done(f)
}
