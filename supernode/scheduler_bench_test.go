package supernode

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// benchSwarm registers peers on one task of 256 blocks: the seed holds every
// block, each peer a random half, spread over 4 idcs × 8 racks with varied
// capacities and some history.
func benchSwarm(b *testing.B, peers int) (*Scheduler, []string) {
	b.Helper()
	const blocks = 256
	s := NewScheduler(SchedulerConfig{})
	if err := s.EnsureTask(TaskInfo{ID: "bench", Length: blocks << 22, BlockSize: 4 << 20}); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	s.UpsertHost(HostInfo{ID: "seed", UploadAddr: "seed:8001", IsSeed: true}, 0)
	_ = s.AddBlocks("bench", "seed", seq(0, blocks))
	ids := make([]string, peers)
	for i := range peers {
		id := fmt.Sprintf("peer-%05d", i)
		ids[i] = id
		s.UpsertHost(HostInfo{ID: id, UploadAddr: id + ":8001", IDC: fmt.Sprint("idc", i%4), Rack: fmt.Sprint("rack", i%32),
			Capacity: int64(50+rng.IntN(150)) << 20}, 0)
		bm := make([]byte, blocks/8)
		for j := range bm {
			bm[j] = byte(rng.Uint32())
		}
		if err := s.SetHolding("bench", id, bm); err != nil {
			b.Fatal(err)
		}
	}
	// Some history so that the norm and slow detection are live.
	for i := range peers {
		for range 3 {
			s.Report("bench", ids[(i+1)%peers], []Result{{ParentID: ids[i], OK: true, Bytes: 4 << 20, Duration: time.Duration(20+rng.IntN(200)) * time.Millisecond}})
		}
	}
	return s, ids
}

// BenchmarkParentSelection measures one parent-selection decision (ranked
// parents for one wanted block) with 1,000 and 10,000 peers on one task, and
// the per-decision cost inside a Sync of 64 wants. Each decision's chosen
// parent reports a result afterwards (outside the timed part), as in a swarm.
// Reported: decisions/s (over the timed part only) and p99 latency.
func BenchmarkParentSelection(b *testing.B) {
	for _, peers := range []int{1000, 10000} {
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("peers=%d/wants=%d", peers, batch), func(b *testing.B) {
				s, ids := benchSwarm(b, peers)
				rng := rand.New(rand.NewPCG(3, 4))
				lat := make([]time.Duration, 0, b.N)
				var total time.Duration
				decisions := 0
				wants := make([]int, batch)
				b.ResetTimer()
				for range b.N {
					req := ids[rng.IntN(len(ids))]
					for j := range wants {
						wants[j] = rng.IntN(256)
					}
					t0 := time.Now()
					as, err := s.Assign("bench", req, wants, nil, 0)
					d := time.Since(t0)
					if err != nil || len(as) == 0 {
						b.Fatalf("assign: %v, %d assignments", err, len(as))
					}
					total += d
					decisions += len(wants)
					lat = append(lat, d/time.Duration(len(wants)))
					results := make([]Result, len(as))
					for j, a := range as {
						results[j] = Result{Block: a.Block, ParentID: a.Parents[0].HostID, OK: true, Bytes: 4 << 20, Duration: 50 * time.Millisecond}
					}
					s.Report("bench", req, results)
				}
				b.StopTimer()
				slices.Sort(lat)
				b.ReportMetric(float64(decisions)/total.Seconds(), "decisions/s")
				b.ReportMetric(float64(lat[len(lat)*99/100])/float64(time.Microsecond), "p99-µs/decision")
			})
		}
	}
}
