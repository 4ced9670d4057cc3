// Package cli holds the small pieces every dfly command shares: byte-size
// and header flag parsing, default paths, logger setup.
package cli

import (
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ParseSize parses "1048576", "512K", "100M", "2G", "1.5GiB" (binary
// multiples; a trailing "B", "iB" or "/s" is accepted).
func ParseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i")
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	// !(v < 2^63) refuses NaN, Inf and sizes past int64 too: int64() of
	// them is undefined (negative on amd64).
	if v := f * float64(mult); err != nil || f < 0 || !(v < math.MaxInt64) {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix", orig)
	}
	return int64(f * float64(mult)), nil
}

// ParseHeaders turns repeated "Name: value" flags into a header.
func ParseHeaders(hs []string) (http.Header, error) {
	h := http.Header{}
	for _, kv := range hs {
		k, v, ok := strings.Cut(kv, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("invalid header %q: want 'Name: value'", kv)
		}
		h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return h, nil
}

// DefaultStoreDir is the block store location when --store is not given:
// $DFLY_STORE, else the user's cache dir (e.g. ~/.cache/dfly/store).
func DefaultStoreDir() string {
	if d := os.Getenv("DFLY_STORE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "dfly", "store")
	}
	return filepath.Join(os.TempDir(), "dfly-store")
}

// NewLogger returns a text logger on stderr at the named level.
func NewLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid log level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// HumanBytes formats n with binary units.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
