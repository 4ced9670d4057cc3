package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	testimg "github.com/dfly-p2p/dfly/integration/snapshotter"
)

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"image"}, 2},
		{[]string{"image", "convert", "onlysrc"}, 2},
		{[]string{"image", "pull"}, 2},
		{[]string{"image", "frobnicate", "x"}, 2},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--help"}, 0},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		if got := run(context.Background(), tc.args, &out, &errb); got != tc.code {
			t.Errorf("dfctl %v = %d, want %d (stderr %q)", tc.args, got, tc.code, errb.String())
		}
	}
	// An unknown flag is named, for every subcommand.
	for _, args := range [][]string{{"--no-such-flag"}, {"status", "--no-such-flag"}, {"preheat", "--no-such-flag"}} {
		var errb bytes.Buffer
		if got := run(context.Background(), args, io.Discard, &errb); got != 2 || !strings.Contains(errb.String(), "unknown flag: --no-such-flag") {
			t.Errorf("dfctl %v = %d, stderr %q; want 2 naming the flag", args, got, errb.String())
		}
	}
}

func TestConvertCommand(t *testing.T) {
	reg := testimg.StartRegistry()
	defer reg.Close()
	p := filepath.Join(t.TempDir(), "l.tar")
	if err := testimg.WriteLayerTar(p, []testimg.File{{Name: "f", Mode: 0o644, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	src, dst := reg.Host()+"/cmd/src:1", reg.Host()+"/cmd/dst:1"
	if _, err := testimg.PushImage(src, p); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"image", "convert", src, dst, "--prioritize", "/f", "--compression-level", "1"}, &out, &errb); code != 0 {
		t.Fatalf("convert exit %d: %s", code, errb.String())
	}
	if !strings.HasPrefix(out.String(), dst+"@sha256:") {
		t.Fatalf("convert printed %q", out.String())
	}
	// Converting an image that does not exist fails with exit code 1 and says why.
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"image", "convert", reg.Host() + "/cmd/missing:1", dst}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "missing") {
		t.Fatalf("convert of a missing image: exit %d, stderr %q", code, errb.String())
	}
}

func TestPullWithoutContainerd(t *testing.T) {
	var out, errb bytes.Buffer
	sock := filepath.Join(t.TempDir(), "none.sock")
	code := run(context.Background(), []string{"image", "pull", "localhost:1/x:1", "--address", sock}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "dfctl image pull") {
		t.Fatalf("pull without containerd: exit %d, stderr %q", code, errb.String())
	}
}
