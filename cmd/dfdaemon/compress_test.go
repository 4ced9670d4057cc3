package main

import (
	"io"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/internal/compress"
)

func TestCompressFlag(t *testing.T) {
	tests := []struct {
		args []string
		want compress.Mode
		err  string
	}{
		{nil, compress.Auto, ""},
		{[]string{"--compress", "off"}, compress.Off, ""},
		{[]string{"--compress", "always"}, compress.Always, ""},
		{[]string{"--compress", "zstd"}, 0, "--compress"},
	}
	for _, tc := range tests {
		o, err := parseFlags(tc.args, io.Discard)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want one about %s", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || o.cfg.Compress != tc.want {
			t.Errorf("%q: mode %v, err %v; want %v", tc.args, o.cfg.Compress, err, tc.want)
		}
	}
	var help strings.Builder
	if _, err := parseFlags([]string{"--help"}, &help); err != errHelp || !strings.Contains(help.String(), "--compress") {
		t.Fatalf("--help does not document --compress: %v", err)
	}
}
