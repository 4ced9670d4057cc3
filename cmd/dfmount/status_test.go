package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/fs/prefetch"
)

func TestStatusPath(t *testing.T) {
	a, b := statusPath("/s", "/mnt/a"), statusPath("/s", "/mnt/b")
	if a == b || a != statusPath("/s", "/mnt/a/") || filepath.Dir(a) != "/s/mounts" || !strings.HasSuffix(a, ".json") {
		t.Fatalf("statusPath: %q %q", a, b)
	}
}

func TestHumanRate(t *testing.T) {
	for n, want := range map[float64]string{0: "0 B/s", 1023: "1023 B/s", 1024: "1.0 KiB/s", 3 << 20: "3.0 MiB/s", 5 << 30: "5.0 GiB/s"} {
		if got := humanRate(n); got != want {
			t.Errorf("humanRate(%v) = %q, want %q", n, got, want)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	store, dir := t.TempDir(), t.TempDir()
	path := statusPath(store, dir)
	os.MkdirAll(filepath.Dir(path), 0o755)
	st := mountStatus{PID: os.Getpid(), Dir: dir, UpdatedAt: time.Now().UTC(), Files: []fileStatus{{
		Name: "m.bin", BlocksTotal: 10, BlocksPresent: 4, Complete: false,
		Prefetch: &prefetch.Progress{State: prefetch.StateFetching, BlocksTotal: 10, BlocksPresent: 4, BytesPerSec: 2 << 20, LastError: "origin down"},
	}}}
	if err := writeStatus(path, st); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := doStatus(dir, store, false, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"m.bin: 4/10 blocks (40.0%)", "prefetch fetching", "2.0 MiB/s", "verified no", "last error: origin down"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}

	// A status left by a dead process is reported as not running.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("skipping the dead-pid case: cannot run true")
	}
	st.PID = cmd.Process.Pid
	if err := writeStatus(path, st); err != nil {
		t.Fatal(err)
	}
	var ee *exitError
	if err := doStatus(dir, store, false, &out); !errors.As(err, &ee) || ee.code != exitNotRunning || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("status of a dead mount: %v", err)
	}
}
