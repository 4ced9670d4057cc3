package telemetry

import "github.com/prometheus/client_golang/prometheus"

// StoreStats is what the block store gauges report (a block store's Stats,
// converted by the caller: this package depends on no dfly package).
type StoreStats struct {
	// Bytes is what the quota counts: the sum of the stored tasks' lengths.
	Bytes int64
	// Quota is the store's quota in bytes (0: none).
	Quota int64
	// Tasks is the number of tasks in the store.
	Tasks int
	// Evictions counts the tasks evicted to make room since the store opened.
	Evictions int64
}

// NewStoreCollector returns a collector that calls stats at every scrape
// and reports dfly_store_bytes, dfly_store_quota_bytes, dfly_store_tasks
// and dfly_store_evictions_total. Register one per store.
func NewStoreCollector(stats func() StoreStats) prometheus.Collector {
	return &storeCollector{stats: stats,
		bytes: prometheus.NewDesc("dfly_store_bytes",
			"Bytes the block store's quota counts: the sum of the lengths of its tasks, complete or still downloading.", nil, nil),
		quota: prometheus.NewDesc("dfly_store_quota_bytes",
			"The block store's quota in bytes (0: none).", nil, nil),
		tasks: prometheus.NewDesc("dfly_store_tasks",
			"Tasks in the block store.", nil, nil),
		evictions: prometheus.NewDesc("dfly_store_evictions_total",
			"Tasks evicted (least recently used first) to make room under the quota since the store was opened.", nil, nil),
	}
}

type storeCollector struct {
	stats                          func() StoreStats
	bytes, quota, tasks, evictions *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.quota
	ch <- c.tasks
	ch <- c.evictions
}

// Collect implements prometheus.Collector.
func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(c.quota, prometheus.GaugeValue, float64(s.Quota))
	ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(s.Tasks))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(s.Evictions))
}
