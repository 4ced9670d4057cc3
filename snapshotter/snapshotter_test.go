package snapshotter_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/dfly-p2p/dfly/blockstore"
	testimg "github.com/dfly-p2p/dfly/integration/snapshotter"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/snapshotter"
)

func requireRootFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("snapshotter test needs root for FUSE and overlay mounts; not running as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("snapshotter test needs /dev/fuse: %v", err)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("snapshotter test needs /bin/busybox (Debian package busybox-static)")
	}
}

// env is a registry with a plain and an eStargz image, a block store, an engine, a
// RemoteFS and a snapshotter, all real.
type env struct {
	t        *testing.T
	reg      *testimg.Registry
	root     string
	store    *blockstore.Store
	engine   *peer.Engine
	fs       *snapshotter.RemoteFS
	sn       *snapshotter.Snapshotter
	resolver *snapshotter.Resolver
	small    []byte
	plainRef string
	lazyRef  string
}

// fixture is the registry with the test images, shared by the subtests of
// TestSnapshotter (building and converting the images is the slow part).
type fixture struct {
	reg      *testimg.Registry
	small    []byte
	plainRef string
	lazyRef  string
}

func newFixture(t *testing.T) *fixture {
	requireRootFUSE(t)
	f := &fixture{reg: testimg.StartRegistry()}
	t.Cleanup(f.reg.Close)
	tars, small, err := testimg.BuildTestImage(t.TempDir(), 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	f.small = small
	f.plainRef = f.reg.Host() + "/test/plain:1"
	f.lazyRef = f.reg.Host() + "/test/lazy:1"
	if _, err := testimg.PushImage(f.plainRef, tars...); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotter.Convert(context.Background(), f.plainRef, f.lazyRef, &snapshotter.Resolver{},
		snapshotter.ConvertOptions{Prioritized: []string{"/bin/busybox"}, ChunkSize: 256 << 10, CompressionLevel: 1}); err != nil {
		t.Fatal(err)
	}
	return f
}

// newEnv starts a fresh block store, engine, RemoteFS and snapshotter over the fixture.
func newEnv(t *testing.T, f *fixture) *env {
	e := &env{t: t, reg: f.reg, root: t.TempDir(), small: f.small, plainRef: f.plainRef, lazyRef: f.lazyRef,
		resolver: &snapshotter.Resolver{}}
	e.start()
	return e
}

// TestSnapshotter runs the snapshotter's tests against one registry.
func TestSnapshotter(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *fixture)
	}{
		{"remote layers mount lazily", testRemoteLayersMountLazily},
		{"plain image falls back", testPlainImageFallsBack},
		{"TOC mismatch falls back", testTOCMismatchFallsBack},
		{"serve over gRPC", testServeOverGRPC},
		{"unmount while an overlay uses the layer", testUnmountWhileOverlayUsesLayer},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, f) })
	}
}

func (e *env) start() {
	t := e.t
	st, err := blockstore.Open(filepath.Join(e.root, "store"), blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := peer.New(peer.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	rfs, err := snapshotter.NewRemoteFS(snapshotter.RemoteFSOptions{Engine: eng, Resolver: e.resolver, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	sn, err := snapshotter.New(context.Background(), filepath.Join(e.root, "sn"), rfs, snapshotter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.store, e.engine, e.fs, e.sn = st, eng, rfs, sn
	t.Cleanup(e.stop)
}

// stop closes everything (idempotent), as a process exit would.
func (e *env) stop() {
	if e.sn == nil {
		return
	}
	if err := e.sn.Close(); err != nil {
		e.t.Errorf("close snapshotter: %v", err)
	}
	if err := e.fs.Close(); err != nil {
		e.t.Errorf("close remote fs: %v", err)
	}
	_ = e.engine.Close()
	_ = e.store.Close()
	e.sn = nil
}

// layers returns the manifest's layers of ref with their annotations.
func (e *env) layers(ref string) []v1.Descriptor {
	r, err := name.ParseReference(ref)
	if err != nil {
		e.t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		e.t.Fatal(err)
	}
	return m.Layers
}

func chainIDs(t *testing.T, ref string) []string {
	r, _ := name.ParseReference(ref)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var prev string
	for _, d := range cfg.RootFS.DiffIDs {
		if prev == "" {
			prev = d.String()
		} else {
			prev = "sha256:" + sha256Hex(prev+" "+d.String())
		}
		ids = append(ids, prev)
	}
	return ids
}

// pull does what containerd's unpacker does: Prepare each layer with the labels; a
// layer the snapshotter claims answers ALREADY_EXISTS, the others are returned for
// applying (which this test does not do; it only checks the path taken).
func (e *env) pull(ref string) (remoteLayers int) {
	ctx := context.Background()
	ids := chainIDs(e.t, ref)
	parent := ""
	for i, l := range e.layers(ref) {
		labels := map[string]string{
			"containerd.io/snapshot.ref":           ids[i],
			snapshotters.TargetRefLabel:            ref,
			snapshotters.TargetLayerDigestLabel:    l.Digest.String(),
			snapshotters.TargetManifestDigestLabel: "sha256:0",
		}
		for k, v := range l.Annotations {
			if strings.HasPrefix(k, "containerd.io/snapshot/") {
				labels[k] = v
			}
		}
		key := "extract-" + ids[i]
		_, err := e.sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
		switch {
		case errdefs.IsAlreadyExists(err):
			remoteLayers++
		case err != nil:
			e.t.Fatalf("Prepare layer %d: %v", i, err)
		default:
			if err := e.sn.Remove(ctx, key); err != nil {
				e.t.Fatalf("remove local prepare of layer %d: %v", i, err)
			}
			return remoteLayers
		}
		parent = ids[i]
	}
	return remoteLayers
}

// container prepares an active snapshot on top of chain and mounts it.
func (e *env) container(key, parent string) string {
	ctx := context.Background()
	ms, err := e.sn.Prepare(ctx, key, parent)
	if err != nil {
		e.t.Fatalf("prepare container snapshot: %v", err)
	}
	dir := e.t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		e.t.Fatalf("mount container rootfs %v: %v", ms, err)
	}
	e.t.Cleanup(func() { _ = mount.UnmountAll(dir, syscall.MNT_DETACH) })
	return dir
}

func testRemoteLayersMountLazily(t *testing.T, f *fixture) {
	e := newEnv(t, f)
	ctx := context.Background()
	ids := chainIDs(t, e.lazyRef)
	before := e.reg.BlobBytes()
	if n := e.pull(e.lazyRef); n != len(ids) {
		t.Fatalf("remote layers = %d, want all %d", n, len(ids))
	}
	layerDescs := e.layers(e.lazyRef)
	taskID := func(i int) string {
		id, err := blockstore.TaskIDForDigest(layerDescs[i].Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	for i := range ids {
		if tk, err := e.store.Task(taskID(i)); err != nil || !tk.Pinned {
			t.Fatalf("mounted layer %d task pinned=%v err=%v; want pinned", i, tk.Pinned, err)
		}
	}
	root := e.container("c1", ids[len(ids)-1])
	got, err := os.ReadFile(filepath.Join(root, "small/file"))
	if err != nil || string(got) != string(e.small) {
		t.Fatalf("read small/file through overlay+FUSE = %q %v", got, err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "bin/sh")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("bin/sh from the lower remote layer: %v %v", fi, err)
	}
	// The container's upper layer is writable.
	if err := os.WriteFile(filepath.Join(root, "small/new"), []byte("x"), 0o644); err != nil {
		t.Fatalf("write in container rootfs: %v", err)
	}
	// Wait for the prefetch to complete and verify the whole layers.
	deadline := time.Now().Add(60 * time.Second)
	for {
		sts := e.fs.Status()
		done := len(sts) == len(ids)
		for _, s := range sts {
			done = done && s.Verified && s.Fetched == 100
		}
		if done {
			for _, s := range sts {
				if !strings.Contains(s.String(), "lazy, 100% fetched, verified") {
					t.Errorf("status line %q", s.String())
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch did not complete: %+v", sts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if served := e.reg.BlobBytes() - before; served <= 0 {
		t.Fatalf("registry served %d blob bytes", served)
	}
	big, err := os.Open(filepath.Join(root, "big"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.CreateTemp(t.TempDir(), "want")
	if err := testimg.Generated(3<<20, 42, want); err != nil {
		t.Fatal(err)
	}
	if !sameContent(t, big, want) {
		t.Fatal("big file content differs from the source")
	}
	_ = big.Close()

	// Restart: close everything (mounts go away), start again: the snapshots are remounted
	// from the block store, without a single registry byte.
	_ = mount.UnmountAll(root, syscall.MNT_DETACH)
	e.stop()
	served := e.reg.BlobBytes()
	e.start()
	if got := len(e.fs.Status()); got != len(ids) {
		t.Fatalf("remounted layers = %d, want %d", got, len(ids))
	}
	root2 := e.container("c2", ids[len(ids)-1])
	if got, err := os.ReadFile(filepath.Join(root2, "small/file")); err != nil || string(got) != string(e.small) {
		t.Fatalf("read after restart = %q %v", got, err)
	}
	if e.reg.BlobBytes() != served {
		t.Fatalf("registry served %d bytes after restart; want 0 (blocks are in the store)", e.reg.BlobBytes()-served)
	}
	if err := e.sn.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}

	// Remove unmounts: children first, then the layers top-down.
	_ = mount.UnmountAll(root2, syscall.MNT_DETACH)
	for _, k := range []string{"c1", "c2"} {
		if err := e.sn.Remove(ctx, k); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
	if err := e.sn.Remove(ctx, ids[0]); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("remove of a parent layer: err = %v, want failed precondition", err)
	}
	for i := len(ids) - 1; i >= 0; i-- {
		if err := e.sn.Remove(ctx, ids[i]); err != nil {
			t.Fatalf("remove layer %d: %v", i, err)
		}
	}
	if n := len(e.fs.Status()); n != 0 {
		t.Fatalf("%d layers still mounted after Remove", n)
	}
	for i := range ids {
		if tk, err := e.store.Task(taskID(i)); err != nil || tk.Pinned {
			t.Fatalf("removed layer %d task pinned=%v err=%v; want unpinned (evictable)", i, tk.Pinned, err)
		}
	}
}

func testPlainImageFallsBack(t *testing.T, f *fixture) {
	e := newEnv(t, f)
	if n := e.pull(e.plainRef); n != 0 {
		t.Fatalf("plain gzip image: %d layers claimed remote, want 0", n)
	}
	if n := len(e.fs.Status()); n != 0 {
		t.Fatalf("%d remote mounts for a plain image", n)
	}
}

func testTOCMismatchFallsBack(t *testing.T, f *fixture) {
	e := newEnv(t, f)
	ctx := context.Background()
	ids := chainIDs(t, e.lazyRef)
	l := e.layers(e.lazyRef)[0]
	labels := map[string]string{
		"containerd.io/snapshot.ref":        ids[0],
		snapshotters.TargetRefLabel:         e.lazyRef,
		snapshotters.TargetLayerDigestLabel: l.Digest.String(),
		snapshotter.TOCDigestLabel:          "sha256:" + strings.Repeat("0", 64),
	}
	ms, err := e.sn.Prepare(ctx, "extract-0", "", snapshots.WithLabels(labels))
	if err != nil || len(ms) == 0 {
		t.Fatalf("Prepare with a wrong TOC digest = %v, %v; want a local snapshot (fallback)", ms, err)
	}
	if n := len(e.fs.Status()); n != 0 {
		t.Fatalf("a layer with a mismatching TOC was mounted")
	}
}

func sameContent(t *testing.T, a, b *os.File) bool {
	t.Helper()
	if _, err := b.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	ha, hb := newHash(), newHash()
	if _, err := io.Copy(ha, a); err != nil {
		t.Fatalf("read: %v", err)
	}
	if _, err := io.Copy(hb, b); err != nil {
		t.Fatal(err)
	}
	return string(ha.Sum(nil)) == string(hb.Sum(nil))
}

func newHash() hash.Hash { return sha256.New() }

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
