package flow

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

const (
	mb      = 1e6
	ceil40  = 5 * mb // 40 Mbit/s in bytes/s
	tick    = 200 * time.Millisecond
	idleLim = ceil40 * 0.95 / 1.05 // what dfly gets on an idle link
)

// host simulates a link: the host's own traffic and dfly's, in bytes/s.
type host struct {
	p     Params
	st    State
	at    time.Time
	nic   Counters
	own   Counters
	limit []int64 // Down.Limit after every sample
}

func newHost(p Params) *host {
	h := &host{p: p, st: Initial(p), at: time.Unix(1_000_000, 0)}
	h.st = Decide(h.p, h.st, Sample{At: h.at})
	return h
}

// run advances d at tick intervals with the host's own flows at
// othersDown/othersUp and dfly at ownDown/ownUp (payload; the NIC counts
// 5% framing on top).
func (h *host) run(d time.Duration, othersDown, ownDown, othersUp, ownUp float64) {
	for t := time.Duration(0); t < d; t += tick {
		s := tick.Seconds()
		h.own.Rx += uint64(ownDown * s)
		h.own.Tx += uint64(ownUp * s)
		h.nic.Rx += uint64((othersDown + ownDown*1.05) * s)
		h.nic.Tx += uint64((othersUp + ownUp*1.05) * s)
		h.at = h.at.Add(tick)
		h.st = Decide(h.p, h.st, Sample{At: h.at, NIC: h.nic, Dfly: h.own})
		h.limit = append(h.limit, h.st.Down.Limit)
	}
}

func near(got int64, want, tol float64) bool {
	return math.Abs(float64(got)-want) <= tol*want
}

func TestDecideSteadyState(t *testing.T) {
	for _, c := range []struct {
		name                   string
		ceilDown, ceilUp       float64
		capDown, capUp         float64
		othersDown, ownDown    float64
		othersUp, ownUp        float64
		wantDown, wantUp       float64
		why                    string
		ignoreUp, ignoreDownOK bool
	}{
		{name: "idle host", ceilDown: ceil40, ceilUp: ceil40, wantDown: idleLim, wantUp: idleLim,
			why: "the ceiling minus the headroom, in payload"},
		{name: "dfly alone at full rate", ceilDown: ceil40, ceilUp: ceil40, ownDown: 4.5 * mb, ownUp: 4 * mb, wantDown: idleLim, wantUp: idleLim,
			why: "dfly's own bytes (and their framing) are not the host's traffic"},
		{name: "host flow takes 2 MB/s down", ceilDown: ceil40, ceilUp: ceil40, othersDown: 2 * mb, wantDown: 2.75 * mb / 1.05, wantUp: idleLim,
			why: "dfly gets what the host's flow leaves, per direction"},
		{name: "host flow beside dfly", ceilDown: ceil40, ceilUp: ceil40, othersDown: 2 * mb, ownDown: 2.6 * mb, othersUp: 1 * mb, ownUp: 0.5 * mb,
			wantDown: 2.75 * mb / 1.05, wantUp: 3.75 * mb / 1.05, why: "the estimate does not depend on what dfly moves"},
		{name: "host saturates the link", ceilDown: ceil40, ceilUp: ceil40, othersDown: 6 * mb, othersUp: 5 * mb, wantDown: 1 << 20, wantUp: 1 << 20,
			why: "the floor (1 MiB/s here) so dfly still completes"},
		{name: "fast link saturated", ceilDown: 1e9, ceilUp: 1e9, othersDown: 1e9, othersUp: 1e9, wantDown: 5e7, wantUp: 5e7,
			why: "the floor is 5% of a fast ceiling"},
		{name: "ceiling below the floor", ceilDown: 0.5 * mb, ceilUp: 0.5 * mb, othersDown: 1 * mb, othersUp: 1 * mb, wantDown: 0.5 * mb, wantUp: 0.5 * mb,
			why: "the floor never exceeds the ceiling"},
		{name: "fixed limit below", ceilDown: ceil40, ceilUp: ceil40, capDown: 1 * mb, capUp: 0.3 * mb, wantDown: 1 * mb, wantUp: 0.3 * mb,
			why: "--download-rate/--upload-rate stay hard limits, even below the floor"},
		{name: "fixed limit above", ceilDown: ceil40, ceilUp: ceil40, capDown: 10 * mb, capUp: 10 * mb, othersDown: 2 * mb, wantDown: 2.75 * mb / 1.05, wantUp: idleLim,
			why: "a fixed limit above the allowance changes nothing"},
		{name: "uncontrolled direction", ceilDown: ceil40, capUp: 2 * mb, wantDown: idleLim, wantUp: 2 * mb,
			why: "a direction without a ceiling keeps its fixed limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHost(Params{CeilingDown: c.ceilDown, CeilingUp: c.ceilUp, CapDown: c.capDown, CapUp: c.capUp})
			h.run(20*time.Second, c.othersDown, c.ownDown, c.othersUp, c.ownUp)
			if !near(h.st.Down.Limit, c.wantDown, 0.01) || !near(h.st.Up.Limit, c.wantUp, 0.01) {
				t.Fatalf("limits down %d up %d, want %.0f and %.0f (%s)", h.st.Down.Limit, h.st.Up.Limit, c.wantDown, c.wantUp, c.why)
			}
		})
	}
}

func TestDecideBacksOffFastRampsUpSlowly(t *testing.T) {
	p := Params{CeilingDown: ceil40, CeilingUp: ceil40}
	h := newHost(p)
	h.run(10*time.Second, 0, 4*mb, 0, 0)
	if !near(h.st.Down.Limit, idleLim, 0.01) {
		t.Fatalf("idle limit %d, want %.0f", h.st.Down.Limit, idleLim)
	}
	// A host flow of 3 MB/s starts while dfly runs at 1.5 MB/s.
	h.limit = nil
	h.run(time.Second, 3*mb, 1.5*mb, 0, 0)
	for i := 1; i < len(h.limit); i++ {
		if h.limit[i] > h.limit[i-1] {
			t.Fatalf("limit rose while the host's traffic grew: %v", h.limit)
		}
	}
	backedOff := 1.75 * mb / 1.05
	if !near(h.st.Down.Limit, backedOff, 0.02) {
		t.Fatalf("after one window of the host's flow the limit is %d, want %.0f (back-off within the window): %v", h.st.Down.Limit, backedOff, h.limit)
	}
	// The host flow stops: dfly takes the link back step by step.
	h.limit = nil
	h.run(tick, 0, 1.5*mb, 0, 0)
	maxStep := p.withDefaults().RampUp * ceil40 * tick.Seconds() / 1.05
	if got := float64(h.st.Down.Limit) - backedOff; got > maxStep*1.02 {
		t.Fatalf("the limit grew by %.0f in one interval, want at most %.0f (slow ramp-up)", got, maxStep)
	}
	h.run(2*time.Second, 0, 1.5*mb, 0, 0)
	if float64(h.st.Down.Limit) >= idleLim*0.99 {
		t.Fatalf("the limit is back at %d 2.2 s after the host's flow stopped: no ramp", h.st.Down.Limit)
	}
	h.run(15*time.Second, 0, 1.5*mb, 0, 0)
	if !near(h.st.Down.Limit, idleLim, 0.01) {
		t.Fatalf("the limit is %d 17 s after the host's flow stopped, want %.0f", h.st.Down.Limit, idleLim)
	}
}

func TestDecideFirstInterval(t *testing.T) {
	p := Params{CeilingDown: ceil40, CeilingUp: ceil40}
	st := Initial(p)
	if st.Down.Limit != 1<<20 || st.Up.Limit != 1<<20 {
		t.Fatalf("initial limits %d/%d, want the floor until a first measurement", st.Down.Limit, st.Up.Limit)
	}
	t0 := time.Unix(100, 0)
	st = Decide(p, st, Sample{At: t0, NIC: Counters{Rx: 1 << 40, Tx: 1 << 40}})
	if st.Down.Limit != 1<<20 || st.Estimated {
		t.Fatalf("one sample changed the limit to %d: it is no interval", st.Down.Limit)
	}
	st = Decide(p, st, Sample{At: t0.Add(tick), NIC: Counters{Rx: 1<<40 + 400_000, Tx: 1 << 40}})
	if want := (4.75*mb - 2*mb) / 1.05; !near(st.Down.Limit, want, 0.01) || !near(st.Up.Limit, idleLim, 0.01) {
		t.Fatalf("after the first interval limits %d/%d, want %.0f/%.0f at once (no ramp from the floor)", st.Down.Limit, st.Up.Limit, want, idleLim)
	}
	// A sample that does not advance the clock changes nothing.
	again := Decide(p, st, Sample{At: t0.Add(tick), NIC: Counters{Rx: 1 << 50}})
	if again.Down != st.Down || again.Skipped != 0 {
		t.Fatalf("a repeated timestamp changed the state: %+v", again.Down)
	}
}

func TestDecideDoesNotShareState(t *testing.T) {
	p := Params{CeilingDown: ceil40, CeilingUp: ceil40}
	h := newHost(p)
	h.run(2*time.Second, 1*mb, 0, 0, 0)
	base := h.st
	s := Sample{At: h.at.Add(tick), NIC: Counters{Rx: h.nic.Rx + 1_000_000, Tx: h.nic.Tx}, Dfly: h.own}
	a := Decide(p, base, s)
	_ = Decide(p, base, Sample{At: h.at.Add(tick), NIC: Counters{Rx: h.nic.Rx + 5, Tx: h.nic.Tx}, Dfly: h.own})
	b := Decide(p, base, s)
	if a.Down != b.Down {
		t.Fatalf("deciding from one state twice gave %+v and %+v: the state is shared", a.Down, b.Down)
	}
}

func TestDecideCounterTrouble(t *testing.T) {
	const wrap32 = 1<<32 - 1000
	for _, c := range []struct {
		name string
		// bad returns the NIC and dfly counters of the bad sample, given the last ones.
		bad func(nic, own Counters) (Counters, Counters)
	}{
		{"interface down and up", func(nic, own Counters) (Counters, Counters) { return Counters{Rx: 10_000, Tx: 5_000}, own }},
		{"32-bit wrap", func(nic, own Counters) (Counters, Counters) { return Counters{Rx: 500, Tx: nic.Tx + 1000}, own }},
		{"new interface with old counters", func(nic, own Counters) (Counters, Counters) {
			return Counters{Rx: nic.Rx + 1<<40, Tx: nic.Tx + 1<<40}, own
		}},
		{"dfly's counter went back", func(nic, own Counters) (Counters, Counters) { return nic, Counters{} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := Params{CeilingDown: ceil40, CeilingUp: ceil40}
			h := newHost(p)
			h.nic = Counters{Rx: wrap32 - 10_000_000, Tx: 1 << 33}
			h.st = Decide(p, Initial(p), Sample{At: h.at, NIC: h.nic, Dfly: h.own})
			h.run(5*time.Second, 1*mb, 2*mb, 0, 0)
			before := h.st
			h.nic, h.own = c.bad(h.nic, h.own)
			h.at = h.at.Add(tick)
			h.st = Decide(p, h.st, Sample{At: h.at, NIC: h.nic, Dfly: h.own})
			if h.st.Skipped != 1 || h.st.Down.Limit != before.Down.Limit || h.st.Up.Limit != before.Up.Limit {
				t.Fatalf("bad interval: skipped %d, limits %d/%d, want 1 and unchanged %d/%d", h.st.Skipped, h.st.Down.Limit, h.st.Up.Limit, before.Down.Limit, before.Up.Limit)
			}
			// The next intervals measure from the new values: no spike.
			h.limit = nil
			h.run(3*time.Second, 1*mb, 2*mb, 0, 0)
			want := 3.75 * mb / 1.05
			for _, l := range h.limit {
				if !near(l, want, 0.02) {
					t.Fatalf("limits after the bad interval %v, want all near %.0f", h.limit, want)
				}
			}
		})
	}
}

func TestDecideJitterIsNotTraffic(t *testing.T) {
	// dfly downloads 4 MB/s; its counter sees the bytes when it reads them
	// from its sockets, so it lags the NIC's by up to half an interval's
	// bytes, by a different amount every interval.
	p := Params{CeilingDown: ceil40, CeilingUp: ceil40}
	h := newHost(p)
	rng := rand.New(rand.NewPCG(1, 2))
	chunk := 4 * mb * tick.Seconds()
	var arrived float64
	for i := range 200 {
		arrived += chunk
		h.nic.Rx = uint64(arrived * 1.05)
		h.own.Rx = uint64(arrived - rng.Float64()*chunk/2)
		h.at = h.at.Add(tick)
		h.st = Decide(p, h.st, Sample{At: h.at, NIC: h.nic, Dfly: h.own})
		if i >= 20 && h.st.Down.Others > 0.1*ceil40 {
			t.Fatalf("interval %d: the others' estimate is %.0f B/s with no host traffic at all", i, h.st.Down.Others)
		}
	}
	if !near(h.st.Down.Limit, idleLim, 0.12) {
		t.Fatalf("limit %d, want about %.0f", h.st.Down.Limit, idleLim)
	}
	// Clamping every interval instead would see about a quarter of an
	// interval's bytes as the host's traffic all the time.
}

func TestReceiveBuffer(t *testing.T) {
	for _, c := range []struct {
		ceiling int64
		conns   int
		want    int
	}{
		{5e6, 8, 32 << 10},   // 40 Mbit/s: the minimum
		{125e6, 8, 781250},   // 1 Gbit/s: 50 ms of it over 8 connections
		{1.25e9, 8, 4 << 20}, // 10 Gbit/s: the maximum
		{125e6, 0, 4 << 20},  // no connection count: one
		{0, 8, 0},            // no ceiling: the kernel's autotuning
	} {
		if got := ReceiveBuffer(c.ceiling, c.conns); got != c.want {
			t.Errorf("ReceiveBuffer(%d, %d) = %d, want %d", c.ceiling, c.conns, got, c.want)
		}
	}
}
