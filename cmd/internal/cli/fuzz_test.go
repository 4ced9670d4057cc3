package cli

import (
	"fmt"
	"strings"
	"testing"
)

// FuzzParseSize: sizes come from flags and config. An accepted size is
// never negative (NaN, Inf and values past int64 are refused), and an
// integer written with or without a binary suffix parses to its value.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1048576", "512K", "100M", "2G", "1.5GiB", "10MB/s", "NaN", "Inf", "-1", "1e30", "8E", "9223372036854775807", " 7 ", "T", ""} {
		f.Add(s, int64(5), uint8(1))
	}
	f.Fuzz(func(t *testing.T, s string, n int64, unit uint8) {
		if v, err := ParseSize(s); err == nil && v < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, v)
		}
		if n < 0 || n > 1<<40 {
			return
		}
		suffix := []string{"", "K", "M", "G", "T"}[int(unit)%5]
		shift := 10 * (int(unit) % 5)
		if n > (1<<53)>>shift {
			return // beyond float64's exact integers
		}
		for _, form := range []string{"%d%s", "%d%sB", "%d%siB", " %d%s/s"} {
			if suffix == "" && form != "%d%s" {
				continue
			}
			in := fmt.Sprintf(form, n, suffix)
			v, err := ParseSize(in)
			if err != nil || v != n<<shift {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", in, v, err, n<<shift)
			}
		}
	})
}

// FuzzParseHeaders: "Name: value" flags, one per line of the input. An
// accepted list has a header for every flag, with the trimmed name and
// value; a flag without a colon or a name is refused.
func FuzzParseHeaders(f *testing.F) {
	f.Add("Authorization: Bearer x\nX-A:b")
	f.Add("novalue")
	f.Add(": empty name")
	f.Add("A: 1\na: 2")
	f.Fuzz(func(t *testing.T, in string) {
		lines := strings.Split(in, "\n")
		h, err := ParseHeaders(lines)
		for _, l := range lines {
			k, _, ok := strings.Cut(l, ":")
			if !ok || strings.TrimSpace(k) == "" {
				if err == nil {
					t.Fatalf("ParseHeaders accepted %q", l)
				}
				return
			}
		}
		if err != nil {
			t.Fatalf("ParseHeaders(%q): %v", lines, err)
		}
		n := 0
		for _, vs := range h {
			n += len(vs)
		}
		if n != len(lines) {
			t.Fatalf("ParseHeaders(%q): %d values for %d flags", lines, n, len(lines))
		}
		for _, l := range lines {
			k, v, _ := strings.Cut(l, ":")
			found := false
			for _, got := range h.Values(strings.TrimSpace(k)) {
				found = found || got == strings.TrimSpace(v)
			}
			if !found {
				t.Fatalf("ParseHeaders(%q): %q is not %q", lines, strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
	})
}
