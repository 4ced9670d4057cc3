// Package snapshotter is dfly's containerd remote snapshotter: an overlayfs snapshotter
// (containerd's own) that, for eStargz layers whose Prepare carries the target reference
// and layer digest labels, mounts the layer lazily through FUSE instead of letting
// containerd download and unpack it.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
)

// Labels the snapshotter reads or writes.
const (
	// TOCDigestLabel is the eStargz TOC digest annotation containerd passes as a label.
	TOCDigestLabel = "containerd.io/snapshot/stargz/toc.digest"
	// RemoteLabel marks a committed snapshot whose content is a dfly FUSE mount.
	RemoteLabel = "dfly.io/remote"
	// upperdirLabel is set by containerd's overlay snapshotter (WithUpperdirLabel).
	upperdirLabel = "containerd.io/snapshot/overlay.upperdir"
)

// FileSystem is the seam between the snapshotter and the lazy filesystem. Mount serves the
// layer described by labels at mountpoint; Check tells whether the mount still works;
// Unmount stops it and releases its resources.
type FileSystem interface {
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	Check(ctx context.Context, mountpoint string, labels map[string]string) error
	Unmount(ctx context.Context, mountpoint string) error
}

// Options tune a Snapshotter.
type Options struct {
	Logger *slog.Logger
	// AsyncRemove makes Remove only drop metadata and Cleanup delete directories.
	AsyncRemove bool
}

// Snapshotter wraps containerd's overlay snapshotter with remote (lazy) layers.
type Snapshotter struct {
	snapshots.Snapshotter // containerd's overlay snapshotter under root/overlay
	fs                    FileSystem
	log                   *slog.Logger
}

// New opens (or creates) a snapshotter rooted at root and remounts the remote layers
// committed by an earlier run.
func New(ctx context.Context, root string, fs FileSystem, opt Options) (*Snapshotter, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshotter root %s: %w", root, err)
	}
	ovOpts := []overlay.Opt{overlay.WithUpperdirLabel}
	if opt.AsyncRemove {
		ovOpts = append(ovOpts, overlay.AsynchronousRemove)
	}
	inner, err := overlay.NewSnapshotter(filepath.Join(root, "overlay"), ovOpts...)
	if err != nil {
		return nil, fmt.Errorf("open overlay snapshotter in %s (needs a filesystem overlayfs accepts as upper): %w", root, err)
	}
	s := &Snapshotter{Snapshotter: inner, fs: fs, log: opt.Logger}
	if err := s.restore(ctx); err != nil {
		_ = inner.Close()
		return nil, err
	}
	return s, nil
}

// isRemoteCandidate reports whether a Prepare asks for a layer we may mount remotely.
func isRemoteCandidate(labels map[string]string) bool {
	return labels[snapshotters.TargetRefLabel] != "" && labels[snapshotters.TargetLayerDigestLabel] != "" &&
		labels["containerd.io/snapshot.ref"] != ""
}

// Prepare creates an active snapshot; for a remote-capable layer it mounts the layer,
// commits it under the target chain ID and returns ALREADY_EXISTS so containerd skips
// its download.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	target := base.Labels["containerd.io/snapshot.ref"]
	if !isRemoteCandidate(base.Labels) {
		return s.Snapshotter.Prepare(ctx, key, parent, opts...)
	}
	if _, err := s.Stat(ctx, target); err == nil {
		return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	}
	mounts, err := s.Snapshotter.Prepare(ctx, key, parent, opts...)
	if err != nil {
		return nil, err
	}
	layer := base.Labels[snapshotters.TargetLayerDigestLabel]
	if base.Labels[TOCDigestLabel] == "" {
		s.log.Info("layer is not eStargz (no TOC digest annotation); containerd downloads and unpacks it", "layer", layer, "path", "local")
		return mounts, nil
	}
	info, err := s.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	mp := info.Labels[upperdirLabel]
	if mp == "" {
		return nil, fmt.Errorf("prepare %q: overlay snapshotter reported no upperdir: %w", key, errdefs.ErrUnknown)
	}
	if err := s.fs.Mount(ctx, mp, base.Labels); err != nil {
		s.log.Warn("remote mount failed; falling back to a local snapshot that containerd downloads and unpacks", "layer", layer, "path", "local", "err", err)
		return mounts, nil
	}
	commitLabels := map[string]string{}
	for k, v := range base.Labels {
		commitLabels[k] = v
	}
	commitLabels[RemoteLabel] = "true"
	if err := s.Snapshotter.Commit(ctx, target, key, snapshots.WithLabels(commitLabels)); err != nil {
		_ = s.fs.Unmount(ctx, mp)
		if errdefs.IsAlreadyExists(err) {
			_ = s.Snapshotter.Remove(ctx, key)
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("commit remote snapshot %q: %w", target, err)
	}
	s.log.Info("layer mounted lazily", "layer", layer, "path", "remote", "snapshot", target, "mountpoint", mp)
	return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
}

// Remove unmounts a remote layer before removing its snapshot.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	info, err := s.Stat(ctx, key)
	if err != nil {
		return err
	}
	mp := info.Labels[upperdirLabel]
	remote := info.Labels[RemoteLabel] == "true" && mp != ""
	if remote {
		// Refuse early when the snapshot still has children (the overlay would too,
		// but only after we had unmounted a lower layer in use).
		var hasChild bool
		_ = s.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			if i.Parent == key {
				hasChild = true
			}
			return nil
		})
		if hasChild {
			return fmt.Errorf("remove %q: snapshot has children: %w", key, errdefs.ErrFailedPrecondition)
		}
		if err := s.fs.Unmount(ctx, mp); err != nil {
			return fmt.Errorf("remove %q: unmount remote layer at %s: %w", key, mp, err)
		}
	}
	if err := s.Snapshotter.Remove(ctx, key); err != nil {
		if remote {
			if merr := s.fs.Mount(ctx, mp, info.Labels); merr != nil {
				s.log.Error("remove failed and the layer could not be remounted", "snapshot", key, "err", merr)
			}
		}
		return err
	}
	return nil
}

// restore brings back every committed remote snapshot after a restart: a mount still
// served (by a layer server process) is kept and its task re-opened; a dead one is
// remounted from the block store.
func (s *Snapshotter) restore(ctx context.Context) error {
	var infos []snapshots.Info
	err := s.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Labels[RemoteLabel] == "true" && i.Labels[upperdirLabel] != "" {
			infos = append(infos, i)
		}
		return nil
	})
	if err != nil && !errdefs.IsNotFound(err) { // a new store has no buckets yet
		return fmt.Errorf("list snapshots to remount: %w", err)
	}
	for _, i := range infos {
		mp := i.Labels[upperdirLabel]
		// A mount left by a dead server answers ENOTCONN; detach it first. A live one
		// (served by a layer server process that outlived the old snapshotter) stays:
		// the overlays of running containers hold it.
		if !fuseAlive(mp) {
			detachStale(mp, s.log)
		}
		if err := s.fs.Mount(ctx, mp, i.Labels); err != nil {
			s.log.Error("remount of remote layer failed; containers using it will see I/O errors", "snapshot", i.Name, "mountpoint", mp, "err", err)
			continue
		}
		s.log.Info("remote layer restored", "snapshot", i.Name, "layer", i.Labels[snapshotters.TargetLayerDigestLabel], "mountpoint", mp)
	}
	return nil
}

// Check reports an error for every remote layer whose mount does not work.
func (s *Snapshotter) Check(ctx context.Context) error {
	var errs []error
	err := s.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Labels[RemoteLabel] == "true" {
			if err := s.fs.Check(ctx, i.Labels[upperdirLabel], i.Labels); err != nil {
				errs = append(errs, fmt.Errorf("snapshot %s: %w", i.Name, err))
			}
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}

// Close closes the overlay snapshotter. The remote mounts belong to the FileSystem,
// whose owner closes it (the next New remounts them, or adopts those a layer server
// process still serves).
func (s *Snapshotter) Close() error {
	return s.Snapshotter.Close()
}
