package peer

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/compress"
)

// FormsDir is the subdirectory of a daemon's store directory that keeps
// the compressed forms of its blocks (internal/compress.Forms).
const FormsDir = "compressed"

// pruneEvery is how often the forms of tasks the store no longer holds
// (deleted, evicted) are removed.
const pruneEvery = time.Minute

// compression is a daemon's compression: the Host the swarm and the upload
// server share, and the pruning of its side store.
type compression struct {
	host   *compress.Host
	codec  *compress.Codec
	pruner *compress.Pruner
}

// openCompression opens the side store of forms (STORE/compressed, capped
// at a quarter of the quota when there is one) for cfg.Compress; nil for
// Off, and in origin mode (no swarm: nothing to ask or serve).
func openCompression(cfg DaemonConfig, store *blockstore.Store) (*compression, error) {
	if cfg.Compress == compress.Off || cfg.Supernode == "" {
		return nil, nil
	}
	codec, err := compress.NewCodec(0)
	if err != nil {
		return nil, fmt.Errorf("dfdaemon: compression: %w", err)
	}
	forms, err := compress.OpenForms(filepath.Join(cfg.StoreDir, FormsDir), compress.FormsOptions{Codec: codec, MaxBytes: cfg.Quota / 4, Logger: cfg.Logger})
	if err != nil {
		codec.Close()
		return nil, fmt.Errorf("dfdaemon: %w (or pass --compress off)", err)
	}
	host := compress.NewHost(compress.HostConfig{Mode: cfg.Compress, Codec: codec, Forms: forms, Logger: cfg.Logger, OnSaved: cfg.Metrics.compressionSaved})
	return &compression{host: host, codec: codec, pruner: compress.StartPruner(forms, pruneEvery, heldBy(store))}, nil
}

// heldBy is the pruning rule: only a task the store says it lacks loses
// its forms (not one a failing lookup could not find).
func heldBy(store *blockstore.Store) func(task string) bool {
	return func(task string) bool {
		_, err := store.Task(task)
		return !errors.Is(err, blockstore.ErrNotFound)
	}
}

// Host returns the compression Host (nil when off).
func (c *compression) Host() *compress.Host {
	if c == nil {
		return nil
	}
	return c.host
}

// close stops the pruning and releases the codec; safe to call twice.
func (c *compression) close() {
	if c == nil || c.pruner == nil {
		return
	}
	c.pruner.Stop()
	c.pruner = nil
	c.codec.Close()
}
