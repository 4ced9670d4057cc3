package estargz

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"golang.org/x/sys/unix"
)

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("FUSE mount test needs root (direct mount); not running as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("FUSE mount test needs /dev/fuse: %v", err)
	}
}

func mountLayer(t *testing.T, b []byte, toc string) string {
	t.Helper()
	l, err := Open(context.Background(), &memBlob{b: b}, int64(len(b)), digestOf(t, toc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := l.Mount(dir, MountOptions{})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		srv.Wait()
	})
	return dir
}

func TestTreeMetadata(t *testing.T) {
	requireFUSE(t)
	big := randBytes(5, 300<<10)
	b, toc := buildBlob(t, []tarEntry{
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 12, Gid: 34}, data: []byte("root:x:0:0\n")},
		{hdr: tar.Header{Name: "etc/hard", Typeflag: tar.TypeLink, Linkname: "etc/passwd"}},
		{hdr: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}},
		{hdr: tar.Header{Name: "bin/suid", Typeflag: tar.TypeReg, Mode: 0o4755}, data: []byte("x")},
		{hdr: tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o600}},
		{hdr: tar.Header{Name: "x/", Typeflag: tar.TypeDir, Mode: 0o700, PAXRecords: map[string]string{"SCHILY.xattr.user.color": "blue"}}},
		{hdr: tar.Header{Name: "x/.wh.gone", Typeflag: tar.TypeReg, Mode: 0o644}},
		{hdr: tar.Header{Name: "opq/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "opq/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644}},
		{hdr: tar.Header{Name: "opq/kept", Typeflag: tar.TypeReg, Mode: 0o644}, data: []byte("kept")},
		{hdr: tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, data: big},
	})
	dir := mountLayer(t, b, toc.String())

	got, err := os.ReadFile(filepath.Join(dir, "etc/passwd"))
	if err != nil || string(got) != "root:x:0:0\n" {
		t.Fatalf("read etc/passwd = %q %v", got, err)
	}
	gotBig, err := os.ReadFile(filepath.Join(dir, "big"))
	if err != nil || !bytes.Equal(gotBig, big) {
		t.Fatalf("read big: err=%v equal=%v", err, bytes.Equal(gotBig, big))
	}

	var st, st2 syscall.Stat_t
	mustLstat(t, filepath.Join(dir, "etc/passwd"), &st)
	if st.Mode != syscall.S_IFREG|0o640 || st.Uid != 12 || st.Gid != 34 || st.Size != 11 || st.Nlink != 2 {
		t.Errorf("etc/passwd stat: mode %o uid %d gid %d size %d nlink %d", st.Mode, st.Uid, st.Gid, st.Size, st.Nlink)
	}
	mustLstat(t, filepath.Join(dir, "etc/hard"), &st2)
	if st2.Ino != st.Ino {
		t.Errorf("hardlink inode %d != original %d", st2.Ino, st.Ino)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
		t.Errorf("readlink bin/sh = %q %v", l, err)
	}
	mustLstat(t, filepath.Join(dir, "bin/suid"), &st)
	if st.Mode != syscall.S_IFREG|0o4755 {
		t.Errorf("bin/suid mode %o", st.Mode)
	}
	mustLstat(t, filepath.Join(dir, "dev/null"), &st)
	if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null mode %o rdev %d:%d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	mustLstat(t, filepath.Join(dir, "dev/fifo"), &st)
	if st.Mode != syscall.S_IFIFO|0o600 {
		t.Errorf("dev/fifo mode %o", st.Mode)
	}
	// Whiteout: ".wh.gone" appears as a 0/0 character device named "gone".
	mustLstat(t, filepath.Join(dir, "x/gone"), &st)
	if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout x/gone mode %o rdev %d", st.Mode, st.Rdev)
	}
	if _, err := os.Lstat(filepath.Join(dir, "x/.wh.gone")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("raw whiteout name visible: %v", err)
	}
	xv := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "x"), "user.color", xv); err != nil || string(xv[:n]) != "blue" {
		t.Errorf("xattr user.color = %q %v", xv[:n], err)
	}
	// Opaque dir: the marker becomes trusted.overlay.opaque=y and is not listed.
	if n, err := unix.Lgetxattr(filepath.Join(dir, "opq"), OpaqueXattr, xv); err != nil || string(xv[:n]) != "y" {
		t.Errorf("opaque xattr = %q %v", xv[:n], err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "opq"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "kept" {
		t.Errorf("opq entries = %v %v", ents, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644); err == nil {
		t.Error("write to the read-only layer succeeded")
	}
}

func TestTreeTamperedChunkIsEIO(t *testing.T) {
	requireFUSE(t)
	big := randBytes(6, 256<<10)
	b, toc := buildBlob(t, []tarEntry{{hdr: tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, data: big}})
	l, err := Open(context.Background(), &memBlob{b: b}, int64(len(b)), toc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ce, _ := l.r.ChunkEntryForOffset("big", 200<<10)
	b[ce.Offset+(ce.NextOffset()-ce.Offset)/2] ^= 0x55
	dir := mountLayer(t, b, toc.String())
	f, err := os.Open(filepath.Join(dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	p := make([]byte, 4096)
	if _, err := f.ReadAt(p, 0); err != nil || !bytes.Equal(p, big[:4096]) {
		t.Fatalf("intact chunk read: %v", err)
	}
	if _, err := f.ReadAt(p, 200<<10); !errors.Is(err, syscall.EIO) {
		t.Fatalf("tampered chunk read err = %v, want EIO", err)
	}
}

func mustLstat(t *testing.T, p string, st *syscall.Stat_t) {
	t.Helper()
	if err := syscall.Lstat(p, st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
}

// TestTreeHidesFormatArtefacts: a layer built with prioritized files has a
// prefetch landmark at its root (and the TOC at its end); neither is a file
// of the image, so neither is listed, found or stat-able, and a file of the
// image with the same base name elsewhere stays visible.
func TestTreeHidesFormatArtefacts(t *testing.T) {
	requireFUSE(t)
	b, toc := buildBlob(t, []tarEntry{
		{hdr: tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "app/run", Typeflag: tar.TypeReg, Mode: 0o755}, data: []byte("#!/bin/sh\n")},
		{hdr: tar.Header{Name: "app/.prefetch.landmark", Typeflag: tar.TypeReg, Mode: 0o644}, data: []byte("mine")},
		{hdr: tar.Header{Name: "data", Typeflag: tar.TypeReg, Mode: 0o644}, data: randBytes(9, 200<<10)},
	}, estargz.WithPrioritizedFiles([]string{"app/run"}))
	// The blob does carry the landmark (else the test proves nothing).
	l, err := Open(context.Background(), &memBlob{b: b}, int64(len(b)), digestOf(t, toc.String()), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.r.Lookup(estargz.PrefetchLandmark); !ok {
		t.Fatal("the test layer has no prefetch landmark")
	}
	dir := mountLayer(t, b, toc.String())
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "app,data" {
		t.Fatalf("root lists %v, want [app data]", names)
	}
	for _, name := range []string{estargz.PrefetchLandmark, estargz.NoPrefetchLandmark, estargz.TOCTarName} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s at the root: %v, want not found", name, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(dir, "app/.prefetch.landmark")); err != nil || string(got) != "mine" {
		t.Fatalf("the image's own app/.prefetch.landmark: %q %v", got, err)
	}
}
