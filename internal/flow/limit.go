package flow

import (
	"math"
	"time"
)

// The network rule (--flow auto), per direction:
//
//	others  = NIC bytes − dfly's bytes × (1 + Overhead), over the last
//	          Window (signed), followed at once when it rises and with
//	          time constant TauFall when it falls
//	target  = Ceiling × (1 − Headroom) − max(others, 0)    (wire bytes/s)
//	allowed = target at once when it is lower (quick back-off), else
//	          at most RampUp × Ceiling per second more (slow ramp-up)
//	limit   = clamp(allowed / (1 + Overhead), Floor, Cap)   (dfly's payload bytes/s)
//
// Counters are cumulative; a counter that went backwards (interface down
// and up, a 32-bit wrap) or jumped by more than any link carries makes
// that interval unknown: the limits stay as they were and the window
// starts again from the new values.

// Params tune Decide. Rates are bytes/s; zero fields take the defaults of
// DefaultParams (Ceiling has none).
type Params struct {
	// Ceiling is what dfly and the host's own traffic together should stay
	// under, per direction (wire bytes: what the NIC counters count).
	CeilingDown, CeilingUp float64
	// CapDown, CapUp are the fixed limits (--download-rate, --upload-rate)
	// the rule never exceeds; 0 = none.
	CapDown, CapUp float64
	// Headroom is the share of the ceiling left unused, so that the host's
	// own flows find room to grow into (and dfly then yields it).
	Headroom float64
	// Overhead is the share of framing (Ethernet, IP, TCP, TLS) the NIC
	// counts on top of the payload dfly counts.
	Overhead float64
	// FloorShare and FloorMin: dfly always gets at least
	// max(FloorShare × Ceiling, FloorMin) (never above the ceiling), so its
	// downloads complete whatever the host does.
	FloorShare, FloorMin float64
	// RampUp is how fast the allowance may grow, in shares of the ceiling
	// per second.
	RampUp float64
	// Window is the span over which the rates are measured: long enough
	// that bytes the NIC counted but dfly had not read yet (in its socket
	// buffers) and read later cancel out, short enough to react at once.
	Window time.Duration
	// TauFall is the time constant with which the estimate of the others'
	// rate follows it down (it follows a rise at once: dfly backs off fast).
	TauFall time.Duration
	// Implausible is a rate (bytes/s) no interval can reach: above it a
	// counter jumped (a new interface with old counters) and the interval
	// is ignored. Default 8 × the larger ceiling, at least 1.25 GB/s.
	Implausible float64
}

// DefaultParams returns the defaults of every field but the ceilings and caps.
func DefaultParams() Params {
	return Params{Headroom: 0.05, Overhead: 0.05, FloorShare: 0.05, FloorMin: 1 << 20, RampUp: 0.2,
		Window: time.Second, TauFall: 1500 * time.Millisecond}
}

func (p Params) withDefaults() Params {
	d := DefaultParams()
	if p.Headroom <= 0 {
		p.Headroom = d.Headroom
	}
	if p.Overhead <= 0 {
		p.Overhead = d.Overhead
	}
	if p.FloorShare <= 0 {
		p.FloorShare = d.FloorShare
	}
	if p.FloorMin <= 0 {
		p.FloorMin = d.FloorMin
	}
	if p.RampUp <= 0 {
		p.RampUp = d.RampUp
	}
	if p.Window <= 0 {
		p.Window = d.Window
	}
	if p.TauFall <= 0 {
		p.TauFall = d.TauFall
	}
	if p.Implausible <= 0 {
		p.Implausible = max(8*max(p.CeilingDown, p.CeilingUp), 1.25e9)
	}
	return p
}

// Sample is one reading of the counters: the interface's and dfly's own
// (Rx: bytes its downloads received, Tx: bytes its upload server sent).
type Sample struct {
	At   time.Time
	NIC  Counters
	Dfly Counters
}

// Dir is the rule's state for one direction.
type Dir struct {
	Others  float64 // estimate of the host's own traffic, wire bytes/s (may be < 0: see Decide)
	Own     float64 // dfly's smoothed rate, payload bytes/s (for the status)
	Allowed float64 // dfly's allowance, wire bytes/s
	Limit   int64   // the limit to apply: dfly's payload bytes/s
}

// State is what Decide carries from one sample to the next.
type State struct {
	Started   bool // a sample was seen
	Estimated bool // Down and Up hold estimates (a first whole interval was seen)
	Down, Up  Dir
	Skipped   int // intervals ignored (counter reset, wrap, jump)
	// window holds the samples of the last Window (and the one before
	// it), oldest first; Decide copies it on write, so states never share
	// one that changes.
	window []Sample
}

// maxWindow bounds the samples kept (a Window of many short intervals).
const maxWindow = 64

// Initial returns the state before any sample: the limits at the floor,
// until the first interval is measured.
func Initial(p Params) State {
	p = p.withDefaults()
	var s State
	s.Down.Limit = p.limit(0, p.CeilingDown, p.CapDown)
	s.Up.Limit = p.limit(0, p.CeilingUp, p.CapUp)
	return s
}

// Decide folds one sample into the state and returns the new state, whose
// Down.Limit and Up.Limit are the limits to apply. It does no I/O.
func Decide(p Params, st State, s Sample) State {
	p = p.withDefaults()
	if !st.Started || len(st.window) == 0 {
		st.Started, st.window = true, []Sample{s}
		return st
	}
	last := st.window[len(st.window)-1]
	dt := s.At.Sub(last.At).Seconds()
	if dt <= 0 {
		return st // a clock step backwards or a repeated sample: wait for the next
	}
	nic, ok1 := delta(last.NIC, s.NIC)
	_, ok2 := delta(last.Dfly, s.Dfly)
	if !ok1 || !ok2 || float64(nic.Rx)/dt > p.Implausible || float64(nic.Tx)/dt > p.Implausible {
		st.Skipped++
		st.window = []Sample{s}
		return st
	}
	// The window: the newest samples spanning at least Window (all of them
	// while there are fewer).
	w := append(make([]Sample, 0, len(st.window)+1), st.window...)
	w = append(w, s)
	for len(w) > 2 && !w[1].At.After(s.At.Add(-p.Window)) || len(w) > maxWindow {
		w = w[1:]
	}
	st.window = w
	span := s.At.Sub(w[0].At).Seconds()
	nicW, _ := delta(w[0].NIC, s.NIC)
	ownW, _ := delta(w[0].Dfly, s.Dfly)
	first := !st.Estimated
	st.Down = p.direction(st.Down, float64(nicW.Rx)/span, float64(ownW.Rx)/span, dt, first, p.CeilingDown, p.CapDown)
	st.Up = p.direction(st.Up, float64(nicW.Tx)/span, float64(ownW.Tx)/span, dt, first, p.CeilingUp, p.CapUp)
	st.Estimated = true
	return st
}

// delta is b − a per field; false when a counter went backwards.
func delta(a, b Counters) (Counters, bool) {
	if b.Rx < a.Rx || b.Tx < a.Tx {
		return Counters{}, false
	}
	return Counters{Rx: b.Rx - a.Rx, Tx: b.Tx - a.Tx}, true
}

// direction applies the rule to one direction: nicRate and ownRate are
// the window's rates (wire and payload bytes/s), dt the time since the
// last sample.
func (p Params) direction(d Dir, nicRate, ownRate, dt float64, first bool, ceiling, capRate float64) Dir {
	// Signed on purpose, and over a window: dfly's counters see bytes when
	// it reads them from its sockets, the NIC when they arrive, so one
	// interval can show dfly behind (others > 0) and the next ahead;
	// clamping each interval would turn that jitter into phantom traffic.
	others := nicRate - ownRate*(1+p.Overhead)
	d.Own = ownRate
	if first || others >= d.Others {
		d.Others = others
	} else {
		d.Others += ewma(dt, p.TauFall) * (others - d.Others)
	}
	target := max(ceiling*(1-p.Headroom)-max(d.Others, 0), 0)
	switch {
	case first || target <= d.Allowed:
		d.Allowed = target
	default:
		d.Allowed = min(target, d.Allowed+p.RampUp*ceiling*dt)
	}
	d.Limit = p.limit(d.Allowed/(1+p.Overhead), ceiling, capRate)
	return d
}

// ewma is the weight of a new value after dt seconds for time constant tau.
func ewma(dt float64, tau time.Duration) float64 {
	return 1 - math.Exp(-dt/tau.Seconds())
}

// limit clamps a payload rate to [floor, cap]. A direction without a
// ceiling is not controlled: its limit is the cap (0 = unlimited).
func (p Params) limit(v, ceiling, capRate float64) int64 {
	if ceiling <= 0 {
		return int64(capRate)
	}
	floor := min(max(p.FloorShare*ceiling, p.FloorMin), ceiling)
	v = max(v, floor)
	if capRate > 0 {
		v = min(v, capRate)
	}
	return int64(math.Round(v))
}

// Receive buffers. dfly limits its downloads where it reads them: a
// sender learns of that only through the TCP window, which the kernel's
// autotuning grows (up to net.ipv4.tcp_rmem's maximum, megabytes) while a
// paced reader drains its socket in gulps, so the sender runs ahead into ever larger buffers at the link's
// full rate (measured: 27 Mbit/s arriving under a 20 Mbit/s limit; the
// host's own flow lost a quarter of its share). A fixed receive buffer
// caps what a sender can have in flight.

// RTTBudget is the round-trip time up to which the receive buffers of
// ReceiveBuffer still let dfly's connections carry the whole ceiling.
const RTTBudget = 50 * time.Millisecond

// ReceiveBuffer returns the SO_RCVBUF (bytes) for each of conns download
// connections under a download ceiling (bytes/s): together they hold one
// RTTBudget of the ceiling, each at least 32 KiB and at most 4 MiB.
func ReceiveBuffer(ceiling int64, conns int) int {
	if ceiling <= 0 {
		return 0
	}
	conns = max(conns, 1)
	return int(min(max(float64(ceiling)*RTTBudget.Seconds()/float64(conns), 32<<10), 4<<20))
}
