package sim

import (
	"math"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// runFlows drains the event queue.
func runFlows(t *testing.T, q *events) {
	t.Helper()
	for i := 0; q.step(); i++ {
		if i > 1e6 {
			t.Fatal("event queue does not drain")
		}
	}
}

func TestNetOneFlowEndsAtSizeOverRate(t *testing.T) {
	q := &events{}
	n := newNet(q)
	a, b := n.NewHost(100, 100), n.NewHost(100, 50)
	var at float64
	n.Start(a, b, 1000, func(*Flow) { at = q.now })
	runFlows(t, q)
	if !near(at, 20) { // limited by b's download: 1000 / 50
		t.Fatalf("flow ended at %v, want 20", at)
	}
	if a.Sent != 1000 || n.Delivered != 1000 || a.Uploads() != 0 || b.Downloads() != 0 {
		t.Fatalf("accounting: sent %d delivered %d uploads %d downloads %d", a.Sent, n.Delivered, a.Uploads(), b.Downloads())
	}
}

func TestNetSharing(t *testing.T) {
	for _, tc := range []struct {
		name string
		// two flows: src and dst host indices, bytes, start time
		hosts [][2]float64 // up, down
		flows [][4]float64 // src, dst, bytes, start
		want  []float64    // completion times
	}{
		{
			name:  "two flows from one uploader get half each",
			hosts: [][2]float64{{100, 0}, {0, 1000}, {0, 1000}},
			flows: [][4]float64{{0, 1, 1000, 0}, {0, 2, 1000, 0}},
			want:  []float64{20, 20},
		},
		{
			name:  "two flows into one downloader get half each",
			hosts: [][2]float64{{1000, 0}, {1000, 0}, {0, 100}},
			flows: [][4]float64{{0, 2, 1000, 0}, {1, 2, 1000, 0}},
			want:  []float64{20, 20},
		},
		{
			name: "a flow speeds up when the other ends",
			// first: 500 bytes at 50/s for 10s, the second then has 500 left at 100/s
			hosts: [][2]float64{{100, 0}, {0, 1000}, {0, 1000}},
			flows: [][4]float64{{0, 1, 500, 0}, {0, 2, 1000, 0}},
			want:  []float64{10, 15},
		},
		{
			name: "a late flow slows the first one down",
			// first alone 10s (1000 bytes), then both at 50/s: first's
			// remaining 1000 takes 20s more, second's 1000 too
			hosts: [][2]float64{{100, 0}, {0, 1000}, {0, 1000}},
			flows: [][4]float64{{0, 1, 2000, 0}, {0, 2, 1000, 10}},
			want:  []float64{30, 30},
		},
		{
			name: "the min rule: a flow held back at its other end leaves capacity unused",
			// a uploads to b and c; c's download is 10: a's share 50 each,
			// so a→b gets 50 (max-min fair would give it 90).
			hosts: [][2]float64{{100, 0}, {0, 1000}, {0, 10}},
			flows: [][4]float64{{0, 1, 1000, 0}, {0, 2, 1000, 0}},
			want:  []float64{20, 100}, // c: 1000 bytes at 10/s throughout
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := &events{}
			n := newNet(q)
			var hs []*Host
			for _, h := range tc.hosts {
				hs = append(hs, n.NewHost(h[0], h[1]))
			}
			got := make([]float64, len(tc.flows))
			for i, f := range tc.flows {
				q.at(f[3], func() {
					n.Start(hs[int(f[0])], hs[int(f[1])], int64(f[2]), func(*Flow) { got[i] = q.now })
				})
			}
			runFlows(t, q)
			for i := range tc.want {
				if !near(got[i], tc.want[i]) {
					t.Errorf("flow %d ended at %v, want %v (all: %v)", i, got[i], tc.want[i], got)
				}
			}
		})
	}
}

func TestEventsOrderAndTies(t *testing.T) {
	q := &events{}
	var order []int
	q.at(2, func() { order = append(order, 3) })
	q.at(1, func() { order = append(order, 1) })
	q.at(1, func() {
		order = append(order, 2)
		q.after(0, func() { order = append(order, 25) }) // same time, after the ones queued earlier
	})
	for q.step() {
	}
	want := []int{1, 2, 25, 3}
	if len(order) != len(want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("order %v, want %v", order, want)
		}
	}
	if q.fired != 4 || q.now != 2 {
		t.Fatalf("fired %d now %v", q.fired, q.now)
	}
}
