package supernode

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time      { return c.t }
func (c *fakeClock) Add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }
func all(n int) []int                    { return seq(0, n) }
func seq(a, b int) []int {
	var s []int
	for i := a; i < b; i++ {
		s = append(s, i)
	}
	return s
}
func parentIDs(a Assignment) (ids []string) {
	for _, p := range a.Parents {
		ids = append(ids, p.HostID)
	}
	return ids
}

const testTask = "t1"

// newTestScheduler builds a scheduler with one 8-block task of 1 MiB blocks.
func newTestScheduler(t *testing.T, cfg SchedulerConfig) (*Scheduler, *fakeClock) {
	t.Helper()
	clk := newClock()
	cfg.Now = clk.Now
	s := NewScheduler(cfg)
	if err := s.EnsureTask(TaskInfo{ID: testTask, Length: 8 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	return s, clk
}

func addHost(t *testing.T, s *Scheduler, h HostInfo, blocks ...int) {
	t.Helper()
	if h.UploadAddr == "" {
		h.UploadAddr = h.ID + ":8001"
	}
	s.UpsertHost(h, 0)
	if err := s.AddBlocks(testTask, h.ID, blocks); err != nil {
		t.Fatal(err)
	}
}

func TestAssignRanking(t *testing.T) {
	req := HostInfo{ID: "req", IDC: "a", Rack: "r1"}
	tests := []struct {
		name    string
		hosts   []HostInfo
		prepare func(s *Scheduler) // load, history
		want    []string
	}{
		{
			name:  "rack then idc then elsewhere then seed",
			hosts: []HostInfo{{ID: "seed", IsSeed: true}, {ID: "far", IDC: "b"}, {ID: "idc", IDC: "a", Rack: "r9"}, {ID: "rack", IDC: "a", Rack: "r1"}},
			want:  []string{"rack", "idc", "far", "seed"},
		},
		{
			name:  "peer of unknown idc counts as near, a seed of unknown idc as far",
			hosts: []HostInfo{{ID: "seed", IsSeed: true}, {ID: "far", IDC: "b"}, {ID: "nolabel"}},
			want:  []string{"nolabel", "far", "seed"},
		},
		{
			name:  "the seed in my idc before a peer in another idc",
			hosts: []HostInfo{{ID: "seed", IsSeed: true, IDC: "a"}, {ID: "far", IDC: "b"}},
			want:  []string{"seed", "far"},
		},
		{
			name:  "a seed in another idc after a peer there",
			hosts: []HostInfo{{ID: "seed", IsSeed: true, IDC: "b"}, {ID: "far", IDC: "b"}},
			want:  []string{"far", "seed"},
		},
		{
			name:  "a saturated holder in my idc before an idle one in another",
			hosts: []HostInfo{{ID: "far", IDC: "b"}, {ID: "full", IDC: "a"}},
			prepare: func(s *Scheduler) {
				s.UpsertHost(HostInfo{ID: "full", UploadAddr: "full:1", IDC: "a"}, 6)
			},
			want: []string{"full", "far"},
		},
		{
			name:  "only the seed holds it",
			hosts: []HostInfo{{ID: "seed", IsSeed: true}},
			want:  []string{"seed"},
		},
		{
			name:  "at most MaxParents",
			hosts: []HostInfo{{ID: "seed", IsSeed: true}, {ID: "p1"}, {ID: "p2"}, {ID: "p3"}, {ID: "p4"}, {ID: "p5", IDC: "a"}},
			want:  []string{"p5", "p1", "p2", "p3"},
		},
		{
			name:  "least loaded relative to capacity",
			hosts: []HostInfo{{ID: "busy", IDC: "a", Capacity: 10 << 20}, {ID: "big", IDC: "a", Capacity: 40 << 20}, {ID: "idle", IDC: "a", Capacity: 10 << 20}},
			prepare: func(s *Scheduler) {
				s.UpsertHost(HostInfo{ID: "busy", UploadAddr: "busy:1", IDC: "a", Capacity: 10 << 20}, 2)
				s.UpsertHost(HostInfo{ID: "big", UploadAddr: "big:1", IDC: "a", Capacity: 40 << 20}, 2) // 2 in flight but 4x capacity
			},
			want: []string{"idle", "big", "busy"},
		},
		{
			name:  "history breaks ties",
			hosts: []HostInfo{{ID: "meh", IDC: "a"}, {ID: "fast", IDC: "a"}, {ID: "new", IDC: "a"}},
			prepare: func(s *Scheduler) {
				for range 3 {
					s.Report(testTask, "x", []Result{
						{ParentID: "fast", OK: true, Bytes: 1 << 20, Duration: 10 * time.Millisecond},
						{ParentID: "meh", OK: true, Bytes: 1 << 20, Duration: 40 * time.Millisecond},
					})
				}
			},
			// norm = median of {fast, meh}; "new" has no samples and counts as the norm.
			want: []string{"fast", "new", "meh"},
		},
		{
			name:  "locality beats load",
			hosts: []HostInfo{{ID: "far", IDC: "b"}, {ID: "near", IDC: "a"}},
			prepare: func(s *Scheduler) {
				s.UpsertHost(HostInfo{ID: "near", UploadAddr: "near:1", IDC: "a"}, 3)
			},
			want: []string{"near", "far"},
		},
		{
			name:  "saturated peer falls behind the seed of its idc",
			hosts: []HostInfo{{ID: "seed", IsSeed: true, IDC: "a"}, {ID: "full", IDC: "a", Rack: "r1"}},
			prepare: func(s *Scheduler) {
				s.UpsertHost(HostInfo{ID: "full", UploadAddr: "full:1", IDC: "a", Rack: "r1"}, 6)
			},
			want: []string{"seed", "full"},
		},
		{
			name:  "saturated local peer before a seed of unknown idc",
			hosts: []HostInfo{{ID: "seed", IsSeed: true}, {ID: "full", IDC: "a", Rack: "r1"}},
			prepare: func(s *Scheduler) {
				s.UpsertHost(HostInfo{ID: "full", UploadAddr: "full:1", IDC: "a", Rack: "r1"}, 6)
			},
			want: []string{"full", "seed"},
		},
		{
			name:  "host without upload address is never a parent",
			hosts: []HostInfo{{ID: "seed", IsSeed: true}, {ID: "mute", UploadAddr: "-"}},
			prepare: func(s *Scheduler) {
				s.UpsertHost(HostInfo{ID: "mute", IDC: "a"}, 0)
			},
			want: []string{"seed"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestScheduler(t, SchedulerConfig{})
			addHost(t, s, req)
			for _, h := range tc.hosts {
				addHost(t, s, h, 3)
			}
			if tc.prepare != nil {
				tc.prepare(s)
			}
			as, err := s.Assign(testTask, "req", []int{3}, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(as) != 1 {
				t.Fatalf("got %d assignments, want 1", len(as))
			}
			if got := parentIDs(as[0]); !slices.Equal(got, tc.want) {
				t.Fatalf("parents = %v, want %v", got, tc.want)
			}
			if as[0].Block != 3 {
				t.Fatalf("block = %d, want 3", as[0].Block)
			}
		})
	}
}

func TestAssignSpreadsLoadAndLimitsParallelAssignments(t *testing.T) {
	s, _ := newTestScheduler(t, SchedulerConfig{MaxAssignPerParent: 2, SeedMaxAssign: 3})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "p1"}, all(8)...)
	addHost(t, s, HostInfo{ID: "p2"}, all(8)...)
	addHost(t, s, HostInfo{ID: "req"})
	as, err := s.Assign(testTask, "req", all(8), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, a := range as {
		count[a.Parents[0].HostID]++
	}
	// p1 and p2 take two each (their limit), then the seed three (its limit); one block waits.
	if count["p1"] != 2 || count["p2"] != 2 || count["seed"] != 3 || len(as) != 7 {
		t.Fatalf("first parents %v over %d assignments; want p1=2 p2=2 seed=3 (7)", count, len(as))
	}
	// The seed comes first only after every peer is saturated.
	for i, a := range as {
		if (a.Parents[0].HostID == "seed") != (i >= 4) {
			t.Fatalf("assignment %d went to %s: the seed must be last resort", i, a.Parents[0].HostID)
		}
	}
	// Everybody saturated: a requester still gets one assignment.
	as, _ = s.Assign(testTask, "req", []int{0, 1}, nil, 0)
	if len(as) != 1 {
		t.Fatalf("all parents saturated: got %d assignments, want exactly 1 (every peer gets work)", len(as))
	}
	// Results release load.
	s.Report(testTask, "req", []Result{{Block: 0, ParentID: "p1", OK: true, Bytes: 1 << 20, Duration: time.Millisecond}})
	as, _ = s.Assign(testTask, "req", []int{7}, nil, 0)
	if len(as) != 1 || as[0].Parents[0].HostID != "p1" {
		t.Fatalf("after p1 reported a result it should be chosen again, got %+v", as)
	}
}

func TestAssignmentLoadExpires(t *testing.T) {
	s, clk := newTestScheduler(t, SchedulerConfig{MaxAssignPerParent: 1, AssignTTL: 5 * time.Second})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "p1"}, all(8)...)
	addHost(t, s, HostInfo{ID: "req"})
	as, _ := s.Assign(testTask, "req", []int{0, 1}, nil, 0)
	if got := []string{as[0].Parents[0].HostID, as[1].Parents[0].HostID}; !slices.Equal(got, []string{"p1", "seed"}) {
		t.Fatalf("first parents %v, want [p1 seed]", got)
	}
	clk.Add(6 * time.Second)
	s.Touch("p1")
	s.Touch("req")
	as, _ = s.Assign(testTask, "req", []int{2}, nil, 0)
	if as[0].Parents[0].HostID != "p1" {
		t.Fatalf("after AssignTTL p1's unreported assignment must stop counting; got %v", parentIDs(as[0]))
	}
}

func TestAssignOnlyKnownDigestsAndHeldBlocks(t *testing.T) {
	s, _ := newTestScheduler(t, SchedulerConfig{})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, 0, 1, 2)
	addHost(t, s, HostInfo{ID: "req"}, 5)
	known := func(b int) bool { return b != 1 }
	as, err := s.Assign(testTask, "req", []int{2, 1, 0, 4, 5, 99, -1, 2}, known, 0)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []int
	for _, a := range as {
		blocks = append(blocks, a.Block)
		if a.Holders != 1 {
			t.Fatalf("block %d: holders %d, want 1", a.Block, a.Holders)
		}
	}
	// 1: digest unknown; 4: nobody holds it; 5: only the requester; 99/-1: out of range; 2 twice: once.
	if !slices.Equal(blocks, []int{2, 0}) {
		t.Fatalf("assigned blocks %v, want [2 0] in the requester's order", blocks)
	}
	if _, err := s.Assign("nope", "req", []int{0}, nil, 0); !errors.Is(err, ErrUnknownTask) {
		t.Fatalf("unknown task: err %v", err)
	}
	if _, err := s.Assign(testTask, "ghost", []int{0}, nil, 0); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("unknown host: err %v", err)
	}
}

func TestBlock(t *testing.T) {
	s, _ := newTestScheduler(t, SchedulerConfig{})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "liar"}, all(8)...)
	addHost(t, s, HostInfo{ID: "r1"})
	addHost(t, s, HostInfo{ID: "r2"})
	s.Report(testTask, "r1", []Result{{Block: 0, ParentID: "liar", BadDigest: true}})
	if !s.Excluded(testTask, "r1", "liar") || s.Excluded(testTask, "r2", "liar") || s.Blocked(testTask, "liar") {
		t.Fatal("a report must exclude the parent for its reporter only")
	}
	as, _ := s.Assign(testTask, "r2", []int{0}, nil, 0)
	if got := parentIDs(as[0]); !slices.Equal(got, []string{"liar", "seed"}) {
		t.Fatalf("r2's parents %v: an unconfirmed report must not isolate the parent", got)
	}
	s.Block(testTask, "liar")
	s.Block(testTask, "seed")
	if !s.Blocked(testTask, "liar") || s.Blocked(testTask, "seed") {
		t.Fatal("Block: the liar must be blocked, the seed never")
	}
	as, _ = s.Assign(testTask, "r2", []int{0}, nil, 0)
	if got := parentIDs(as[0]); !slices.Equal(got, []string{"seed"}) {
		t.Fatalf("r2's parents after Block %v, want [seed]", got)
	}
}

func TestIsolation(t *testing.T) {
	tests := []struct {
		name    string
		results []Result
		want    []string // parents of block 0 for "req" afterwards
		blocked bool     // "liar" blocked for the task
	}{
		{
			// A report is only the reporter's word: it avoids the parent;
			// blocking for everyone waits for the supernode's own check
			// (TestBlock, TestBadBlockReports).
			name:    "bad digest: the reporter avoids the parent",
			results: []Result{{Block: 0, ParentID: "liar", BadDigest: true}},
			want:    []string{"good", "seed"},
		},
		{
			name:    "one plain failure changes little",
			results: []Result{{Block: 0, ParentID: "liar"}},
			want:    []string{"liar", "good", "seed"},
		},
		{
			name: "repeated failures deprioritise",
			results: []Result{
				{Block: 0, ParentID: "liar"}, {Block: 1, ParentID: "liar"}, {Block: 2, ParentID: "liar"},
			},
			want: []string{"good", "liar", "seed"},
		},
		{
			name: "a success resets the failure streak",
			results: []Result{
				{Block: 0, ParentID: "liar"}, {Block: 1, ParentID: "liar"}, {Block: 2, ParentID: "liar"},
				{Block: 2, ParentID: "liar", OK: true, Bytes: 1 << 20, Duration: 10 * time.Millisecond},
			},
			want: []string{"liar", "good", "seed"},
		},
		{
			name:    "the seed is never blocked",
			results: []Result{{Block: 0, ParentID: "seed", BadDigest: true}},
			want:    []string{"liar", "good", "seed"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestScheduler(t, SchedulerConfig{})
			if err := s.EnsureTask(TaskInfo{ID: "other", Length: 1 << 20, BlockSize: 1 << 20}); err != nil {
				t.Fatal(err)
			}
			addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
			addHost(t, s, HostInfo{ID: "liar", IDC: "a"}, all(8)...)
			addHost(t, s, HostInfo{ID: "good"}, all(8)...)
			addHost(t, s, HostInfo{ID: "req", IDC: "a"})
			if err := s.AddBlocks("other", "liar", []int{0}); err != nil {
				t.Fatal(err)
			}
			s.Report(testTask, "req", tc.results)
			// Re-announcing its blocks must not bring a blocked host back.
			if err := s.SetHolding(testTask, "liar", []byte{0xff}); err != nil {
				t.Fatal(err)
			}
			if err := s.AddBlocks(testTask, "liar", []int{0}); err != nil {
				t.Fatal(err)
			}
			as, _ := s.Assign(testTask, "req", []int{0}, nil, 0)
			if got := parentIDs(as[0]); !slices.Equal(got, tc.want) {
				t.Fatalf("parents = %v, want %v", got, tc.want)
			}
			if got := s.Blocked(testTask, "liar"); got != tc.blocked {
				t.Fatalf("blocked = %v, want %v", got, tc.blocked)
			}
			// Isolation is per task.
			as, _ = s.Assign("other", "req", []int{0}, nil, 0)
			if len(as) != 1 || as[0].Parents[0].HostID != "liar" {
				t.Fatalf("liar must stay a parent for another task, got %+v", as)
			}
		})
	}
}

func TestSlowHostDeprioritised(t *testing.T) {
	s, clk := newTestScheduler(t, SchedulerConfig{})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "snail", IDC: "a", Rack: "r1"}, all(8)...) // nearest, but slow
	for _, id := range []string{"f1", "f2", "f3"} {
		addHost(t, s, HostInfo{ID: id, IDC: "b"}, all(8)...)
	}
	addHost(t, s, HostInfo{ID: "req", IDC: "a", Rack: "r1"})
	for range 3 {
		s.Report(testTask, "req", []Result{
			{ParentID: "snail", OK: true, Bytes: 1 << 20, Duration: time.Second}, // 1 MiB/s
			{ParentID: "f1", OK: true, Bytes: 1 << 20, Duration: 20 * time.Millisecond},
			{ParentID: "f2", OK: true, Bytes: 1 << 20, Duration: 25 * time.Millisecond},
			{ParentID: "f3", OK: true, Bytes: 1 << 20, Duration: 30 * time.Millisecond},
		})
	}
	clk.Add(1100 * time.Millisecond) // the norm is recomputed at most once a second
	for _, id := range []string{"seed", "snail", "f1", "f2", "f3", "req"} {
		s.Touch(id)
	}
	as, _ := s.Assign(testTask, "req", []int{0}, nil, 0)
	if got := parentIDs(as[0]); !slices.Equal(got, []string{"f1", "f2", "f3", "snail"}) {
		t.Fatalf("parents = %v, want the fast remote peers before the slow local one", got)
	}
	st := s.State()
	for _, h := range st.Hosts {
		if (h.ID == "snail") != h.Deprior {
			t.Fatalf("host %s deprioritised=%v", h.ID, h.Deprior)
		}
	}
}

func TestExpiry(t *testing.T) {
	s, clk := newTestScheduler(t, SchedulerConfig{HeartbeatInterval: 2 * time.Second})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "quiet"}, all(8)...)
	addHost(t, s, HostInfo{ID: "alive"}, 0)
	addHost(t, s, HostInfo{ID: "req"})
	steps := []struct {
		advance time.Duration
		want    []string // parents of block 0
		expired []string
	}{
		{0, []string{"alive", "quiet", "seed"}, nil},
		{5 * time.Second, []string{"alive", "quiet", "seed"}, nil}, // 2.5 heartbeats missed: still there
		{2 * time.Second, []string{"alive", "seed"}, []string{"quiet"}},
		{10 * time.Second, []string{"alive", "seed"}, nil},
	}
	for i, st := range steps {
		clk.Add(st.advance)
		s.Touch("alive")
		s.Touch("req")
		// Selection ignores an expired host even before Expire runs.
		as, _ := s.Assign(testTask, "req", []int{0}, nil, 0)
		if got := parentIDs(as[0]); !slices.Equal(sortedExceptLast(got), st.want) {
			t.Fatalf("step %d: parents %v, want %v", i, got, st.want)
		}
		s.Report(testTask, "req", []Result{{ParentID: as[0].Parents[0].HostID, OK: true}}) // release load
		if got := s.Expire(); !slices.Equal(got, st.expired) {
			t.Fatalf("step %d: expired %v, want %v", i, got, st.expired)
		}
	}
	if s.HasHost("quiet") || s.Holders(testTask, 1) != 1 {
		t.Fatalf("expired host must be gone with its holdings; holders of block 1 = %d", s.Holders(testTask, 1))
	}
	if !s.HasHost("seed") {
		t.Fatal("the seed never expires")
	}
	// An expired host that comes back must announce its holdings again.
	addHost(t, s, HostInfo{ID: "quiet"})
	if n := s.Holders(testTask, 1); n != 1 {
		t.Fatalf("returning host holds nothing until it says so; holders = %d", n)
	}
}

func sortedExceptLast(ids []string) []string {
	out := slices.Clone(ids)
	if len(out) > 1 {
		slices.Sort(out[:len(out)-1])
	}
	return out
}

func TestHoldingsAndLeave(t *testing.T) {
	s, _ := newTestScheduler(t, SchedulerConfig{})
	addHost(t, s, HostInfo{ID: "a"})
	addHost(t, s, HostInfo{ID: "b"})
	bm := blockstore.NewBitmap(8)
	bm.Set(1)
	bm.Set(7)
	if err := s.SetHolding(testTask, "a", bm); err != nil {
		t.Fatal(err)
	}
	if s.Holders(testTask, 1) != 1 || s.Holders(testTask, 7) != 1 || s.Holders(testTask, 0) != 0 {
		t.Fatal("SetHolding did not record blocks 1 and 7")
	}
	// A shorter bitmap replaces the holding: block 7 is gone.
	if err := s.SetHolding(testTask, "a", []byte{0b10}); err != nil {
		t.Fatal(err)
	}
	if s.Holders(testTask, 1) != 1 || s.Holders(testTask, 7) != 0 {
		t.Fatal("SetHolding must replace the previous bitmap")
	}
	// Many replace cycles keep the holder lists compact and exact.
	for range 50 {
		_ = s.SetHolding(testTask, "b", []byte{0xff})
		_ = s.SetHolding(testTask, "b", []byte{0x00})
	}
	_ = s.SetHolding(testTask, "b", []byte{0x02})
	if n := s.Holders(testTask, 1); n != 2 {
		t.Fatalf("holders of block 1 = %d, want 2", n)
	}
	as, _ := s.Assign(testTask, "a", []int{1}, nil, 0)
	if len(as) != 1 || len(as[0].Parents) != 1 || as[0].Parents[0].HostID != "b" {
		t.Fatalf("a must get exactly b (never itself or a duplicate): %+v", as)
	}
	s.Leave("b", testTask)
	if n := s.Holders(testTask, 1); n != 1 || !s.HasHost("b") {
		t.Fatalf("after b left the task: holders %d (want 1), host known %v", n, s.HasHost("b"))
	}
	s.Leave("a", "")
	if s.HasHost("a") || s.Holders(testTask, 1) != 0 {
		t.Fatal("after a left entirely it must be gone with its holdings")
	}
	// A task whose shape changes is reset.
	_ = s.AddBlocks(testTask, "b", []int{3})
	if err := s.EnsureTask(TaskInfo{ID: testTask, Length: 4 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if n := s.Holders(testTask, 3); n != 0 {
		t.Fatalf("reshaped task must drop old holdings, holders = %d", n)
	}
	if err := s.EnsureTask(TaskInfo{ID: "", Length: 1, BlockSize: 1}); err == nil {
		t.Fatal("empty task id accepted")
	}
}

func TestResetTaskKeepsOnlyOneHolder(t *testing.T) {
	s, _ := newTestScheduler(t, SchedulerConfig{})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, 0)
	addHost(t, s, HostInfo{ID: "old"}, 0)
	s.ResetTask(testTask, "seed")
	st := s.State()
	if len(st.Tasks) != 1 || len(st.Tasks[0].Holders) != 1 || st.Tasks[0].Holders["seed"] != 1 {
		t.Fatalf("after reset want only the seed holding 1 block, got %+v", st.Tasks)
	}
}

func TestAssignLimit(t *testing.T) {
	s, _ := newTestScheduler(t, SchedulerConfig{})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "req"})
	as, _ := s.Assign(testTask, "req", all(8), nil, 3)
	if len(as) != 3 {
		t.Fatalf("limit 3: got %d assignments", len(as))
	}
	if st := s.State(); st.Hosts[1].ID != "seed" || st.Hosts[1].Assigned != 3 {
		t.Fatalf("only the handed-out assignments count as load: %+v", st.Hosts)
	}
}

// TestSwarmSimulation runs the scheduler against a simulated swarm in rounds:
// 8 peers in 2 idcs, one seed whose upload slots are scarce, 64 blocks. Each
// round every peer asks for its missing blocks (shuffled) with as many
// assignments as it has free slots; transfers finish at the end of the round
// and are reported. It checks that the swarm completes, that most blocks come
// from peers rather than the seed, and that peers stay inside their idc.
func TestSwarmSimulation(t *testing.T) {
	const (
		blocks = 64
		peers  = 8
		slots  = 4
	)
	clk := newClock()
	s := NewScheduler(SchedulerConfig{Now: clk.Now, MaxAssignPerParent: 4, SeedMaxAssign: 4})
	if err := s.EnsureTask(TaskInfo{ID: "sim", Length: blocks << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	s.UpsertHost(HostInfo{ID: "seed", UploadAddr: "seed:1", IsSeed: true}, 0)
	_ = s.AddBlocks("sim", "seed", seq(0, blocks))
	type peer struct {
		id, idc string
		have    map[int]bool
	}
	ps := make([]*peer, peers)
	for i := range ps {
		ps[i] = &peer{id: fmt.Sprintf("p%d", i), idc: []string{"a", "b"}[i%2], have: map[int]bool{}}
		s.UpsertHost(HostInfo{ID: ps[i].id, UploadAddr: ps[i].id + ":1", IDC: ps[i].idc}, 0)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	fromSeed, fromPeers, crossIDC := 0, 0, 0
	idcOf := map[string]string{}
	for _, p := range ps {
		idcOf[p.id] = p.idc
	}
	rounds := 0
	for ; rounds < 200; rounds++ {
		done := 0
		type transfer struct {
			to     *peer
			block  int
			parent string
		}
		var ts []transfer
		for _, i := range rng.Perm(peers) {
			p := ps[i]
			var wants []int
			for b := range blocks {
				if !p.have[b] {
					wants = append(wants, b)
				}
			}
			if len(wants) == 0 {
				done++
				continue
			}
			rng.Shuffle(len(wants), func(i, j int) { wants[i], wants[j] = wants[j], wants[i] })
			as, err := s.Assign("sim", p.id, wants, nil, slots)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range as {
				ts = append(ts, transfer{p, a.Block, a.Parents[0].HostID})
			}
		}
		if done == peers {
			break
		}
		for _, tr := range ts {
			tr.to.have[tr.block] = true
			_ = s.AddBlocks("sim", tr.to.id, []int{tr.block})
			s.Report("sim", tr.to.id, []Result{{Block: tr.block, ParentID: tr.parent, OK: true, Bytes: 1 << 20, Duration: 100 * time.Millisecond}})
			if tr.parent == "seed" {
				fromSeed++
			} else {
				fromPeers++
				if idcOf[tr.parent] != idcOf[tr.to.id] {
					crossIDC++
				}
			}
		}
		clk.Add(100 * time.Millisecond)
		for _, p := range ps {
			s.Touch(p.id)
		}
	}
	total := fromSeed + fromPeers
	t.Logf("rounds %d, from seed %d, from peers %d, cross-idc %d", rounds, fromSeed, fromPeers, crossIDC)
	if total != blocks*peers {
		t.Fatalf("transfers %d, want %d (every block once per peer)", total, blocks*peers)
	}
	if fromPeers*2 < total {
		t.Fatalf("only %d of %d blocks came from peers; want at least half", fromPeers, total)
	}
	// Copies the seed uploads: a handful per block at most, not one per peer.
	if fromSeed*2 > 3*blocks {
		t.Fatalf("seed uploaded %d blocks (%.2f copies); want at most 1.5 copies", fromSeed, float64(fromSeed)/blocks)
	}
	// Random parent choice would send about 4/7 of peer transfers across idcs.
	if crossIDC*5 > fromPeers {
		t.Fatalf("%d of %d peer transfers crossed idcs; want under a fifth", crossIDC, fromPeers)
	}
}

func TestIdleTaskForgotten(t *testing.T) {
	s, clk := newTestScheduler(t, SchedulerConfig{TaskIdle: time.Minute, HeartbeatInterval: time.Hour})
	if err := s.EnsureTask(TaskInfo{ID: "held", Length: 1 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	_ = s.AddBlocks("held", "seed", []int{0})
	addHost(t, s, HostInfo{ID: "p"})
	_ = s.AddBlocks("held", "p", []int{0})
	clk.Add(30 * time.Second)
	if _, err := s.Assign(testTask, "p", []int{0}, nil, 0); err != nil { // used: stays
		t.Fatal(err)
	}
	clk.Add(45 * time.Second)
	s.Touch("p")
	s.Expire()
	if _, ok := s.Task(testTask); !ok {
		t.Fatal("task used 45s ago was forgotten")
	}
	if _, ok := s.Task("held"); !ok {
		t.Fatal("task a peer holds was forgotten")
	}
	clk.Add(20 * time.Second)
	s.Touch("p")
	s.Expire()
	if _, ok := s.Task(testTask); ok {
		t.Fatal("task only the seed holds, idle 65s, is still known")
	}
	if _, ok := s.Task("held"); !ok {
		t.Fatal("task a peer holds was forgotten")
	}
}

func TestSeedDedup(t *testing.T) {
	s, clk := newTestScheduler(t, SchedulerConfig{DedupTTL: 3 * time.Second, AssignTTL: 10 * time.Second})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "p1"})
	addHost(t, s, HostInfo{ID: "p2"})
	blocksOf := func(as []Assignment) (out []int) {
		for _, a := range as {
			out = append(out, a.Block)
		}
		return out
	}
	// p1 fetches block 0 from the seed.
	if as, _ := s.Assign(testTask, "p1", []int{0}, nil, 0); !slices.Equal(blocksOf(as), []int{0}) {
		t.Fatalf("p1: %+v", as)
	}
	steps := []struct {
		name    string
		do      func()
		host    string
		wants   []int
		want    []int    // assigned blocks
		parents []string // parents of the first assignment
	}{
		{"in flight from the seed: others wait for it", nil, "p2", []int{0, 1}, []int{1}, []string{"seed"}},
		{"the fetching peer itself may ask again", nil, "p1", []int{0}, []int{0}, []string{"seed"}},
		{"only busy blocks wanted: nothing yet", nil, "p2", []int{0}, nil, nil},
		{"once p1 holds it, p2 gets it from p1", func() { _ = s.AddBlocks(testTask, "p1", []int{0}) }, "p2", []int{0}, []int{0}, []string{"p1", "seed"}},
		{"a result from the seed clears it", func() {
			_, _ = s.Assign(testTask, "p1", []int{2}, nil, 0)
			s.Report(testTask, "p1", []Result{{Block: 2, ParentID: "seed"}})
		}, "p2", []int{2, 3}, []int{2, 3}, []string{"seed"}},
		{"an unreported fetch stops counting after DedupTTL", func() {
			_, _ = s.Assign(testTask, "p1", []int{4}, nil, 0)
			clk.Add(4 * time.Second)
			s.Touch("p1")
			s.Touch("p2")
		}, "p2", []int{4, 5}, []int{4, 5}, []string{"seed"}},
	}
	for _, st := range steps {
		if st.do != nil {
			st.do()
		}
		as, err := s.Assign(testTask, st.host, st.wants, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		var first []string
		if len(as) > 0 {
			first = parentIDs(as[0])
		}
		if !slices.Equal(blocksOf(as), st.want) || !slices.Equal(first, st.parents) {
			t.Fatalf("%s: assigned %v (parents %v), want %v (parents %v)", st.name, blocksOf(as), first, st.want, st.parents)
		}
		// Release load so saturation plays no part.
		for _, a := range as {
			if a.Parents[0].HostID != "seed" {
				s.Report(testTask, st.host, []Result{{Block: a.Block, ParentID: a.Parents[0].HostID, OK: true}})
			}
		}
	}
}

func TestWaitForCopyInOwnIDC(t *testing.T) {
	s, _ := newTestScheduler(t, SchedulerConfig{})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true}, all(8)...)
	addHost(t, s, HostInfo{ID: "b1", IDC: "b"}, 6, 7)
	addHost(t, s, HostInfo{ID: "a1", IDC: "a"})
	addHost(t, s, HostInfo{ID: "a2", IDC: "a"})
	addHost(t, s, HostInfo{ID: "b2", IDC: "b"})
	first := func(host string, wants ...int) (blocks []int, parents [][]string) {
		as, err := s.Assign(testTask, host, wants, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			blocks = append(blocks, a.Block)
			parents = append(parents, parentIDs(a))
			s.Report(testTask, host, []Result{{Block: -1, ParentID: a.Parents[0].HostID, OK: true}}) // release load only
		}
		return blocks, parents
	}
	// a1 crosses into idc b for block 6: nobody in idc a has or fetches it.
	if b, p := first("a1", 6); !slices.Equal(b, []int{6}) || p[0][0] != "b1" {
		t.Fatalf("a1: %v %v", b, p)
	}
	// a2 (same idc) waits for a1's copy of 6 and takes 7 meanwhile.
	if b, _ := first("a2", 6, 7); !slices.Equal(b, []int{7}) {
		t.Fatalf("a2 got %v, want [7] (6 is on its way into idc a)", b)
	}
	// b2 is in idc b: b1 is local to it, nothing to wait for.
	if b, p := first("b2", 6); !slices.Equal(b, []int{6}) || p[0][0] != "b1" {
		t.Fatalf("b2: %v %v", b, p)
	}
	// a1 stored 6: a2 now gets it inside idc a.
	_ = s.AddBlocks(testTask, "a1", []int{6})
	if b, p := first("a2", 6); !slices.Equal(b, []int{6}) || p[0][0] != "a1" {
		t.Fatalf("a2 after a1 stored 6: %v %v", b, p)
	}
}

// TestMaxCrossIDCTransfers: transfers from parents in another idc into one
// idc are bounded per task; a result, a "have" or AssignTTL frees a place;
// parents in the requester's idc, and unlabelled hosts, are not bounded.
func TestMaxCrossIDCTransfers(t *testing.T) {
	s, clk := newTestScheduler(t, SchedulerConfig{MaxCrossIDCTransfers: 2, AssignTTL: 10 * time.Second, DedupTTL: time.Second})
	addHost(t, s, HostInfo{ID: "seed", IsSeed: true, IDC: "a"}, all(8)...)
	addHost(t, s, HostInfo{ID: "b1", IDC: "b"})
	addHost(t, s, HostInfo{ID: "b2", IDC: "b"})
	addHost(t, s, HostInfo{ID: "b3", IDC: "b"}, 6, 7)
	addHost(t, s, HostInfo{ID: "u"}) // no idc label
	assigned := func(host string, wants ...int) (blocks []int) {
		t.Helper()
		as, err := s.Assign(testTask, host, wants, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			blocks = append(blocks, a.Block)
		}
		return blocks
	}
	steps := []struct {
		name  string
		do    func()
		host  string
		wants []int
		want  []int
	}{
		{"two cross-idc transfers into b at most", nil, "b1", []int{0, 1, 2}, []int{0, 1}},
		{"the bound is per idc, not per host", nil, "b2", []int{3}, nil},
		{"a parent in b's own idc is not bounded", nil, "b2", []int{6, 7}, []int{6, 7}},
		{"an unlabelled host is not bounded", nil, "u", []int{3}, []int{3}},
		{"a result frees a place", func() {
			s.Report(testTask, "b1", []Result{{Block: 0, ParentID: "seed", OK: true}})
		}, "b2", []int{2, 4}, []int{2}},
		{"a have frees a place", func() { _ = s.AddBlocks(testTask, "b1", []int{1}) }, "b2", []int{4}, []int{4}},
		{"full again", nil, "b1", []int{5}, nil},
		{"an unreported transfer stops counting after AssignTTL", func() {
			clk.Add(11 * time.Second)
			for _, h := range []string{"seed", "b1", "b2", "b3", "u"} {
				s.Touch(h)
			}
		}, "b1", []int{5, 0}, []int{5, 0}},
	}
	for _, st := range steps {
		if st.do != nil {
			st.do()
		}
		if got := assigned(st.host, st.wants...); !slices.Equal(got, st.want) {
			t.Fatalf("%s: %s got %v, want %v", st.name, st.host, got, st.want)
		}
	}
}
