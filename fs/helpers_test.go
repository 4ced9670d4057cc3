package fs

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/supernode"
)

// requireFUSE skips the test when real FUSE mounts are impossible here.
func requireFUSE(tb testing.TB) {
	tb.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		tb.Skipf("skipping: /dev/fuse is not available (%v); FUSE tests need it", err)
	}
	if os.Geteuid() != 0 {
		tb.Skip("skipping: FUSE tests mount directly and need root")
	}
}

// syncBuffer is a goroutine-safe log sink.
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

// env is the content path the tests read through: a real origin, a block
// store and a peer engine: origin only (newEnv), or with a supernode and
// another peer (newSwarmEnv); tests run in both topologies.
type env struct {
	origin *origin.Server
	store  *blockstore.Store
	eng    *peer.Engine
	logs   *syncBuffer
	log    *slog.Logger

	// Swarm topology only: the supernode and the other peer.
	sn    *supernode.Supernode
	other *peer.Daemon
}

// newSwarmEnv is the swarm topology: an origin, a supernode (scheduler and
// seed), one other peer (a dfdaemon) and this host's engine joined to the
// swarm as an embedded leech, as dfmount --supernode builds it.
func newSwarmEnv(tb testing.TB) *env {
	tb.Helper()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { o.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sn, err := supernode.Start(supernode.Config{StoreDir: tb.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0", Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sn.Close() })
	other, err := peer.StartDaemon(context.Background(), peer.DaemonConfig{Supernode: sn.GRPCAddr(), Listen: "127.0.0.1:0",
		Sock: filepath.Join(tb.TempDir(), "dfdaemon.sock"), StoreDir: tb.TempDir(), Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { other.Close() })
	st, err := blockstore.Open(tb.TempDir(), blockstore.Options{GCInterval: -1, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	sw, err := peer.NewSwarm(context.Background(), peer.SwarmConfig{Supernode: sn.GRPCAddr(), Store: st, BlockTimeout: 10 * time.Second, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sw.Close() })
	src := source.New(source.Options{Retries: 1, Backoff: 20 * time.Millisecond, Timeout: 5 * time.Second, Logger: log})
	eng, err := peer.New(peer.Config{Store: st, Source: src, Logger: log, CacheBlocks: 16, Swarm: sw})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { eng.Close() })
	return &env{origin: o, store: st, eng: eng, logs: logs, log: log, sn: sn, other: other}
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { o.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	st, err := blockstore.Open(tb.TempDir(), blockstore.Options{GCInterval: -1, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	src := source.New(source.Options{Retries: 1, Backoff: 20 * time.Millisecond, Timeout: 5 * time.Second, Logger: log})
	eng, err := peer.New(peer.Config{Store: st, Source: src, Logger: log, CacheBlocks: 16})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { eng.Close() })
	return &env{origin: o, store: st, eng: eng, logs: logs, log: log}
}

// open serves c at /name and opens its task.
func (e *env) open(tb testing.TB, name string, c origin.Content, digest string) *peer.Task {
	tb.Helper()
	u := e.origin.Add(name, c)
	t, err := e.eng.Open(context.Background(), peer.Request{URL: u, Digest: digest})
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// mount mounts a tree of the given files in a fresh directory and unmounts
// it at the end of the test.
func (e *env) mount(tb testing.TB, entries []Entry, opt Options) string {
	tb.Helper()
	if opt.Logger == nil {
		opt.Logger = e.log
	}
	root, err := NewRoot(entries, opt)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	srv, err := Mount(dir, root, MountOptions{Logger: e.log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := srv.Unmount(5 * time.Second); err != nil {
			tb.Errorf("unmount: %v", err)
		}
		srv.Wait()
	})
	return dir
}

// dropCache evicts the file's pages from the kernel's cache so that the
// next read goes to the FUSE server.
func dropCache(tb testing.TB, f *os.File) {
	tb.Helper()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		tb.Fatalf("fadvise: %v", err)
	}
}

func contentBytes(c origin.Content, off, n int64) []byte {
	b := make([]byte, n)
	m, err := c.ReadAt(b, off)
	if err != nil && err != io.EOF {
		panic(err)
	}
	return b[:m]
}
