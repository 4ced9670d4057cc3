package peer

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/internal/p2pstatus"
)

// Recent keeps what a host did lately, for `dfctl status` (GET /v1/status)
// and the heartbeat's HostStats: a ring of 10-second buckets covering the
// last hour (p2pstatus.MaxWindow) with the bytes delivered to tasks by
// provenance, finished downloads and swarm failures that fell back to the
// origin; the tasks with a download in flight; the last few errors; and
// the same counters since the process started. It is separate from the
// Prometheus metrics (which have no windows) and cheap: one mutex, no
// goroutine. A nil *Recent records nothing, so engines without one
// (dfget, dfmount, tests) need no change.
type Recent struct {
	now     func() time.Time
	started time.Time

	mu       sync.Mutex
	ring     [recentBuckets]bucket
	total    bucket // since started (its slot is unused)
	inflight map[string]int
	errs     []p2pstatus.Error // newest first, at most recentErrors
}

const (
	recentResolution = p2pstatus.MinWindow
	recentBuckets    = int(p2pstatus.MaxWindow / recentResolution)
	recentErrors     = 8
	maxErrorLen      = 512
)

// bucket counts one recentResolution of time (slot: its start / resolution).
type bucket struct {
	slot                          int64
	local, origin, seed, peers    int64
	ok, failed, canceled, fallbks int64
}

func (b *bucket) add(o *bucket) {
	b.local += o.local
	b.origin += o.origin
	b.seed += o.seed
	b.peers += o.peers
	b.ok += o.ok
	b.failed += o.failed
	b.canceled += o.canceled
	b.fallbks += o.fallbks
}

// NewRecent returns an empty Recent; now is the clock (nil: time.Now).
func NewRecent(now func() time.Time) *Recent {
	if now == nil {
		now = time.Now
	}
	return &Recent{now: now, started: now(), inflight: map[string]int{}}
}

// Started is when the Recent was made (the process's start, for its counters).
func (r *Recent) Started() time.Time { return r.started }

// cur returns the bucket of now, clearing it when it last counted an older
// slot. r.mu is held.
func (r *Recent) cur(now time.Time) *bucket {
	slot := now.UnixNano() / int64(recentResolution)
	b := &r.ring[int(slot%int64(recentBuckets))]
	if b.slot != slot {
		*b = bucket{slot: slot}
	}
	return b
}

// record applies f to the current bucket and to the totals.
func (r *Recent) record(f func(*bucket)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r.cur(r.now()))
	f(&r.total)
}

// AddBytes counts n bytes delivered to a task from where they came.
func (r *Recent) AddBytes(from From, n int64) {
	if r == nil || n <= 0 {
		return
	}
	r.record(func(b *bucket) {
		switch from {
		case FromOrigin:
			b.origin += n
		case FromSeed:
			b.seed += n
		case FromPeer:
			b.peers += n
		default:
			b.local += n
		}
	})
}

// Fallback counts a swarm failure whose block (or task resolution) went to
// the origin instead, and keeps its error.
func (r *Recent) Fallback(err error) {
	if r == nil {
		return
	}
	r.record(func(b *bucket) { b.fallbks++ })
	if err != nil {
		r.Error("swarm failed, used the origin: " + err.Error())
	}
}

// Begin marks a download of task as in flight; the returned function ends
// it with its result (nil: ok; context.Canceled: given up by the caller;
// anything else: failed, and kept as an error). Call it exactly once.
func (r *Recent) Begin(task string) func(error) {
	if r == nil {
		return func(error) {}
	}
	r.mu.Lock()
	r.inflight[task]++
	r.mu.Unlock()
	var once sync.Once
	return func(err error) {
		once.Do(func() {
			r.mu.Lock()
			if r.inflight[task]--; r.inflight[task] <= 0 {
				delete(r.inflight, task)
			}
			r.mu.Unlock()
			r.Done(err)
		})
	}
}

// Done counts a finished download that was never marked in flight (one
// whose task could not even be opened), like the function Begin returns.
func (r *Recent) Done(err error) {
	if r == nil {
		return
	}
	switch {
	case err == nil:
		r.record(func(b *bucket) { b.ok++ })
	case errors.Is(err, context.Canceled):
		r.record(func(b *bucket) { b.canceled++ })
	default:
		r.record(func(b *bucket) { b.failed++ })
		r.Error(err.Error())
	}
}

// Error keeps msg (URLs without their query strings and credentials,
// at most 512 bytes) among the last errors; the same message again only
// moves it to the front, counting it.
func (r *Recent) Error(msg string) {
	if r == nil || msg == "" {
		return
	}
	msg = p2pstatus.RedactURLs(msg)
	if len(msg) > maxErrorLen {
		msg = msg[:maxErrorLen] + "…"
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := p2pstatus.Error{Time: now, Message: msg, Count: 1}
	for i, old := range r.errs {
		if old.Message == msg {
			e.Count = old.Count + 1
			r.errs = append(r.errs[:i], r.errs[i+1:]...)
			break
		}
	}
	r.errs = append([]p2pstatus.Error{e}, r.errs...)
	if len(r.errs) > recentErrors {
		r.errs = r.errs[:recentErrors]
	}
}

// RecentWindow is what a host did in a window.
type RecentWindow struct {
	Window        time.Duration
	Bytes         p2pstatus.Bytes
	Downloads     p2pstatus.Downloads
	Fallbacks     int64
	Errors        []p2pstatus.Error // newest first
	TasksInFlight int
}

// Window sums the buckets of the last window (cut to [10s, 1h] and
// rounded up to whole 10-second buckets, the current one included) and
// lists the errors in it.
func (r *Recent) Window(window time.Duration) RecentWindow {
	if r == nil {
		return RecentWindow{Window: window}
	}
	window = min(max(window, recentResolution), p2pstatus.MaxWindow)
	n := int64((window + recentResolution - 1) / recentResolution)
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	last := now.UnixNano() / int64(recentResolution)
	var sum bucket
	for i := range r.ring {
		if b := &r.ring[i]; b.slot > last-n && b.slot <= last {
			sum.add(b)
		}
	}
	out := RecentWindow{Window: window, Bytes: sum.bytes(), Fallbacks: sum.fallbks, TasksInFlight: len(r.inflight),
		Downloads: p2pstatus.Downloads{OK: sum.ok, Failed: sum.failed, Canceled: sum.canceled}}
	since := now.Add(-window)
	for _, e := range r.errs {
		if e.Time.After(since) {
			out.Errors = append(out.Errors, e)
		}
	}
	return out
}

func (b *bucket) bytes() p2pstatus.Bytes {
	return p2pstatus.Bytes{Local: b.local, Origin: b.origin, Seed: b.seed, Peers: b.peers}
}

// RecentTotals are the counters since the Recent was made.
type RecentTotals struct {
	Started       time.Time
	Bytes         p2pstatus.Bytes
	Downloads     p2pstatus.Downloads
	Fallbacks     int64
	TasksInFlight int
	LastError     *p2pstatus.Error
}

// Totals returns the counters since the start (the heartbeat's HostStats).
func (r *Recent) Totals() RecentTotals {
	if r == nil {
		return RecentTotals{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t := RecentTotals{Started: r.started, Bytes: r.total.bytes(), Fallbacks: r.total.fallbks, TasksInFlight: len(r.inflight),
		Downloads: p2pstatus.Downloads{OK: r.total.ok, Failed: r.total.failed, Canceled: r.total.canceled}}
	if len(r.errs) > 0 {
		e := r.errs[0]
		t.LastError = &e
	}
	return t
}
