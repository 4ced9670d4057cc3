package supernode

import (
	"testing"
	"time"
)

// TestSchedulerCounts: peers exclude the seed, tasks are those known, and
// Withheld counts every block held back for a closer copy on its way —
// not blocks merely unheld, and not those the cross-idc cap defers.
func TestSchedulerCounts(t *testing.T) {
	s, clk := newTestScheduler(t, SchedulerConfig{DedupTTL: 3 * time.Second, MaxCrossIDCTransfers: 1})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	assign := func(host string, wants ...int) {
		as, err := s.Assign(testTask, host, wants, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			s.Report(testTask, host, []Result{{Block: -1, ParentID: a.Parents[0].HostID, OK: true}}) // release load only
		}
	}
	steps := []struct {
		name string
		do   func()
		want SchedulerCounts
	}{
		{"only the seed: no peers", nil, SchedulerCounts{Peers: 0, Tasks: 1}},
		{"two peers and a second task", func() {
			addHost(t, s, HostInfo{ID: "p1"})
			addHost(t, s, HostInfo{ID: "p2"})
			if err := s.EnsureTask(TaskInfo{ID: "t2", Length: 1 << 20, BlockSize: 1 << 20}); err != nil {
				t.Fatal(err)
			}
		}, SchedulerCounts{Peers: 2, Tasks: 2}},
		{"p1 fetches block 0 from the seed: nothing withheld", func() { assign("p1", 0) }, SchedulerCounts{Peers: 2, Tasks: 2}},
		{"p2 wants 0 and 1: 0 is withheld (p1 brings it)", func() { assign("p2", 0, 1) }, SchedulerCounts{Peers: 2, Tasks: 2, Withheld: 1}},
		{"asked again: withheld again", func() { assign("p2", 0) }, SchedulerCounts{Peers: 2, Tasks: 2, Withheld: 2}},
		{"p1 holds it: p2 gets it from p1, no more withholding", func() {
			_ = s.AddBlocks(testTask, "p1", []int{0})
			assign("p2", 0)
		}, SchedulerCounts{Peers: 2, Tasks: 2, Withheld: 2}},
		{"a block nobody holds is not withheld", func() {
			s.RemoveBlocks(testTask, "seed", []int{7})
			assign("p2", 7)
		}, SchedulerCounts{Peers: 2, Tasks: 2, Withheld: 2}},
		{"the cross-idc cap defers, it does not withhold", func() {
			addHost(t, s, HostInfo{ID: "b1", IDC: "b"}, 5, 6)
			addHost(t, s, HostInfo{ID: "a1", IDC: "a"})
			if as, _ := s.Assign(testTask, "a1", []int{5}, nil, 0); len(as) != 1 {
				t.Fatalf("a1 got %+v, want block 5 from b1", as)
			}
			if as, _ := s.Assign(testTask, "a1", []int{6}, nil, 0); len(as) != 0 {
				t.Fatalf("a1 got %+v past the cross-idc cap", as)
			}
		}, SchedulerCounts{Peers: 4, Tasks: 2, Withheld: 2}},
		{"expired peers are no longer counted", func() {
			clk.Add(time.Minute)
			s.Expire()
		}, SchedulerCounts{Peers: 0, Tasks: 2, Withheld: 2}},
	}
	for _, st := range steps {
		if st.do != nil {
			st.do()
		}
		if got := s.Counts(); got != st.want {
			t.Fatalf("%s: counts %+v, want %+v", st.name, got, st.want)
		}
	}
}
