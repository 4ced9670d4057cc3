package supernode

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/blockhttp"
	"github.com/dfly-p2p/dfly/internal/compress"
)

// The seed's compression (issue 17, internal/compress): every block the
// seed stores from the origin is offered to a small pool of trial workers
// (Compressor) before it is announced, so the first copy that leaves the
// seed can already be the compressed one; a block is tried once (its form,
// or "not worth it", is kept beside the seed's store in
// StoreDir/compressed) and only while the supernode is not loaded
// (compress.Idle: under half of its upload slots in use, CPU other than
// compressing under half of all CPUs). Blocks announced untried (a loaded
// supernode, a seed restarted over a store of blocks) are tried when a
// peer asks for their form, the most asked for first. The upload server
// answers requests that ask for zstd with the form. End-to-end encrypted
// tasks (ciphertext) and tasks of a sealed store (a form would be
// plaintext at rest) are never tried.

// FormsDir is the subdirectory of the supernode's store directory that
// keeps the compressed forms of the seed's blocks.
const FormsDir = "compressed"

// announceWait bounds how long a stored block waits for its trial before
// the seed announces it anyway (the trial then goes on): a compressor that
// cannot keep up with the origin slows the seed by at most this much per
// block, and the blocks it could not try in time travel plain. With
// compress.Always the seed waits for every trial (up to alwaysWait), so
// every block leaves it compressed when it compresses.
const (
	announceWait = 100 * time.Millisecond
	alwaysWait   = 10 * time.Second
)

// formsPruneEvery is how often the forms of tasks the store no longer
// holds are removed.
const formsPruneEvery = time.Minute

// seedCompression is the supernode's compression; a nil one does nothing.
type seedCompression struct {
	codec  *compress.Codec
	pool   *compress.Compressor
	host   *compress.Host
	pruner *compress.Pruner
	once   sync.Once
}

// startCompression sets up the seed's compression for Config.Compress.
func (s *Supernode) startCompression() error {
	if s.cfg.Compress == compress.Off {
		return nil
	}
	codec, err := compress.NewCodec(0)
	if err != nil {
		return fmt.Errorf("compression: %w", err)
	}
	forms, err := compress.OpenForms(filepath.Join(s.cfg.StoreDir, FormsDir), compress.FormsOptions{Codec: codec, MaxBytes: s.cfg.Quota / 4, Logger: s.log})
	if err != nil {
		codec.Close()
		return fmt.Errorf("%w (or pass --compress off)", err)
	}
	c := &seedCompression{codec: codec}
	cpu := compress.ProcessSampler(func() float64 { return c.pool.Busy() })
	c.pool = compress.NewCompressor(compress.CompressorConfig{
		Forms: forms, Codec: codec, Mode: s.cfg.Compress, Logger: s.log,
		Idle: func() bool {
			share, known := cpu.Ratio()
			return compress.Idle(s.uploadInFlight(), s.uploadSlots(), share, known)
		},
		Read:   s.store.ReadBlock,
		Digest: s.store.BlockDigest,
		Skip: func(task string) bool {
			t, err := s.store.Task(task)
			return err != nil || t.E2E || t.Sealed || blockstore.IsE2ETaskID(task)
		},
	})
	c.host = compress.NewHost(compress.HostConfig{Mode: s.cfg.Compress, Codec: codec, Forms: forms, OnWanted: c.pool.Wanted, Logger: s.log})
	c.pruner = compress.StartPruner(forms, formsPruneEvery, func(task string) bool {
		_, err := s.store.Task(task)
		return !errors.Is(err, blockstore.ErrNotFound)
	})
	s.comp = c
	return nil
}

// uploadSlots is the upload server's cap on concurrent uploads.
func (s *Supernode) uploadSlots() int {
	if s.upload == nil {
		return 0
	}
	return s.upload.cfg.MaxUploads
}

// stored is the seed's BeforeAnnounce: the block's trial, waited for at
// most announceWait (alwaysWait with compress.Always).
func (c *seedCompression) stored(ctx context.Context, task string, idx int, data []byte) {
	if c == nil {
		return
	}
	wait := announceWait
	if c.host.Mode() == compress.Always {
		wait = alwaysWait
	}
	c.pool.Stored(ctx, task, idx, data, wait)
}

// Host is what the upload server serves forms from (nil when off).
func (c *seedCompression) Host() *compress.Host {
	if c == nil {
		return nil
	}
	return c.host
}

// Stats are the compressor's counters (nil when off).
func (c *seedCompression) Stats() *compress.CompressorStats {
	if c == nil {
		return nil
	}
	st := c.pool.Stats()
	return &st
}

// close stops the pruning and the workers (after the seed: its fetches
// wait on them) and releases the codec.
func (c *seedCompression) close() {
	if c == nil {
		return
	}
	c.once.Do(func() {
		c.pruner.Stop()
		c.pool.Close()
		c.codec.Close()
	})
}

// ask makes the check of a bad-block report ask for the compressed form
// too (a parent could lie in those only) and reports whether it did.
func (c *seedCompression) ask(req *http.Request) bool {
	if c.Host() == nil {
		return false
	}
	req.Header.Set("Accept-Encoding", blockhttp.EncodingZstd)
	return true
}

// formIsBad reports whether a compressed answer to a check is a bad block
// of n bytes whose SHA-256 is want: an encoding not asked for, a body that
// does not decode to n bytes, or other bytes. A failed read is an error.
func (c *seedCompression) formIsBad(resp *http.Response, asked bool, n int64, want []byte) (bool, error) {
	if !asked || !strings.EqualFold(strings.TrimSpace(resp.Header.Get("Content-Encoding")), blockhttp.EncodingZstd) {
		return true, nil
	}
	form, err := io.ReadAll(io.LimitReader(resp.Body, n))
	if err != nil {
		return false, fmt.Errorf("read the compressed block from the parent: %w", err)
	}
	if int64(len(form)) >= n {
		return true, nil // a form is smaller than its block
	}
	plain, err := c.host.Decode(nil, form, int(n))
	if err != nil {
		return true, nil
	}
	sum := sha256.Sum256(plain)
	return !bytes.Equal(sum[:], want), nil
}
