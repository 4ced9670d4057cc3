package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestList(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "a"), 0o750)
	os.WriteFile(filepath.Join(dir, "a/f"), []byte("x"), 0o640)
	os.Symlink("f", filepath.Join(dir, "a/l"))
	os.MkdirAll(filepath.Join(dir, "proc/self"), 0o755)
	xattrOK := unix.Lsetxattr(filepath.Join(dir, "a/f"), "user.color", []byte("blue"), 0) == nil
	var b bytes.Buffer
	if err := list(&b, dir); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"/a|40000|750|", "/a/f|100000|640|", "|1|1|2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881|", "/a/l|120000|777|", "->f"} {
		if !strings.Contains(out, want) {
			t.Errorf("listing lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "/proc") {
		t.Errorf("the runtime's mount points are listed:\n%s", out)
	}
	if xattrOK && !strings.Contains(out, "user.color=626c7565") {
		t.Errorf("xattr not listed:\n%s", out)
	}
}
