package peer

// Prometheus metrics of the peer side (docs/metrics.md). A process makes one
// Metrics (NewMetrics) and hands it to the engine (Config.Metrics), the
// upload server (UploadConfig.Metrics) or the whole daemon
// (DaemonConfig.Metrics). Every method is a no-op on a nil *Metrics, so the
// components count only when a process asks for it.

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// Metrics holds the peer-side collectors. Create it with NewMetrics.
type Metrics struct {
	bytes      [4]prometheus.Counter  // by From
	fetch      [4]prometheus.Observer // by From (FromLocal unused)
	downloads  map[string]prometheus.Counter
	fallbacks  prometheus.Counter
	upBytes    prometheus.Counter
	upInFlight prometheus.Gauge
	rejected   map[string]prometheus.Counter
	waits      map[string]prometheus.Counter
	tasks      prometheus.Gauge
	flow       [2]prometheus.Gauge // dfly_flow_allowed_bytes_per_second: download, upload
	compSaved  prometheus.Counter
}

// Label values of the peer metrics (the complete sets, all pre-initialised).
const (
	resultOK       = "ok"
	resultError    = "error"
	resultCanceled = "canceled"

	rejectBusy  = "busy"
	rejectToken = "token"
	rejectOther = "other"

	limiterDownload = "download"
	limiterUpload   = "upload"
	limiterPreheat  = "preheat"
)

// BlockFetchBuckets are the buckets of dfly_peer_block_fetch_duration_seconds:
// from a block in the page cache of a neighbour to one that waited for a
// slow origin (blocks are 1 to 16 MiB).
var blockFetchBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// NewMetrics creates the peer-side collectors and registers them with reg
// (nil: they are created but not registered, which suits tests). Every
// label value exists from the start, at zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dfly_peer_bytes_total",
		Help: "Bytes delivered to tasks, by where they came from: origin, seed, peer (another host's upload server) or local (already in the store).",
	}, []string{"provenance"})
	downloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dfly_peer_downloads_total",
		Help: "Whole-task downloads (dfget through the local API, mirror blob completions, preheats) by result: ok, error or canceled (the caller left).",
	}, []string{"result"})
	fetch := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "dfly_peer_block_fetch_duration_seconds",
		Help:    "Time to fetch, verify and store one block, by the source that delivered it: origin, seed or peer (waits for the supernode and the download rate limit included).",
		Buckets: blockFetchBuckets,
	}, []string{"source"})
	fallbacks := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dfly_peer_origin_fallbacks_total",
		Help: "Blocks fetched from the origin because the swarm failed or timed out (--block-timeout).",
	})
	upBytes := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dfly_peer_upload_bytes_total",
		Help: "Block bytes this host's upload server sent to other peers.",
	})
	upInFlight := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "dfly_peer_uploads_in_flight",
		Help: "Block uploads to other peers in progress.",
	})
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dfly_peer_uploads_rejected_total",
		Help: "Block requests the upload server refused, by reason: busy (429, --max-uploads reached), token (403, missing or invalid task token), other (block not held, bad request).",
	}, []string{"reason"})
	waits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dfly_peer_limiter_wait_seconds_total",
		Help: "Time spent waiting for a rate limiter: download (--download-rate), upload (--upload-rate), preheat (--preheat-rate).",
	}, []string{"limiter"})
	tasks := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "dfly_peer_tasks_active",
		Help: "Tasks with a download, a read or a block fetch in flight.",
	})
	compSaved := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dfly_peer_compression_saved_bytes_total",
		Help: "Bytes the wire saved: plain length minus transferred length of the blocks received as compressed forms (--compress).",
	})
	m := &Metrics{fallbacks: fallbacks, upBytes: upBytes, upInFlight: upInFlight, tasks: tasks, compSaved: compSaved,
		downloads: map[string]prometheus.Counter{}, rejected: map[string]prometheus.Counter{}, waits: map[string]prometheus.Counter{}}
	for _, f := range []From{FromLocal, FromOrigin, FromSeed, FromPeer} {
		m.bytes[f] = bytes.WithLabelValues(f.String())
		if f != FromLocal {
			m.fetch[f] = fetch.WithLabelValues(f.String())
		}
	}
	for _, r := range []string{resultOK, resultError, resultCanceled} {
		m.downloads[r] = downloads.WithLabelValues(r)
	}
	for _, r := range []string{rejectBusy, rejectToken, rejectOther} {
		m.rejected[r] = rejected.WithLabelValues(r)
	}
	for _, l := range []string{limiterDownload, limiterUpload, limiterPreheat} {
		m.waits[l] = waits.WithLabelValues(l)
	}
	flow := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "dfly_flow_allowed_bytes_per_second",
		Help: "The rate dfly may use now, by direction (download, upload): the flow controller's allowance with --flow auto, else the fixed --download-rate/--upload-rate; 0 = unlimited.",
	}, []string{"direction"})
	m.flow = [2]prometheus.Gauge{flow.WithLabelValues("download"), flow.WithLabelValues("upload")}
	if reg != nil {
		reg.MustRegister(flow)
	}
	if reg != nil {
		reg.MustRegister(bytes, downloads, fetch, fallbacks, upBytes, upInFlight, rejected, waits, tasks, compSaved)
	}
	return m
}

// delivered counts n bytes delivered to a task from f.
func (m *Metrics) delivered(f From, n int64) {
	if m == nil || n <= 0 || f < FromLocal || f > FromPeer {
		return
	}
	m.bytes[f].Add(float64(n))
}

// blockFetched records how long a block took to come from f.
func (m *Metrics) blockFetched(f From, d time.Duration) {
	if m == nil || f <= FromLocal || f > FromPeer {
		return
	}
	m.fetch[f].Observe(d.Seconds())
}

// fallback counts a block the origin delivered because the swarm failed.
func (m *Metrics) fallback() {
	if m == nil {
		return
	}
	m.fallbacks.Inc()
}

// download counts a finished download; ctx is the caller's (its end makes
// an error a cancellation).
func (m *Metrics) download(ctx context.Context, err error) {
	if m == nil {
		return
	}
	m.downloads[downloadResult(ctx, err)].Inc()
}

// downloadResult classifies a download's outcome.
func downloadResult(ctx context.Context, err error) string {
	switch {
	case err == nil:
		return resultOK
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return resultCanceled
	}
	return resultError
}

// uploaded counts n bytes sent to another peer.
func (m *Metrics) uploaded(n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.upBytes.Add(float64(n))
}

// uploadStarted and uploadEnded track the uploads in flight.
func (m *Metrics) uploadStarted() {
	if m != nil {
		m.upInFlight.Inc()
	}
}

func (m *Metrics) uploadEnded() {
	if m != nil {
		m.upInFlight.Dec()
	}
}

// uploadRejected counts a refused block request (reason: rejectBusy,
// rejectToken or rejectOther).
func (m *Metrics) uploadRejected(reason string) {
	if m == nil {
		return
	}
	c, ok := m.rejected[reason]
	if !ok {
		c = m.rejected[rejectOther]
	}
	c.Inc()
}

// waited adds time spent waiting for a rate limiter (limiterDownload,
// limiterUpload or limiterPreheat).
func (m *Metrics) waited(limiter string, d time.Duration) {
	if m == nil || d <= 0 {
		return
	}
	if c, ok := m.waits[limiter]; ok {
		c.Add(d.Seconds())
	}
}

// flowAllowed sets the rates dfly may use (bytes/s, 0 = unlimited).
func (m *Metrics) flowAllowed(down, up int64) {
	if m == nil {
		return
	}
	m.flow[0].Set(float64(max(down, 0)))
	m.flow[1].Set(float64(max(up, 0)))
}

// taskBegin marks one more operation on a task (n is the task's counter):
// the task counts as active while any runs. Pair it with taskEnd.
func (m *Metrics) taskBegin(n *atomic.Int32) {
	if m != nil && n.Add(1) == 1 {
		m.tasks.Inc()
	}
}

// taskEnd ends an operation taskBegin marked.
func (m *Metrics) taskEnd(n *atomic.Int32) {
	if m != nil && n.Add(-1) == 0 {
		m.tasks.Dec()
	}
}

// StoreCollector returns the gauges of a block store (dfly_store_bytes,
// dfly_store_quota_bytes, dfly_store_tasks, dfly_store_evictions_total),
// read from its Stats at every scrape.
func StoreCollector(s *blockstore.Store) prometheus.Collector {
	return telemetry.NewStoreCollector(func() telemetry.StoreStats {
		st := s.Stats()
		return telemetry.StoreStats{Bytes: st.Committed, Quota: st.Quota, Tasks: st.Tasks, Evictions: st.Evicted}
	})
}

// compressionSaved counts n bytes a compressed block saved on the wire.
func (m *Metrics) compressionSaved(n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.compSaved.Add(float64(n))
}
