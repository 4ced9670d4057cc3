package snapshotter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/fs/estargz"
	"github.com/dfly-p2p/dfly/fs/prefetch"
	"github.com/dfly-p2p/dfly/peer"
)

// RemoteFSOptions configure a RemoteFS.
type RemoteFSOptions struct {
	Engine   *peer.Engine
	Resolver *Resolver
	Logger   *slog.Logger
	// Prefetch options for the background completion of each layer (First is set from
	// the layer's landmark). NoPrefetch disables background fetching.
	Prefetch   prefetch.Options
	NoPrefetch bool
	// OpenTimeout bounds resolving a layer and reading its TOC (default 30s).
	OpenTimeout time.Duration
	// LayerServer, when set, is the command (program and leading arguments, e.g.
	// [dfly-snapshotter serve-layer]) that serves a layer's FUSE mount from its own
	// process, so mounts survive a restart of this one; the layer server reads the blob
	// through a block-read API served on BlockSocket. Empty: layers are served
	// in-process and die with it.
	LayerServer []string
	BlockSocket string
	// LayerServerLogLevel is passed to layer servers (default info).
	LayerServerLogLevel string
}

// RemoteFS mounts eStargz layers whose bytes come through dfly's peer engine.
type RemoteFS struct {
	opt RemoteFSOptions
	log *slog.Logger

	ctx    context.Context // parent of every prefetch run; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	api *http.Server // block-read API for layer servers (nil in in-process mode)

	mu     sync.Mutex
	mounts map[string]*layerMount
	pins   map[string]int        // task ID -> mounts using it (pinned in the store while > 0)
	tasks  map[string]*peer.Task // task ID -> open task (what the block-read API serves)
}

type layerMount struct {
	layer      string
	taskID     string
	mountpoint string
	task       *peer.Task
	srv        *fuse.Server // nil when a layer server process serves the mount
	pf         *prefetch.Prefetcher
	cancel     context.CancelFunc
	done       chan struct{}
}

// LayerStatus is what Status reports per mounted layer.
type LayerStatus struct {
	Layer      string  `json:"layer"`
	Mountpoint string  `json:"mountpoint"`
	Mode       string  `json:"mode"` // "lazy"
	Fetched    float64 `json:"fetched_percent"`
	Complete   bool    `json:"complete"`
	Verified   bool    `json:"verified"`
	Prefetch   string  `json:"prefetch"`
	Error      string  `json:"error,omitempty"`
	// Bytes of this layer by where they came from (this process's run).
	BytesOrigin int64 `json:"bytes_origin"`
	BytesSeed   int64 `json:"bytes_seed"`
	BytesPeers  int64 `json:"bytes_peers"`
}

func (s LayerStatus) String() string {
	v := "not verified yet"
	if s.Verified {
		v = "verified"
	}
	return fmt.Sprintf("%s: lazy, %.0f%% fetched, %s (prefetch %s; bytes from registry %d, seed %d, peers %d)",
		s.Layer, s.Fetched, v, s.Prefetch, s.BytesOrigin, s.BytesSeed, s.BytesPeers)
}

// NewRemoteFS returns a FileSystem over the engine. Close stops its prefetchers and
// unmounts everything.
func NewRemoteFS(opt RemoteFSOptions) (*RemoteFS, error) {
	if opt.Engine == nil || opt.Resolver == nil {
		return nil, fmt.Errorf("remote fs: engine and resolver are required")
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.OpenTimeout <= 0 {
		opt.OpenTimeout = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &RemoteFS{opt: opt, log: opt.Logger, ctx: ctx, cancel: cancel, mounts: map[string]*layerMount{},
		pins: map[string]int{}, tasks: map[string]*peer.Task{}}
	if len(opt.LayerServer) > 0 {
		if opt.BlockSocket == "" {
			cancel()
			return nil, fmt.Errorf("remote fs: a layer server command needs a block socket")
		}
		_ = os.Remove(opt.BlockSocket) // left by a crashed run
		ln, err := net.Listen("unix", opt.BlockSocket)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("listen on block-read socket %s: %w", opt.BlockSocket, err)
		}
		if err := os.Chmod(opt.BlockSocket, 0o600); err != nil {
			_ = ln.Close()
			cancel()
			return nil, fmt.Errorf("restrict block-read socket %s: %w", opt.BlockSocket, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /read", f.serveBlocks)
		f.api = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := f.api.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				f.log.Error("block-read API stopped", "socket", opt.BlockSocket, "err", err)
			}
		}()
	}
	return f, nil
}

// Mount resolves the layer named by labels, verifies its TOC and serves it at mountpoint,
// then starts the background prefetch (landmark range first) that ends with the whole
// layer's sha256 verification.
func (f *RemoteFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	ref := labels[snapshotters.TargetRefLabel]
	layer := labels[snapshotters.TargetLayerDigestLabel]
	toc, err := digest.Parse(labels[TOCDigestLabel])
	if err != nil {
		return fmt.Errorf("layer %s: TOC digest label %q: %w", layer, labels[TOCDigestLabel], errNotRemote)
	}
	if ref == "" || layer == "" {
		return fmt.Errorf("layer needs %s and %s labels: %w", snapshotters.TargetRefLabel, snapshotters.TargetLayerDigestLabel, errNotRemote)
	}
	ctx, cancelOpen := context.WithTimeout(ctx, f.opt.OpenTimeout)
	defer cancelOpen()
	id, err := blockstore.TaskIDForDigest(layer)
	if err != nil {
		return fmt.Errorf("layer digest %q: %w", layer, err)
	}
	req := peer.Request{Digest: layer, TaskID: id}
	if meta, err := f.opt.Engine.Store().Task(id); err == nil && meta.State == blockstore.StateComplete && !meta.Private {
		req.URL = meta.Source // complete and public in the store: no registry round trip
	} else {
		// Private content (fetched with registry credentials) is opened
		// only with credentials the registry accepts again.
		loc, err := f.opt.Resolver.Blob(ctx, ref, layer)
		if err != nil {
			return fmt.Errorf("resolve layer %s of %s: %w", layer, ref, err)
		}
		req.URL, req.Header = loc.URL, loc.Header
	}
	task, err := f.opt.Engine.Open(ctx, req)
	if err != nil {
		return fmt.Errorf("open layer %s as a dfly task: %w", layer, err)
	}
	l, err := estargz.Open(ctx, task, task.Info().Length, toc, estargz.Options{})
	if err != nil {
		return fmt.Errorf("layer %s: %w", layer, err)
	}
	f.mu.Lock()
	f.tasks[id] = task
	f.mu.Unlock()
	m := &layerMount{layer: layer, taskID: id, mountpoint: mountpoint, task: task, done: make(chan struct{})}
	if len(f.opt.LayerServer) > 0 {
		if fuseAlive(mountpoint) {
			// A layer server from an earlier run still serves it (and running
			// containers use it): keep it; it reads through this process again.
			f.log.Info("layer server still running; kept its mount", "layer", layer, "mountpoint", mountpoint)
		} else {
			detachStale(mountpoint, f.log)
			if err := f.startLayerServer(ctx, mountpoint, layer, id, toc, task.Info().Length); err != nil {
				f.dropTask(id)
				return err
			}
		}
	} else {
		srv, err := l.Mount(mountpoint, estargz.MountOptions{Logger: f.log.With("layer", layer)})
		if err != nil {
			f.dropTask(id)
			return fmt.Errorf("FUSE mount of layer %s at %s: %w", layer, mountpoint, err)
		}
		m.srv = srv
	}
	if !f.opt.NoPrefetch {
		popt := f.opt.Prefetch
		popt.Name = layer
		popt.Logger = f.log
		if end, ok := l.PrefetchRange(); ok && end > 0 {
			popt.First = []prefetch.Range{{Off: 0, Len: end}}
		}
		m.pf = prefetch.New(task, popt)
		pctx, cancel := context.WithCancel(f.ctx)
		m.cancel = cancel
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer close(m.done)
			if err := m.pf.Run(pctx); err != nil && !errors.Is(err, context.Canceled) {
				f.log.Error("layer prefetch failed", "layer", layer, "err", err)
				return
			}
			if pctx.Err() == nil {
				p := m.pf.Progress()
				f.log.Info("layer fully fetched", "layer", layer, "verified", p.Verified, "digest", p.Digest)
			}
		}()
	} else {
		close(m.done)
	}
	f.mu.Lock()
	old := f.mounts[mountpoint]
	f.mounts[mountpoint] = m
	f.pins[id]++
	first := f.pins[id] == 1
	f.mu.Unlock()
	if first { // a mounted layer's blocks must not be evicted by the store's LRU
		if err := f.opt.Engine.Store().Pin(id, true); err != nil {
			f.log.Warn("pin layer task in the block store", "layer", layer, "err", err)
		}
	}
	if old != nil {
		if old.srv == nil { // same mountpoint, served by a layer server: keep the mount
			old.stopPrefetch()
		} else {
			_ = f.stop(old)
		}
		f.unpin(old.taskID)
	}
	return nil
}

// dropTask forgets an open task unless a mount still uses it.
func (f *RemoteFS) dropTask(id string) {
	f.mu.Lock()
	if f.pins[id] <= 0 {
		delete(f.tasks, id)
	}
	f.mu.Unlock()
}

// detachStale lazily unmounts whatever is mounted at mountpoint (a mount left by a dead
// server answers ENOTCONN).
func detachStale(mountpoint string, log *slog.Logger) {
	if err := unix.Unmount(mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		log.Warn("detach stale mount", "mountpoint", mountpoint, "err", err)
	}
}

// startLayerServer starts a layer server process for the layer and waits until it has
// mounted it.
func (f *RemoteFS) startLayerServer(ctx context.Context, mountpoint, layer, id string, toc digest.Digest, size int64) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("layer server ready pipe: %w", err)
	}
	defer func() { _ = r.Close() }()
	level := f.opt.LayerServerLogLevel
	if level == "" {
		level = "info"
	}
	args := append(append([]string{}, f.opt.LayerServer[1:]...), "--detach", "--api", f.opt.BlockSocket, "--task", id,
		"--layer", layer, "--toc", toc.String(), "--size", fmt.Sprint(size), "--mountpoint", mountpoint, "--log-level", level)
	cmd := exec.Command(f.opt.LayerServer[0], args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.ExtraFiles = []*os.File{w}
	err = cmd.Start()
	_ = w.Close()
	if err != nil {
		return fmt.Errorf("start layer server %s for layer %s: %w", f.opt.LayerServer[0], layer, err)
	}
	if err := cmd.Wait(); err != nil { // the detaching step returns at once
		return fmt.Errorf("start layer server for layer %s: %w", layer, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = r.SetReadDeadline(dl)
	}
	br := bufio.NewReader(r)
	pid := 0
	line, err := br.ReadString('\n')
	if err == nil {
		if _, err = fmt.Sscanf(line, "pid %d\n", &pid); err == nil {
			line, err = br.ReadString('\n')
		}
	}
	if err == nil && line == readyLine {
		return nil
	}
	if pid > 0 { // it did not get ready in time: it must not mount later
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	detachStale(mountpoint, f.log)
	return fmt.Errorf("layer server (pid %d) for layer %s did not mount it at %s (its log is in the snapshotter's): %v", pid, layer, mountpoint, err)
}

// unpin drops one mount's claim on a task; the last one lets the store evict it.
func (f *RemoteFS) unpin(id string) {
	f.mu.Lock()
	f.pins[id]--
	last := f.pins[id] <= 0
	if last {
		delete(f.pins, id)
		delete(f.tasks, id)
	}
	f.mu.Unlock()
	if last {
		if err := f.opt.Engine.Store().Pin(id, false); err != nil {
			f.log.Warn("unpin layer task in the block store", "task", id, "err", err)
		}
	}
}

// Check fails when mountpoint has no live mount.
func (f *RemoteFS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	f.mu.Lock()
	_, ok := f.mounts[mountpoint]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("no remote layer mounted at %s", mountpoint)
	}
	if !fuseAlive(mountpoint) {
		return fmt.Errorf("remote layer at %s does not answer (its FUSE server is gone)", mountpoint)
	}
	return nil
}

// Unmount stops the layer's prefetch, unmounts it and releases its pin in the block
// store (so the store's GC may reclaim the layer once no mount uses it).
func (f *RemoteFS) Unmount(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	m, ok := f.mounts[mountpoint]
	delete(f.mounts, mountpoint)
	f.mu.Unlock()
	if !ok {
		return nil
	}
	err := f.stop(m)
	f.unpin(m.taskID)
	return err
}

func (m *layerMount) stopPrefetch() {
	if m.cancel != nil {
		m.cancel()
	}
	<-m.done
}

func (f *RemoteFS) stop(m *layerMount) error {
	m.stopPrefetch()
	if m.srv == nil {
		return unmountServed(m.mountpoint, f.log)
	}
	return unmountFUSE(m.srv, m.mountpoint, f.log)
}

// unmountServed unmounts a layer server's mount; its server exits when the connection
// ends. When something still holds the superblock (an overlay of a running container),
// the connection is aborted after a grace period, as unmountFUSE does.
func unmountServed(mountpoint string, log *slog.Logger) error {
	var st unix.Stat_t
	alive := fuseAlive(mountpoint) && unix.Stat(mountpoint, &st) == nil
	if !alive {
		detachStale(mountpoint, log)
		return nil
	}
	minor := unix.Minor(st.Dev)
	if err := mountFusectl(); err != nil {
		log.Warn("cannot watch the FUSE connection", "err", err)
	}
	if err := unix.Unmount(mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount FUSE at %s: %w", mountpoint, err)
	}
	conn := fmt.Sprintf("%s/%d", fusectlDir, minor)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(conn); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	if err := abortFUSEConn(minor); err != nil {
		return fmt.Errorf("abort FUSE connection of %s: %w", mountpoint, err)
	}
	log.Warn("FUSE mount was still in use after unmount; aborted its connection", "mountpoint", mountpoint)
	return nil
}

// unmountFUSE unmounts a FUSE server's mount and waits for its request loops. When
// something still holds the mount's superblock (an overlay of a container that keeps
// running, an open file), the loops would wait for that user forever: after a grace
// period the connection is aborted through fusectl, and its remaining users get EIO.
func unmountFUSE(srv *fuse.Server, mountpoint string, log *slog.Logger) error {
	var st unix.Stat_t
	statErr := unix.Stat(mountpoint, &st)
	done := make(chan error, 1)
	go func() { done <- srv.Unmount() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("unmount FUSE at %s: %w", mountpoint, err)
		}
		srv.Wait()
		return nil
	case <-time.After(2 * time.Second):
	}
	if statErr != nil {
		log.Error("FUSE unmount is waiting for users of the mount and its connection cannot be found", "mountpoint", mountpoint, "err", statErr)
	} else if err := abortFUSEConn(unix.Minor(st.Dev)); err != nil {
		log.Error("abort FUSE connection", "mountpoint", mountpoint, "err", err)
	} else {
		log.Warn("FUSE mount was still in use after unmount; aborted its connection", "mountpoint", mountpoint)
	}
	if err := <-done; err != nil {
		return fmt.Errorf("unmount FUSE at %s: %w", mountpoint, err)
	}
	srv.Wait()
	return nil
}

const fusectlDir = "/sys/fs/fuse/connections"

// abortFUSEConn aborts FUSE connection minor, mounting fusectl first if needed.
func abortFUSEConn(minor uint32) error {
	p := fmt.Sprintf("%s/%d/abort", fusectlDir, minor)
	if err := mountFusectl(); err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte("1"), 0o200); err != nil {
		return fmt.Errorf("abort FUSE connection %d: %w", minor, err)
	}
	return nil
}

// mountFusectl mounts the FUSE control filesystem unless it is mounted.
func mountFusectl() error {
	var st unix.Statfs_t
	if err := unix.Statfs(fusectlDir, &st); err == nil && st.Type == fusectlSuperMagic {
		return nil
	}
	if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount fusectl on %s: %w", fusectlDir, err)
	}
	return nil
}

const fusectlSuperMagic = 0x65735543

// WaitPrefetch blocks until the prefetch of the layer at mountpoint has ended.
func (f *RemoteFS) WaitPrefetch(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	m, ok := f.mounts[mountpoint]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("no remote layer mounted at %s", mountpoint)
	}
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status reports every mounted layer: "lazy, N% fetched, verified".
func (f *RemoteFS) Status() []LayerStatus {
	f.mu.Lock()
	ms := make([]*layerMount, 0, len(f.mounts))
	for _, m := range f.mounts {
		ms = append(ms, m)
	}
	f.mu.Unlock()
	out := make([]LayerStatus, 0, len(ms))
	for _, m := range ms {
		info := m.task.Info()
		st := LayerStatus{Layer: m.layer, Mountpoint: m.mountpoint, Mode: "lazy", Prefetch: "off"}
		if n := info.NumBlocks(); n > 0 {
			st.Fetched = 100 * float64(n-len(m.task.Missing())) / float64(n)
		}
		ts := m.task.Stats()
		st.BytesOrigin, st.BytesSeed, st.BytesPeers = ts.BytesOrigin, ts.BytesSeed, ts.BytesPeers
		st.Complete = info.State == blockstore.StateComplete
		st.Verified = st.Complete && info.Verified
		if m.pf != nil {
			p := m.pf.Progress()
			st.Prefetch = string(p.State)
			st.Error = p.Error
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Mountpoint < out[j].Mountpoint })
	return out
}

// Close stops every prefetch and unmounts every layer served in-process, keeping their
// tasks pinned: the snapshots still exist and the next start remounts them. Mounts served
// by layer servers stay (running containers keep them); the next start adopts them.
func (f *RemoteFS) Close() error {
	f.cancel()
	f.mu.Lock()
	ms := f.mounts
	f.mounts = map[string]*layerMount{}
	f.mu.Unlock()
	var errs []error
	for _, m := range ms {
		if m.srv == nil {
			m.stopPrefetch()
			continue
		}
		errs = append(errs, f.stop(m))
	}
	if f.api != nil {
		errs = append(errs, f.api.Close())
	}
	f.wg.Wait()
	return errors.Join(errs...)
}
