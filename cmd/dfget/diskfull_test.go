package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// TestDiskFull puts the block store on a real 48 MiB tmpfs and asks for a
// 64 MiB file: dfget must refuse up front with exit 6 naming the problem,
// leave no output, and the store must still work for a file that fits.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	mnt := filepath.Join(dir, "small")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs here: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", mnt).Run()

	o := startOrigin(t)
	big := o.Add("big", origin.Content{Size: 64 << 20, Seed: 1})
	small := origin.Content{Size: 4 << 20, Seed: 2}
	smallURL := o.Add("small", small)
	store := filepath.Join(mnt, "store")
	out := filepath.Join(mnt, "out")

	code, msg := dfget(big, "-O", out, "--store", store)
	if code != exitDisk || !strings.Contains(msg, "not enough free disk space") {
		t.Fatalf("exit %d, output %q", code, msg)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("output exists after disk-full failure")
	}
	code, msg = dfget(smallURL, "-O", out, "--store", store)
	if code != 0 {
		t.Fatalf("small file after disk-full failure: %d %s", code, msg)
	}
	if got := fileSHA(t, out); got != small.Digest("sha256") {
		t.Fatalf("small file wrong: %s", got)
	}
}
