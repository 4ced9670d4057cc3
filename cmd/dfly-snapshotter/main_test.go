package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/snapshotter"
)

func TestFlagsAndStatus(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"bad flag", []string{"--nope"}, 2, ""},
		{"extra argument", []string{"extra"}, 2, ""},
		{"help", []string{"--help"}, 0, ""},
		{"no status file", []string{"--status", "--root", filepath.Join(root, "none")}, 1, ""},
		{"serve-layer without its flags", []string{"serve-layer"}, 2, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if got := run(context.Background(), tc.args, &out, &errb); got != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", got, tc.code, errb.String())
			}
		})
	}
	b, _ := json.Marshal([]snapshotter.LayerStatus{{Layer: "sha256:aa", Fetched: 100, Verified: true, Prefetch: "done"}})
	if err := os.WriteFile(statusPath(root), b, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--status", "--root", root}, &out, &errb); code != 0 || out.String() != "sha256:aa: lazy, 100% fetched, verified (prefetch done; bytes from registry 0, seed 0, peers 0)\n" {
		t.Fatalf("status: exit %d, out %q, err %q", code, out.String(), errb.String())
	}
}

func TestServeUntilCancelled(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("serving the snapshotter needs root (overlay snapshotter); not running as root")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "sn.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var out, errb bytes.Buffer
	go func() {
		done <- run(ctx, []string{"--root", filepath.Join(dir, "root"), "--address", sock, "--log-level", "error"}, &out, &errb)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, sockErr := os.Stat(sock)
		_, statusErr := os.Stat(statusPath(filepath.Join(dir, "root")))
		if sockErr == nil && statusErr == nil {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("snapshotter did not start: %s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var so bytes.Buffer
	if code := run(context.Background(), []string{"--status", "--root", filepath.Join(dir, "root")}, &so, &errb); code != 0 || !strings.Contains(so.String(), "no remote layers") {
		t.Fatalf("status of an idle snapshotter: %d %q", code, so.String())
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exit %d: %s", code, errb.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after stop: %v", err)
	}
}
