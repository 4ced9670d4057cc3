package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
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
}

// RemoteFS mounts eStargz layers whose bytes come through dfly's peer engine.
type RemoteFS struct {
	opt RemoteFSOptions
	log *slog.Logger

	ctx    context.Context // parent of every prefetch run; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	mounts map[string]*layerMount
	pins   map[string]int // task ID -> mounts using it (pinned in the store while > 0)
}

type layerMount struct {
	layer      string
	taskID     string
	mountpoint string
	task       *peer.Task
	srv        *fuse.Server
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
	return &RemoteFS{opt: opt, log: opt.Logger, ctx: ctx, cancel: cancel, mounts: map[string]*layerMount{}, pins: map[string]int{}}, nil
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
	if meta, err := f.opt.Engine.Store().Task(id); err == nil && meta.State == blockstore.StateComplete {
		req.URL = meta.Source // complete in the store: no registry round trip
	} else {
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
	srv, err := l.Mount(mountpoint, estargz.MountOptions{Logger: f.log.With("layer", layer)})
	if err != nil {
		return fmt.Errorf("FUSE mount of layer %s at %s: %w", layer, mountpoint, err)
	}
	m := &layerMount{layer: layer, taskID: id, mountpoint: mountpoint, task: task, srv: srv, done: make(chan struct{})}
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
		_ = f.stop(old)
		f.unpin(old.taskID)
	}
	return nil
}

// unpin drops one mount's claim on a task; the last one lets the store evict it.
func (f *RemoteFS) unpin(id string) {
	f.mu.Lock()
	f.pins[id]--
	last := f.pins[id] <= 0
	if last {
		delete(f.pins, id)
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

func (f *RemoteFS) stop(m *layerMount) error {
	if m.cancel != nil {
		m.cancel()
	}
	<-m.done
	return unmountFUSE(m.srv, m.mountpoint, f.log)
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
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount fusectl on %s: %w", fusectlDir, err)
		}
	}
	if err := os.WriteFile(p, []byte("1"), 0o200); err != nil {
		return fmt.Errorf("abort FUSE connection %d: %w", minor, err)
	}
	return nil
}

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

// Close stops every prefetch and unmounts every layer, keeping their tasks pinned: the
// snapshots still exist and the next start remounts them.
func (f *RemoteFS) Close() error {
	f.cancel()
	f.mu.Lock()
	ms := f.mounts
	f.mounts = map[string]*layerMount{}
	f.mu.Unlock()
	var errs []error
	for _, m := range ms {
		errs = append(errs, f.stop(m))
	}
	f.wg.Wait()
	return errors.Join(errs...)
}
