package supernode

import (
	"net/http"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

func TestHostOrders(t *testing.T) {
	s := NewScheduler(SchedulerConfig{})
	s.UpsertHost(HostInfo{ID: "seed", IsSeed: true}, 0)
	s.UpsertHost(HostInfo{ID: "a1", IDC: "a", Rack: "r1", UploadAddr: "a1:1"}, 0)
	s.UpsertHost(HostInfo{ID: "b1", IDC: "b", UploadAddr: "b1:1"}, 0)
	if err := s.EnsureTask(TaskInfo{ID: "t1", Length: 4 << 20, BlockSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	o := newHostOrders(s, "seed")
	live := o.Live()
	if len(live) != 2 || live[0] != (preheat.HostInfo{ID: "a1", IDC: "a", Rack: "r1"}) || live[1].ID != "b1" {
		t.Fatalf("live %+v, want a1 and b1 (not the seed)", live)
	}
	h := http.Header{"Authorization": {"Bearer x"}}
	o.Order("a1", "j1", preheat.Target{TaskID: "t1", URL: "http://o/f", Header: h})
	o.Order("a1", "j2", preheat.Target{TaskID: "t2", URL: "http://o/g"})
	got := o.pending("a1")
	if len(got) != 2 || got[0].GetJobId() != "j1" || got[0].GetUrl() != "http://o/f" || len(got[0].GetHeaders()) != 1 || got[0].GetHeaders()[0].GetValue() != "Bearer x" {
		t.Fatalf("pending %+v", got)
	}
	if len(o.pending("b1")) != 0 {
		t.Fatal("b1 got orders it was never given")
	}
	// Progress comes from the scheduler; a host holding it all gets the order no more.
	bm := blockstore.NewBitmap(4)
	bm.Set(0)
	bm.Set(1)
	if err := s.SetHolding("t1", "a1", bm); err != nil {
		t.Fatal(err)
	}
	if held, total, f := o.Held("a1", "j1", "t1"); held != 2 || total != 4 || f != "" {
		t.Fatalf("Held = %d/%d %q", held, total, f)
	}
	bm.Set(2)
	bm.Set(3)
	if err := s.SetHolding("t1", "a1", bm); err != nil {
		t.Fatal(err)
	}
	if got := o.pending("a1"); len(got) != 1 || got[0].GetTaskId() != "t2" {
		t.Fatalf("pending after a1 holds t1: %+v, want only t2", got)
	}
	// A failure report is kept for the job and stops the order; stale ones are dropped.
	o.report("a1", []*api.PreheatReport{{JobId: "j2", TaskId: "t2", Error: "no space left on device"}, {JobId: "zz", TaskId: "t9", Error: "stale"}})
	if _, _, f := o.Held("a1", "j2", "t2"); f != "no space left on device" {
		t.Fatalf("failure %q", f)
	}
	if _, _, f := o.Held("a1", "zz", "t9"); f != "" {
		t.Fatal("a report for an order never given was kept")
	}
	if len(o.pending("a1")) != 0 {
		t.Fatal("a failed order is still sent")
	}
	o.Withdraw("j2")
	o.Withdraw("j1")
	if len(o.orders) != 0 || len(o.failures) != 0 {
		t.Fatalf("after withdrawing every job: orders %v failures %v", o.orders, o.failures)
	}
}
