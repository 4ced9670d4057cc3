package supernode

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

// Seed cache results (dfly_seed_cache_total{result}).
const (
	// cacheHit: the seed answered from its copy, or from its run of the
	// task under way, without asking the origin.
	cacheHit = "hit"
	// cacheMiss: the task was not in the seed's store; fetched from the origin.
	cacheMiss = "miss"
	// cacheRevalidated: the origin confirmed the stored copy (304, or the
	// same validators and length).
	cacheRevalidated = "revalidated"
	// cacheRefetched: the origin's content changed (or a partial copy had
	// nothing to compare it by); the copy was dropped and fetched anew.
	cacheRefetched = "refetched"
)

// Parent kinds (dfly_scheduler_assignments_total{parent}).
const (
	parentPeer = "peer"
	parentSeed = "seed"
)

// Metrics are the supernode's Prometheus collectors (docs/metrics.md,
// "Supernode"). Make one per process with NewMetrics and pass it in
// Config.Metrics; a nil *Metrics counts nothing, so callers and tests
// without metrics need none.
//
// What the supernode already counts — peers, tasks, blocks withheld, the
// seed's origin and upload bytes, preheat jobs, the seed's store
// (dfly_store_*) — is read at scrape time from the running supernode;
// Sync latency, assignments and seed cache results are recorded as they
// happen.
type Metrics struct {
	syncDuration prometheus.Histogram
	assignments  *prometheus.CounterVec
	seedCache    *prometheus.CounterVec
	live         *liveCollector
	store        prometheus.Collector // the seed's store (telemetry.NewStoreCollector)
}

// NewMetrics creates the supernode's collectors, every series at 0, and
// registers them with reg (nil: unregistered, for tests). It panics when
// reg already holds them (one Metrics per registry).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "dfly_scheduler_sync_duration_seconds",
			Help: "Time one Sync call spent scheduling (holdings, results, digests, parent choice), without its bounded waits for the seed.",
			// 100µs .. ~1.6s
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
		}),
		assignments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dfly_scheduler_assignments_total",
			Help: "Blocks assigned to requesters, by the kind of their first (charged) parent.",
		}, []string{"parent"}),
		seedCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dfly_seed_cache_total",
			Help: "How the seed answered for a task: hit (its copy or run, origin not asked), miss (fetched from the origin), revalidated (origin confirmed the copy), refetched (origin content changed: fetched anew).",
		}, []string{"result"}),
		live: newLiveCollector(),
	}
	m.store = telemetry.NewStoreCollector(m.live.storeStats)
	for _, p := range []string{parentPeer, parentSeed} {
		m.assignments.WithLabelValues(p)
	}
	for _, r := range []string{cacheHit, cacheMiss, cacheRevalidated, cacheRefetched} {
		m.seedCache.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.assignments, m.seedCache, m.live, m.store)
	}
	return m
}

// observeSync records the scheduling time of one Sync call.
func (m *Metrics) observeSync(d time.Duration) {
	if m == nil {
		return
	}
	m.syncDuration.Observe(max(d, 0).Seconds())
}

// assigned counts assignments by their first parent's kind.
func (m *Metrics) assigned(as []Assignment) {
	if m == nil {
		return
	}
	var peers, seeds int
	for _, a := range as {
		if len(a.Parents) == 0 {
			continue
		}
		if a.Parents[0].IsSeed {
			seeds++
		} else {
			peers++
		}
	}
	if peers > 0 {
		m.assignments.WithLabelValues(parentPeer).Add(float64(peers))
	}
	if seeds > 0 {
		m.assignments.WithLabelValues(parentSeed).Add(float64(seeds))
	}
}

// seedCached counts one seed cache result (cacheHit, ...).
func (m *Metrics) seedCached(result string) {
	if m == nil {
		return
	}
	m.seedCache.WithLabelValues(result).Inc()
}

// attach makes scrapes read src (the running supernode's parts).
func (m *Metrics) attach(src liveSource) {
	if m == nil {
		return
	}
	m.live.set(src)
}

// liveSource is what a scrape reads; any part may be nil (its series are 0).
type liveSource struct {
	store   *blockstore.Store
	sched   *Scheduler
	seed    *Seed
	upload  *UploadServer
	preheat *preheat.Manager
}

// liveCollector reports, at scrape time, what the supernode's parts count.
type liveCollector struct {
	peers, tasks, withheld, originBytes, uploadBytes, preheatJobs *prometheus.Desc

	mu  sync.Mutex
	src liveSource
}

func newLiveCollector() *liveCollector {
	return &liveCollector{
		peers:       prometheus.NewDesc("dfly_supernode_peers", "Peers (hosts other than the seed) the scheduler knows; silent ones expire after 3 heartbeats.", nil, nil),
		tasks:       prometheus.NewDesc("dfly_supernode_tasks", "Tasks the scheduler knows.", nil, nil),
		withheld:    prometheus.NewDesc("dfly_scheduler_withheld_total", "Wanted blocks withheld because a closer copy was on its way (the requester gets it from that copy shortly).", nil, nil),
		originBytes: prometheus.NewDesc("dfly_seed_origin_bytes_total", "Content bytes the seed fetched from origins.", nil, nil),
		uploadBytes: prometheus.NewDesc("dfly_seed_upload_bytes_total", "Block bytes the seed's upload server sent to peers.", nil, nil),
		preheatJobs: prometheus.NewDesc("dfly_preheat_jobs", "Preheat jobs the supernode knows, by state.", []string{"state"}, nil),
	}
}

func (c *liveCollector) set(src liveSource) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.src = src
}

// storeStats reads the seed's store for the dfly_store_* gauges.
func (c *liveCollector) storeStats() telemetry.StoreStats {
	c.mu.Lock()
	store := c.src.store
	c.mu.Unlock()
	if store == nil {
		return telemetry.StoreStats{}
	}
	st := store.Stats()
	return telemetry.StoreStats{Bytes: st.Committed, Quota: st.Quota, Tasks: st.Tasks, Evictions: st.Evicted}
}

// Describe implements prometheus.Collector.
func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.peers, c.tasks, c.withheld, c.originBytes, c.uploadBytes, c.preheatJobs} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	src := c.src
	c.mu.Unlock()
	var counts SchedulerCounts
	if src.sched != nil {
		counts = src.sched.Counts()
	}
	var origin, upload int64
	if src.seed != nil {
		origin = src.seed.BytesFromOrigin()
	}
	if src.upload != nil {
		upload = src.upload.BytesServed()
	}
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(counts.Peers))
	ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(counts.Tasks))
	ch <- prometheus.MustNewConstMetric(c.withheld, prometheus.CounterValue, float64(counts.Withheld))
	ch <- prometheus.MustNewConstMetric(c.originBytes, prometheus.CounterValue, float64(origin))
	ch <- prometheus.MustNewConstMetric(c.uploadBytes, prometheus.CounterValue, float64(upload))
	jobs := src.preheat.Counts() // nil-safe: every state at 0
	for _, st := range preheat.States() {
		ch <- prometheus.MustNewConstMetric(c.preheatJobs, prometheus.GaugeValue, float64(jobs[st]), st)
	}
}

// timed runs f and returns how long it took.
func timed(f func()) time.Duration {
	t := time.Now()
	f()
	return time.Since(t)
}
