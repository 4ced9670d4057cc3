package snapshotter

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/dfly-p2p/dfly/snapshotter"
)

// runtimeLayer writes a layer tar of the host's own files under roots (a
// Debian language runtime, e.g. /usr/lib/python3.11, and /etc), keeping
// modes, owners, symlinks and hard links as they are on the host.
func runtimeLayer(t *testing.T, path string, roots ...string) int {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	seen := map[uint64]string{} // inode → first name (hard links)
	n := 0
	dirs := map[string]bool{}
	for _, root := range roots {
		// Parents first, as a real rootfs tar has them.
		parts := strings.Split(strings.Trim(filepath.Dir(root), "/"), "/")
		for i := range parts {
			d := strings.Join(parts[:i+1], "/") + "/"
			if d != "/" && d != "./" && !dirs[d] {
				dirs[d] = true
				fi, err := os.Lstat("/" + d)
				if err != nil {
					t.Fatal(err)
				}
				hdr, _ := tar.FileInfoHeader(fi, "")
				hdr.Name = d
				if err := tw.WriteHeader(hdr); err != nil {
					t.Fatal(err)
				}
			}
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable: not part of the image
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return nil
			}
			if !fi.Mode().IsDir() && !fi.Mode().IsRegular() && fi.Mode()&fs.ModeSymlink == 0 {
				return nil // sockets, devices: not in a runtime image
			}
			link := ""
			if fi.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return nil
				}
			}
			hdr, err := tar.FileInfoHeader(fi, link)
			if err != nil {
				return nil
			}
			hdr.Name = strings.TrimPrefix(p, "/")
			if fi.IsDir() {
				hdr.Name += "/"
			}
			hdr.Uname, hdr.Gname = "", ""
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode().IsRegular() && st.Nlink > 1 {
				if first, ok := seen[st.Ino]; ok {
					hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				} else {
					seen[st.Ino] = hdr.Name
				}
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if hdr.Typeflag == tar.TypeReg {
				src, err := os.Open(p)
				if err != nil {
					return err
				}
				_, err = io.Copy(tw, src)
				src.Close()
				if err != nil {
					return err
				}
			}
			n++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return n
}

// editLayer writes a layer that changes the one below the way image builds
// do: a deleted file (whiteout), a replaced directory (opaque), a hard link,
// a symlink, a setuid file, an owned file, an empty directory.
func editLayer(t *testing.T, path, deleted, opaqueDir string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	put := func(h tar.Header, data string) {
		h.Size = int64(len(data))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			io.WriteString(tw, data)
		}
	}
	dir, base := filepath.Split(deleted)
	put(tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}, "")
	put(tar.Header{Name: dir + ".wh." + base, Typeflag: tar.TypeReg, Mode: 0o644}, "")
	put(tar.Header{Name: opaqueDir + "/", Typeflag: tar.TypeDir, Mode: 0o750}, "")
	put(tar.Header{Name: opaqueDir + "/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644}, "")
	put(tar.Header{Name: opaqueDir + "/only", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000}, "replaced\n")
	put(tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	put(tar.Header{Name: "app/main.py", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 33, Gid: 33}, "print('hi')\n")
	// A hard link's header carries the file's metadata, as archive/tar's
	// FileInfoHeader (and so docker and buildkit) write it.
	put(tar.Header{Name: "app/main-link.py", Typeflag: tar.TypeLink, Linkname: "app/main.py", Mode: 0o644, Uid: 33, Gid: 33}, "")
	put(tar.Header{Name: "app/current", Typeflag: tar.TypeSymlink, Linkname: "main.py"}, "") // mode 0: still lrwxrwxrwx
	put(tar.Header{Name: "app/suid", Typeflag: tar.TypeReg, Mode: 0o4755}, "#!/bin/sh\n")
	put(tar.Header{Name: "app/empty/", Typeflag: tar.TypeDir, Mode: 0o711}, "")
	put(tar.Header{Name: "app/tagged", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.note": "kept across snapshotters"}}, "x\n")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// listing runs a container of ref with snapshotter sn and returns what it
// sees of its root filesystem (the lister's lines: type, mode, owner, size,
// link count and target, sha256, xattrs), by path.
func (w *world) listing(t *testing.T, ref, sn, id string) map[string]string {
	t.Helper()
	// The listing goes to a file in a bind mount, not through ctr's stdout
	// (which can lose the tail of a large output on a busy machine).
	outDir := t.TempDir()
	_, errOut, err := w.ctr("run", "--rm", "--snapshotter", sn, "--mount", "type=bind,src="+outDir+",dst=/out,options=rbind:rw",
		ref, id, "/lister/lister", "/", "/out/listing")
	if err != nil {
		t.Fatalf("list the root of %s with %s: %v\n%s\n%s", ref, sn, err, errOut, w.snLog())
	}
	b, err := os.ReadFile(filepath.Join(outDir, "listing"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		p, rest, _ := strings.Cut(line, "|")
		m[p] = rest
	}
	if _, ok := m["/"]; !ok || m["/lister"] != "" {
		t.Fatalf("the %s listing is incomplete or unfiltered (%d entries)", sn, len(m))
	}
	return m
}

// listerLayer writes a layer with a static build of ./lister at /lister/lister.
func listerLayer(t *testing.T, dir, path string) {
	t.Helper()
	bin := filepath.Join(dir, "lister-bin")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/dfly-p2p/dfly/integration/snapshotter/lister")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the lister: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteLayerTar(path, []File{{Name: "lister/", Dir: true, Mode: 0o755}, {Name: "lister/lister", Mode: 0o755, Data: data}}); err != nil {
		t.Fatal(err)
	}
}

// TestLazyRootIsTheImage: a container started lazily through the dfly
// snapshotter sees exactly the files it sees with containerd's overlayfs
// snapshotter — no eStargz landmark or TOC, the same whiteouts, opaque
// directories, hard links, symlinks, modes, owners, sizes and contents —
// and xattrs — for an image of a Debian language runtime taken from this
// host.
func TestLazyRootIsTheImage(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	runtime := ""
	for _, p := range []string{"/usr/lib/python3.13", "/usr/lib/python3.12", "/usr/lib/python3.11", "/usr/lib/python3"} {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			runtime = p
			break
		}
	}
	if runtime == "" {
		t.Skip("no Python runtime on this host to build the image from (/usr/lib/python3*)")
	}
	base, err := BusyboxFiles()
	if err != nil {
		t.Fatal(err)
	}
	t1, t2, t3, t4 := filepath.Join(w.dir, "busybox.tar"), filepath.Join(w.dir, "runtime.tar"), filepath.Join(w.dir, "edit.tar"), filepath.Join(w.dir, "lister.tar")
	listerLayer(t, w.dir, t4)
	if err := WriteLayerTar(t1, base); err != nil {
		t.Fatal(err)
	}
	n := runtimeLayer(t, t2, runtime, "/etc/ssl", "/usr/share/zoneinfo/Europe")
	// Delete one module and replace one package directory, as a build would.
	var deleted, opaque string
	entries, _ := os.ReadDir(runtime)
	for _, e := range entries {
		switch {
		case deleted == "" && !e.IsDir() && strings.HasSuffix(e.Name(), ".py"):
			deleted = strings.TrimPrefix(filepath.Join(runtime, e.Name()), "/")
		case opaque == "" && e.IsDir() && e.Name() != "__pycache__":
			opaque = strings.TrimPrefix(filepath.Join(runtime, e.Name()), "/")
		}
	}
	if deleted == "" || opaque == "" {
		t.Fatalf("runtime %s: no module to delete or package to replace", runtime)
	}
	editLayer(t, t3, deleted, opaque)
	plain := w.reg.Host() + "/fidelity/plain:1"
	lazy := w.reg.Host() + "/fidelity/lazy:1"
	if _, err := PushImage(plain, t1, t2, t3, t4); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotter.Convert(ctx, plain, lazy, &snapshotter.Resolver{}, snapshotter.ConvertOptions{
		Prioritized: []string{"/bin/busybox", "/" + deleted + "x"}, CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	t.Logf("image: busybox + %d files of %s, /etc/ssl and some zoneinfo + an edit layer", n, runtime)
	if out, errOut, err := w.ctr("images", "pull", "--plain-http", plain); err != nil {
		t.Fatalf("ctr pull: %v\n%s%s", err, out, errOut)
	}
	if out, err := w.dfctl("image", "pull", lazy); err != nil {
		t.Fatalf("dfctl image pull: %v\n%s\n%s", err, out, w.snLog())
	}
	want := w.listing(t, plain, "overlayfs", "fid-overlay")
	got := w.listing(t, lazy, "dfly", "fid-dfly")
	if len(want) < n/2 {
		t.Fatalf("overlayfs listing has %d entries; the image has more than %d", len(want), n)
	}
	var diffs []string
	for p, v := range want {
		if g, ok := got[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("missing with dfly: %s %s", p, v))
		} else if g != v {
			diffs = append(diffs, fmt.Sprintf("differs: %s: overlayfs %s, dfly %s", p, v, g))
		}
	}
	for p, v := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("extra with dfly: %s %s", p, v))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 40 {
			diffs = append(diffs[:40], fmt.Sprintf("... %d more", len(diffs)-40))
		}
		t.Fatalf("the lazy root differs from the image (%d entries compared):\n%s", len(want), strings.Join(diffs, "\n"))
	}
	if !strings.Contains(want["/app/tagged"], "user.note=") {
		t.Fatalf("the overlayfs root lost the test xattr (%q): the comparison would not cover xattrs", want["/app/tagged"])
	}
	t.Logf("%d entries identical (paths, types, modes, owners, sizes, link counts and targets, sha256, xattrs)", len(want))
}
