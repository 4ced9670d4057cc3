package peer

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCompressionSavedMetric(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	if got, ok := series(t, reg)["dfly_peer_compression_saved_bytes_total"]; !ok || got != 0 {
		t.Fatalf("at start %v (exists %v), want 0", got, ok)
	}
	m.compressionSaved(1000)
	m.compressionSaved(-5) // never decreases
	if v := testutil.ToFloat64(m.compSaved); v != 1000 {
		t.Fatalf("counter %v, want 1000", v)
	}
	var none *Metrics
	none.compressionSaved(1)
}
