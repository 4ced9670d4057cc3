package snapshotter_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/blockstore"
	testimg "github.com/dfly-p2p/dfly/integration/snapshotter"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/snapshotter"
)

// layerServerEnv makes this test binary act as a layer server (see TestMain).
const layerServerEnv = "DFLY_SNAPSHOTTER_TEST_LAYER_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(layerServerEnv) == "1" && len(os.Args) > 1 && os.Args[1] == snapshotter.LayerServerCommand {
		os.Exit(snapshotter.RunLayerServer(context.Background(), os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

func TestRunLayerServerFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"no flags", nil},
		{"bad flag", []string{"--nope"}},
		{"bad TOC digest", []string{"--api", "s", "--task", "t", "--size", "1", "--mountpoint", "m", "--toc", "x"}},
		{"no size", []string{"--api", "s", "--task", "t", "--mountpoint", "m", "--toc", "sha256:" + strings.Repeat("a", 64)}},
		{"bad log level", []string{"--log-level", "loud"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			if code := snapshotter.RunLayerServer(context.Background(), tc.args, &errb); code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, errb.String())
			}
		})
	}
}

// layerServerPIDs returns the layer server processes serving mountpoint.
func layerServerPIDs(mountpoint string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[1] == snapshotter.LayerServerCommand && strings.Contains(string(b), "\x00"+mountpoint+"\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestLayerServerOutlivesRemoteFS: a layer served by a layer server process keeps its
// mount (and an open file on it) when the RemoteFS that started it goes away; a read
// made while it is gone waits and completes once a new RemoteFS adopts the mount; a
// layer server that dies is replaced by a remount; Unmount ends the server.
func TestLayerServerOutlivesRemoteFS(t *testing.T) {
	f := newFixture(t)
	t.Setenv(layerServerEnv, "1")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	st, err := blockstore.Open(filepath.Join(root, "store"), blockstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	eng, err := peer.New(peer.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = eng.Close() }()
	var logBuf syncBuffer
	newFS := func() *snapshotter.RemoteFS {
		rfs, err := snapshotter.NewRemoteFS(snapshotter.RemoteFSOptions{Engine: eng, Resolver: &snapshotter.Resolver{},
			Logger: slog.New(slog.NewTextHandler(&logBuf, nil)), NoPrefetch: true,
			LayerServer: []string{exe, snapshotter.LayerServerCommand}, BlockSocket: filepath.Join(root, "blocks.sock")})
		if err != nil {
			t.Fatal(err)
		}
		return rfs
	}
	ctx := context.Background()
	e := &env{t: t}
	l := e.layers(f.lazyRef)[1]
	labels := map[string]string{
		snapshotters.TargetRefLabel:         f.lazyRef,
		snapshotters.TargetLayerDigestLabel: l.Digest.String(),
		snapshotter.TOCDigestLabel:          l.Annotations[snapshotter.TOCDigestLabel],
	}
	mp := filepath.Join(root, "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	defer func() { // never leave a mount or a server behind
		_ = unix.Unmount(mp, unix.MNT_DETACH)
		for _, pid := range layerServerPIDs(mp) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}()
	var want bytes.Buffer
	if err := testimg.Generated(3<<20, 42, &want); err != nil {
		t.Fatal(err)
	}

	rfs := newFS()
	if err := rfs.Mount(ctx, mp, labels); err != nil {
		t.Fatal(err)
	}
	if err := rfs.Check(ctx, mp, labels); err != nil {
		t.Fatalf("Check of a live mount: %v", err)
	}
	pids := layerServerPIDs(mp)
	if len(pids) != 1 {
		t.Fatalf("%d layer servers serve %s, want 1", len(pids), mp)
	}
	fh, err := os.Open(filepath.Join(mp, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fh.Close() }()
	readAt := func(off int64) error {
		p := make([]byte, 64<<10)
		if _, err := fh.ReadAt(p, off); err != nil {
			return err
		}
		if !bytes.Equal(p, want.Bytes()[off:off+int64(len(p))]) {
			return fmt.Errorf("wrong bytes at %d", off)
		}
		return nil
	}
	if err := readAt(0); err != nil {
		t.Fatal(err)
	}

	// The RemoteFS goes away (as the snapshotter process would); the mount stays.
	if err := rfs.Close(); err != nil {
		t.Fatal(err)
	}
	if got := layerServerPIDs(mp); len(got) != 1 || got[0] != pids[0] {
		t.Fatalf("layer servers after Close = %v, want %v", got, pids)
	}
	readDone := make(chan error, 1)
	go func() { readDone <- readAt(2 << 20) }() // not read yet: waits for a RemoteFS
	select {
	case err := <-readDone:
		t.Fatalf("a read of an unfetched range completed with no snapshotter (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	rfs = newFS()
	defer func() { _ = rfs.Close() }()
	if err := rfs.Mount(ctx, mp, labels); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logBuf.String(), "layer server still running; kept its mount") {
		t.Fatalf("the live mount was not kept:\n%s", logBuf.String())
	}
	select {
	case err := <-readDone:
		if err != nil {
			t.Fatalf("read waiting across the restart: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("read waiting across the restart did not complete")
	}
	if got := layerServerPIDs(mp); len(got) != 1 || got[0] != pids[0] {
		t.Fatalf("layer servers after adoption = %v, want the same %v", got, pids)
	}

	// A layer server that dies: Check fails; Mount replaces it.
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the killed layer server's mount to stop answering", func() bool { return rfs.Check(ctx, mp, labels) != nil })
	_ = fh.Close()
	if err := rfs.Mount(ctx, mp, labels); err != nil {
		t.Fatal(err)
	}
	if got := layerServerPIDs(mp); len(got) != 1 || got[0] == pids[0] {
		t.Fatalf("layer servers after remount = %v, want one new one (old %d)", got, pids[0])
	}
	b, err := os.ReadFile(filepath.Join(mp, "big"))
	if err != nil || !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("read big through the remounted layer: %d bytes, %v", len(b), err)
	}

	// A layer server that cannot mount (no such mountpoint) fails the Mount.
	if err := rfs.Mount(ctx, filepath.Join(root, "missing"), labels); err == nil || !strings.Contains(err.Error(), "did not mount") {
		t.Fatalf("Mount on a missing mountpoint = %v, want a layer server failure", err)
	}

	// Unmount ends the mount and its server.
	if err := rfs.Unmount(ctx, mp); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the layer server to exit", func() bool { return len(layerServerPIDs(mp)) == 0 })
	if err := rfs.Check(ctx, mp, labels); err == nil {
		t.Fatal("Check succeeded after Unmount")
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
