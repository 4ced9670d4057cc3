package snapshotter_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/snapshotter"
)

func TestLayerStatusString(t *testing.T) {
	tests := []struct {
		st   snapshotter.LayerStatus
		want string
	}{
		{snapshotter.LayerStatus{Layer: "sha256:a", Fetched: 42.4, Prefetch: "fetching", BytesOrigin: 7},
			"sha256:a: lazy, 42% fetched, not verified yet (prefetch fetching; bytes from registry 7, seed 0, peers 0)"},
		{snapshotter.LayerStatus{Layer: "sha256:b", Fetched: 100, Verified: true, Prefetch: "done", BytesSeed: 1, BytesPeers: 2},
			"sha256:b: lazy, 100% fetched, verified (prefetch done; bytes from registry 0, seed 1, peers 2)"},
	}
	for _, tc := range tests {
		if got := tc.st.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

func TestNewRemoteFSNeedsEngineAndResolver(t *testing.T) {
	if _, err := snapshotter.NewRemoteFS(snapshotter.RemoteFSOptions{}); err == nil {
		t.Fatal("NewRemoteFS without engine and resolver succeeded")
	}
}

// TestUnmountWhileOverlayUsesLayer: an overlay (a container's rootfs) with an open file
// keeps the FUSE superblock alive after unmount; Unmount must still return (by aborting
// the connection) instead of waiting forever, and the open file then fails.
func testUnmountWhileOverlayUsesLayer(t *testing.T, f *fixture) {
	e := newEnv(t, f)
	ctx := context.Background()
	l := e.layers(e.lazyRef)[1]
	mp := t.TempDir()
	labels := map[string]string{
		snapshotters.TargetRefLabel:         e.lazyRef,
		snapshotters.TargetLayerDigestLabel: l.Digest.String(),
		snapshotter.TOCDigestLabel:          l.Annotations[snapshotter.TOCDigestLabel],
	}
	if err := e.fs.Mount(ctx, mp, labels); err != nil {
		t.Fatal(err)
	}
	if err := e.fs.Check(ctx, mp, labels); err != nil {
		t.Fatalf("Check of a live mount: %v", err)
	}
	upper, work, merged := t.TempDir(), t.TempDir(), t.TempDir()
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", mp, upper, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("overlay over the FUSE layer: %v", err)
	}
	defer func() { _ = unix.Unmount(merged, unix.MNT_DETACH) }()
	fh, err := os.Open(filepath.Join(merged, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fh.Close() }()
	// Detach the overlay as a dying container would; the open file keeps it alive.
	if err := unix.Unmount(merged, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.fs.Unmount(ctx, mp) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Unmount: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Unmount hung while an overlay still used the layer")
	}
	if err := e.fs.Check(ctx, mp, labels); err == nil {
		t.Fatal("Check succeeded after Unmount")
	}
	p := make([]byte, 4096)
	if _, err := fh.ReadAt(p, 1<<20); err == nil {
		t.Fatal("read through an aborted layer succeeded")
	}
}
