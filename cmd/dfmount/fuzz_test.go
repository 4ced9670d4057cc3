package main

import "testing"

// FuzzParseRate: --prefetch-rate and --disk-rate. An accepted rate is
// never negative: NaN, Inf and rates past int64 are refused (int64() of
// them was negative).
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"10M", "1.5G/s", "512KiB", "0", "NaN", "Inf", "1e300", "-1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := parseRate(s); err == nil && v < 0 {
			t.Fatalf("parseRate(%q) = %d", s, v)
		}
	})
}
