package main

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestCompressFlag(t *testing.T) {
	err := run(context.Background(), []string{"--store", t.TempDir(), "--compress", "zstd"}, io.Discard, io.Discard)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--compress") {
		t.Fatalf("--compress zstd: %v, want a usage error about --compress", err)
	}
	var help strings.Builder
	if err := run(context.Background(), []string{"--help"}, io.Discard, &help); !errors.Is(err, pflag.ErrHelp) || !strings.Contains(help.String(), "--compress string") {
		t.Fatalf("--help does not document --compress (%v):\n%s", err, help.String())
	}
}
