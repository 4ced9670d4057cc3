package supernode

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/supernode/api"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

// scrape gathers reg into name{label="value",...} → value; a histogram
// gives name_count and name_sum.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
				out[key+"_sum"] = m.GetHistogram().GetSampleSum()
			default:
				t.Fatalf("%s: unexpected metric type %v", key, mf.GetType())
			}
		}
	}
	return out
}

// contractSeries are the supernode's series of docs/metrics.md, each of
// which must exist from the first scrape.
func contractSeries() []string {
	return []string{
		"dfly_supernode_peers",
		"dfly_supernode_tasks",
		"dfly_scheduler_sync_duration_seconds_count",
		`dfly_scheduler_assignments_total{parent="peer"}`,
		`dfly_scheduler_assignments_total{parent="seed"}`,
		"dfly_scheduler_withheld_total",
		`dfly_seed_cache_total{result="hit"}`,
		`dfly_seed_cache_total{result="miss"}`,
		`dfly_seed_cache_total{result="revalidated"}`,
		`dfly_seed_cache_total{result="refetched"}`,
		"dfly_seed_origin_bytes_total",
		"dfly_seed_upload_bytes_total",
		`dfly_preheat_jobs{state="queued"}`,
		`dfly_preheat_jobs{state="running"}`,
		`dfly_preheat_jobs{state="succeeded"}`,
		`dfly_preheat_jobs{state="failed"}`,
		`dfly_preheat_jobs{state="canceled"}`,
		"dfly_store_bytes",
		"dfly_store_quota_bytes",
		"dfly_store_tasks",
		"dfly_store_evictions_total",
	}
}

// TestMetricsSeriesExistAtZero: before any supernode is attached, every
// series of the contract is there, at 0, and nothing else is.
func TestMetricsSeriesExistAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	got := scrape(t, reg)
	for _, k := range contractSeries() {
		v, ok := got[k]
		if !ok {
			t.Errorf("series %s missing from the first scrape", k)
		} else if v != 0 {
			t.Errorf("series %s = %v at start, want 0", k, v)
		}
	}
	if want := len(contractSeries()) + 1; len(got) != want { // + the histogram's _sum
		t.Errorf("%d series, want %d: %v", len(got), want, got)
	}
}

// TestMetricsNilSafe: a nil *Metrics (no metrics configured) and one
// registered nowhere both take every call.
func TestMetricsNilSafe(t *testing.T) {
	for _, m := range []*Metrics{nil, NewMetrics(nil)} {
		m.observeSync(time.Millisecond)
		m.assigned([]Assignment{{Parents: []Parent{{IsSeed: true}}}})
		m.seedCached(cacheHit)
		m.attach(liveSource{sched: NewScheduler(SchedulerConfig{})})
	}
}

func TestMetricsAssignedByParent(t *testing.T) {
	peer, seed := Parent{HostID: "p"}, Parent{HostID: "seed", IsSeed: true}
	tests := []struct {
		name         string
		as           []Assignment
		peers, seeds float64
	}{
		{"none", nil, 0, 0},
		{"from the seed", []Assignment{{Parents: []Parent{seed}}}, 0, 1},
		{"the first parent is the charged one", []Assignment{{Parents: []Parent{peer, seed}}, {Parents: []Parent{seed, peer}}}, 1, 1},
		{"peers only", []Assignment{{Parents: []Parent{peer}}, {Parents: []Parent{peer}}, {Parents: []Parent{peer}}}, 3, 0},
		{"an assignment without parents counts nothing", []Assignment{{}}, 0, 0},
	}
	for _, tc := range tests {
		reg := prometheus.NewRegistry()
		NewMetrics(reg).assigned(tc.as)
		got := scrape(t, reg)
		if p, s := got[`dfly_scheduler_assignments_total{parent="peer"}`], got[`dfly_scheduler_assignments_total{parent="seed"}`]; p != tc.peers || s != tc.seeds {
			t.Errorf("%s: peer %v, seed %v; want %v, %v", tc.name, p, s, tc.peers, tc.seeds)
		}
	}
}

func TestMetricsObserveSync(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.observeSync(3 * time.Millisecond)
	m.observeSync(-time.Second) // a clock step: recorded as 0, never negative
	got := scrape(t, reg)
	if c, s := got["dfly_scheduler_sync_duration_seconds_count"], got["dfly_scheduler_sync_duration_seconds_sum"]; c != 2 || s != 0.003 {
		t.Fatalf("sync histogram count %v sum %v, want 2 and 0.003", c, s)
	}
}

// TestSupernodeMetrics runs a supernode with metrics: two peers register
// and sync over gRPC, fetch from the seed, and a preheat job runs; the
// scrape shows the peers and the task, assignments by parent kind, Sync
// latency samples, cache results, the seed's origin and upload bytes and
// the job.
func TestSupernodeMetrics(t *testing.T) {
	o := startOrigin(t)
	content := origin.Content{Size: 3<<20 + 100, Seed: 31}
	url := o.Add("m.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")
	reg := prometheus.NewRegistry()
	sn, err := Start(Config{
		StoreDir: t.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Source: testSource(), Logger: testLogger(), SyncWait: 2 * time.Second, Metrics: NewMetrics(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	c := dial(t, sn)
	// Scrapes race with the traffic below (the race detector watches).
	stop, scraped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scraped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := reg.Gather(); err != nil {
				t.Errorf("gather during traffic: %v", err)
				return
			}
		}
	}()
	var once sync.Once
	stopScrapes := func() { once.Do(func() { close(stop); <-scraped }) }
	defer stopScrapes()

	a := newPeer(t, c, "peer-a", "")
	a.announce(false)
	reg1 := a.register(id, url)
	wants := []int32{0, 1, 2, 3}
	_, assigned := a.syncUntil(id, wants)
	for _, b := range wants {
		if st, body, _ := a.fetch(assigned[b].Parents[0].UploadAddr, id, b, reg1.Token); st != 200 {
			t.Fatalf("fetch block %d from the seed: HTTP %d %s", b, st, body)
		}
	}
	waitSeedComplete(t, sn, id)
	a.sync(&api.SyncRequest{TaskId: id, Have: wants, Done: true})
	b := newPeer(t, c, "peer-b", "")
	b.announce(false)
	b.register(id, url)
	if resp := b.sync(&api.SyncRequest{TaskId: id, Want: []int32{2}}); len(resp.Assignments) != 1 || resp.Assignments[0].Parents[0].HostId != "peer-a" {
		t.Fatalf("peer-b's assignment %+v, want block 2 from peer-a", resp.Assignments)
	}

	job, err := sn.Preheat().Submit(preheat.Request{Type: preheat.TypeURL, URL: url})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if j, err := sn.Preheat().Wait(ctx, job.ID); err != nil || j.State != preheat.StateSucceeded {
		t.Fatalf("preheat job %+v, %v", j, err)
	}

	stopScrapes()
	got := scrape(t, reg)
	exact := map[string]float64{
		"dfly_supernode_peers":                            2,
		"dfly_supernode_tasks":                            1,
		`dfly_scheduler_assignments_total{parent="peer"}`: 1,
		`dfly_seed_cache_total{result="miss"}`:            1,
		"dfly_seed_origin_bytes_total":                    float64(content.Size),
		"dfly_seed_upload_bytes_total":                    float64(content.Size),
		`dfly_preheat_jobs{state="succeeded"}`:            1,
		"dfly_store_tasks":                                1,
		"dfly_store_bytes":                                float64(content.Size),
		`dfly_preheat_jobs{state="running"}`:              0,
		`dfly_seed_cache_total{result="refetched"}`:       0,
		"dfly_scheduler_withheld_total":                   0,
	}
	for k, want := range exact {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	// peer-b's registration and the preheat job's found the seed's copy
	// (within RevalidateAfter, or revalidated after it: both are fine).
	if n := got[`dfly_seed_cache_total{result="hit"}`] + got[`dfly_seed_cache_total{result="revalidated"}`]; n < 2 {
		t.Errorf("seed cache hits+revalidations %v, want at least 2 (peer-b and the preheat job)", n)
	}
	// syncUntil asks again until every want is assigned: at least once each.
	if n := got[`dfly_scheduler_assignments_total{parent="seed"}`]; n < float64(len(wants)) {
		t.Errorf("%v assignments from the seed, want at least %d", n, len(wants))
	}
	if n := got["dfly_scheduler_sync_duration_seconds_count"]; n < 3 {
		t.Errorf("%v Sync calls observed, want at least 3", n)
	}
}
