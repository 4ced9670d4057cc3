package main

import "testing"

// FuzzParseSize: --quota and --upload-rate. An accepted size is never
// negative: NaN, Inf and sizes past int64 are refused (int64() of them
// was negative).
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"100M", "1.5GiB", "0", "NaN", "inf", "1e30", "8192P", "-1K", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := parseSize(s); err == nil && v < 0 {
			t.Fatalf("parseSize(%q) = %d", s, v)
		}
	})
}
