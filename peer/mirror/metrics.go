package mirror

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds and results of dfly_mirror_requests_total (the complete sets).
const (
	kindBlob     = "blob"
	kindManifest = "manifest"
	kindOther    = "other"

	// resultP2P: answered by dfly (a blob through the engine, a blob HEAD
	// from the store).
	resultP2P = "p2p"
	// resultPassthrough: the registry's answer, passed through (manifests,
	// tags, a blob dfly could not serve before its first byte).
	resultPassthrough = "passthrough"
	// resultError: no whole answer (registry unreachable, an answer cut
	// short, a request the mirror refuses).
	resultError = "error"
)

// Metrics counts the mirror's requests. Create it with NewMetrics; a nil
// *Metrics counts nothing.
type Metrics struct {
	requests map[[2]string]prometheus.Counter
}

// NewMetrics creates dfly_mirror_requests_total{kind,result} with every
// kind and result at zero and registers it with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dfly_mirror_requests_total",
		Help: "Registry mirror requests by kind (blob, manifest, other) and result: p2p (served by dfly), passthrough (the registry's answer), error (registry unreachable, answer cut short, request refused).",
	}, []string{"kind", "result"})
	m := &Metrics{requests: map[[2]string]prometheus.Counter{}}
	for _, k := range []string{kindBlob, kindManifest, kindOther} {
		for _, r := range []string{resultP2P, resultPassthrough, resultError} {
			m.requests[[2]string{k, r}] = vec.WithLabelValues(k, r)
		}
	}
	if reg != nil {
		reg.MustRegister(vec)
	}
	return m
}

// request counts one answered request.
func (m *Metrics) request(kind, result string) {
	if m == nil {
		return
	}
	if c, ok := m.requests[[2]string{kind, result}]; ok {
		c.Inc()
	}
}

// kindOf is the kind of a request path: /v2/<name>/blobs/..., /v2/<name>/manifests/..., or anything else.
func kindOf(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return kindOther
	}
	// The repository name may hold slashes: the kind is the second-last element.
	parts := strings.Split(rest, "/")
	if len(parts) < 3 {
		return kindOther
	}
	switch parts[len(parts)-2] {
	case "blobs":
		return kindBlob
	case "manifests":
		return kindManifest
	}
	return kindOther
}
