package blockhttp

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzAcceptsZstd feeds arbitrary Accept-Encoding values (network input) to
// the parser: it must not panic, and never accept a value that does not
// name zstd.
func FuzzAcceptsZstd(f *testing.F) {
	for _, s := range []string{"zstd", "gzip, zstd;q=0.5", "zstd;q=0", "zstd;q=1;q=0", ";;,,", "ZSTD ;q= 0.001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r := httptest.NewRequest("GET", "/blocks/t/0", nil)
		r.Header.Set("Accept-Encoding", v)
		if AcceptsZstd(r) && !strings.Contains(strings.ToLower(v), "zstd") {
			t.Fatalf("accepted %q", v)
		}
	})
}
