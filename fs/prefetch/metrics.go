package prefetch

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics reports dfly_prefetch_progress_ratio{layer} for the prefetchers
// running with it (Options.Metrics): the share of each task's blocks
// present, read at scrape time, so blocks stored by foreground reads count
// too. A task has a series while its Run runs. A nil *Metrics reports nothing.
type Metrics struct {
	desc *prometheus.Desc

	mu      sync.Mutex
	running map[*Prefetcher]struct{}
}

// NewMetrics returns the collector, registered with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		desc: prometheus.NewDesc("dfly_prefetch_progress_ratio",
			"Share (0 to 1) of a lazily mounted layer's or file's blocks present, while its background prefetch runs; the label is Options.Name (the layer digest, or the file name of dfmount).",
			[]string{"layer"}, nil),
		running: map[*Prefetcher]struct{}{},
	}
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

func (m *Metrics) add(p *Prefetcher) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.running[p] = struct{}{}
	m.mu.Unlock()
}

func (m *Metrics) remove(p *Prefetcher) {
	if m == nil {
		return
	}
	m.mu.Lock()
	delete(m.running, p)
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.desc }

// Collect implements prometheus.Collector. Prefetchers of the same name
// (one layer mounted twice) report once, the furthest one.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	ps := make([]*Prefetcher, 0, len(m.running))
	for p := range m.running {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	ratios := map[string]float64{}
	for _, p := range ps {
		r := p.ratio()
		if old, ok := ratios[p.opt.Name]; !ok || r > old {
			ratios[p.opt.Name] = r
		}
	}
	for name, r := range ratios {
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, r, name)
	}
}

// ratio is the share of the task's blocks present (1 for empty content).
func (p *Prefetcher) ratio() float64 {
	total := p.b.Info().NumBlocks()
	if total <= 0 {
		return 1
	}
	return float64(total-len(p.b.Missing())) / float64(total)
}
