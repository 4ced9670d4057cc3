package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dfly-p2p/dfly/snapshotter"
)

// TestServeOverGRPC drives the snapshotter through containerd's own proxy client, as
// containerd's proxy_plugins entry does: a remote layer answers ALREADY_EXISTS and shows
// up committed; a local one round-trips Prepare/Commit.
func testServeOverGRPC(t *testing.T, f *fixture) {
	e := newEnv(t, f)
	sock := filepath.Join(t.TempDir(), "sn.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- snapshotter.Serve(ctx, sock, e.sn) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket left behind: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket never appeared")
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	client := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "dfly")

	ids := chainIDs(t, e.lazyRef)
	l := e.layers(e.lazyRef)[0]
	labels := map[string]string{
		"containerd.io/snapshot.ref":        ids[0],
		snapshotters.TargetRefLabel:         e.lazyRef,
		snapshotters.TargetLayerDigestLabel: l.Digest.String(),
		snapshotter.TOCDigestLabel:          l.Annotations[snapshotter.TOCDigestLabel],
	}
	_, err = client.Prepare(ctx, "extract-0", "", snapshots.WithLabels(labels))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("remote Prepare over gRPC: err = %v, want ALREADY_EXISTS", err)
	}
	info, err := client.Stat(ctx, ids[0])
	if err != nil || info.Kind != snapshots.KindCommitted || info.Labels[snapshotter.RemoteLabel] != "true" {
		t.Fatalf("Stat of the claimed layer = %+v, %v", info, err)
	}
	ms, err := client.Prepare(ctx, "local", "")
	if err != nil || len(ms) != 1 {
		t.Fatalf("local Prepare = %v, %v", ms, err)
	}
	if err := client.Commit(ctx, "local-committed", "local"); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	n := 0
	if err := client.Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil }); err != nil || n != 2 {
		t.Fatalf("Walk saw %d snapshots (%v), want 2", n, err)
	}
	if err := client.Remove(ctx, ids[0]); err != nil {
		t.Fatalf("Remove remote layer: %v", err)
	}
	if len(e.fs.Status()) != 0 {
		t.Fatal("remote layer still mounted after Remove over gRPC")
	}
}
