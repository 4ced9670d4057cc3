package fs

import (
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts the tree's FUSE reads. Create it with NewMetrics and pass
// it in Options.Metrics; a nil *Metrics counts nothing.
type Metrics struct {
	duration prometheus.Observer
	errors   prometheus.Counter
}

// readBuckets: from a read served by the page cache of a stored block to
// one that waited for the read timeout.
var readBuckets = []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60}

// NewMetrics creates dfly_fuse_read_duration_seconds and
// dfly_fuse_read_errors_total and registers them with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "dfly_fuse_read_duration_seconds",
		Help:    "Time to answer a FUSE read of a lazily mounted file (fetching the blocks it covers included).",
		Buckets: readBuckets,
	})
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dfly_fuse_read_errors_total",
		Help: "FUSE reads answered with EIO (the blocks could not be fetched within the read timeout, or failed).",
	})
	if reg != nil {
		reg.MustRegister(h, c)
	}
	return &Metrics{duration: h, errors: c}
}

// read records one answered read (an interrupted one, EINTR, is not answered).
func (m *Metrics) read(d time.Duration, errno syscall.Errno) {
	if m == nil || errno == syscall.EINTR {
		return
	}
	m.duration.Observe(d.Seconds())
	if errno == syscall.EIO {
		m.errors.Inc()
	}
}
