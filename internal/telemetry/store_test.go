package telemetry

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestStoreCollector: the gauges read the store's stats at every scrape,
// and the names, types and help pass the Prometheus linter.
func TestStoreCollector(t *testing.T) {
	var calls atomic.Int64
	st := StoreStats{Bytes: 3 << 20, Quota: 10 << 20, Tasks: 2, Evictions: 1}
	c := NewStoreCollector(func() StoreStats { calls.Add(1); return st })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	want := `
# HELP dfly_store_bytes Bytes the block store's quota counts: the sum of the lengths of its tasks, complete or still downloading.
# TYPE dfly_store_bytes gauge
dfly_store_bytes 3.145728e+06
# HELP dfly_store_evictions_total Tasks evicted (least recently used first) to make room under the quota since the store was opened.
# TYPE dfly_store_evictions_total counter
dfly_store_evictions_total 1
# HELP dfly_store_quota_bytes The block store's quota in bytes (0: none).
# TYPE dfly_store_quota_bytes gauge
dfly_store_quota_bytes 1.048576e+07
# HELP dfly_store_tasks Tasks in the block store.
# TYPE dfly_store_tasks gauge
dfly_store_tasks 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	st = StoreStats{Bytes: 5, Tasks: 3, Evictions: 4}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			got[mf.GetName()] = g.GetValue()
		} else {
			got[mf.GetName()] = m.GetCounter().GetValue()
		}
	}
	for name, v := range map[string]float64{"dfly_store_bytes": 5, "dfly_store_quota_bytes": 0, "dfly_store_tasks": 3, "dfly_store_evictions_total": 4} {
		if got[name] != v {
			t.Errorf("after the store changed: %s = %v, want %v", name, got[name], v)
		}
	}
	if calls.Load() < 2 {
		t.Errorf("stats read %d times for 2 scrapes: the gauges must read the store at scrape time", calls.Load())
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
