package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// Unmounting a busy mount detaches it lazily: the open file stays readable
// and the server ends once it is closed.
func TestUnmountBusyDetachesLazily(t *testing.T) {
	requireFUSE(t)
	e := newEnv(t)
	c := origin.Content{Size: 2 << 20, Seed: 13}
	task := e.open(t, "f", c, "")
	root, err := NewRoot([]Entry{{Name: "f", Content: task}}, Options{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(dir, root, MountOptions{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Unmount(300 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := mountAt(dir); ok {
		t.Fatal("the mount is still in the mount table after a lazy unmount")
	}
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, contentBytes(c, 1<<20, 4096)) {
		t.Fatalf("read from the detached mount: %v", err)
	}
	waited := make(chan struct{})
	go func() { srv.Wait(); close(waited) }()
	f.Close()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not end after the last open file was closed")
	}
}

func TestParseMountinfo(t *testing.T) {
	in := `22 1 0:21 / /proc rw,nosuid - proc proc rw
97 30 0:93 / /tmp/a\040b rw,nosuid,nodev,relatime shared:50 - fuse.dfly dfly:model.bin rw,user_id=0
98 30 0:94 / /mnt/x rw master:1 - ext4 /dev/vda rw
bad line
`
	ms, err := parseMountinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []MountEntry{
		{Dev: "0:21", MountPoint: "/proc", FsType: "proc", Source: "proc"},
		{Dev: "0:93", MountPoint: "/tmp/a b", FsType: "fuse.dfly", Source: "dfly:model.bin"},
		{Dev: "0:94", MountPoint: "/mnt/x", FsType: "ext4", Source: "/dev/vda"},
	}
	if len(ms) != len(want) {
		t.Fatalf("parsed %d entries, want %d: %+v", len(ms), len(want), ms)
	}
	for i := range want {
		if ms[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, ms[i], want[i])
		}
	}
}

func TestPrepareMountpoint(t *testing.T) {
	empty := t.TempDir()
	if cleaned, err := PrepareMountpoint(empty); err != nil || cleaned {
		t.Fatalf("empty dir: cleaned %v, %v", cleaned, err)
	}
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	for name, dir := range map[string]string{"missing": filepath.Join(empty, "nope"), "not empty": full, "a file": file} {
		if _, err := PrepareMountpoint(dir); !errors.Is(err, ErrMountpoint) {
			t.Errorf("%s: %v, want ErrMountpoint", name, err)
		}
	}
}

func TestPrepareMountpointRefusesLiveMount(t *testing.T) {
	requireFUSE(t)
	e := newEnv(t)
	task := e.open(t, "f", origin.Content{Size: 10, Seed: 1}, "")
	dir := e.mount(t, []Entry{{Name: "f", Content: task}}, Options{})
	if Stale(dir) {
		t.Fatal("a live mount reported stale")
	}
	if _, err := PrepareMountpoint(dir); !errors.Is(err, ErrMountpoint) || !strings.Contains(err.Error(), "already mounted") {
		t.Fatalf("PrepareMountpoint on a live mount: %v", err)
	}
}
