package mirror

import (
	"slices"
	"testing"
	"time"
)

// quantiles returns the p50, p99 and maximum of ds (nearest rank).
func quantiles(ds []time.Duration) (p50, p99, mx time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return at(0.50), at(0.99), s[len(s)-1]
}

func TestQuantiles(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	if p50, p99, mx := quantiles(ds); p50 != 3 || p99 != 5 || mx != 5 {
		t.Fatalf("quantiles = %v %v %v", p50, p99, mx)
	}
}
