package peer

import (
	"testing"
	"time"
)

func TestIsLaggard(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		elapsed, typical time.Duration
		want             bool
	}{
		{10 * time.Second, 0, false},              // no history: nothing to compare with
		{1500 * ms, 100 * ms, false},              // 15× typical but under laggardMin
		{2 * time.Second, 100 * ms, true},         // ≥ 8× typical and ≥ laggardMin
		{7 * time.Second, time.Second, false},     // 7× typical
		{8 * time.Second, time.Second, true},      // 8× typical
		{3 * time.Second, 500 * ms, false},        // 6× typical
		{laggardMin, laggardMin / 8, true},        // exactly at both bounds
		{laggardMin - ms, laggardMin / 16, false}, // just under laggardMin
	} {
		if got := isLaggard(tc.elapsed, tc.typical); got != tc.want {
			t.Errorf("isLaggard(%v, %v) = %v, want %v", tc.elapsed, tc.typical, got, tc.want)
		}
	}
}
