package netbench

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/peer"
)

// Compression (issue 17): dfly's runs can be repeated with several
// --compress modes in one sweep (Config.Compress), and the content can be
// a compressible tar of real files instead of random bytes
// (Config.Content). Each run then records the bytes the peers' NICs
// received and the daemons' own compression counters.

// Contents every host can download.
const (
	ContentRandom = "random" // generated, incompressible (dforigin --generate)
	ContentTar    = "tar"    // a tar of real files (Config.ContentDirs), cut at Config.Size
)

// DefaultContentDirs are the trees a tar content is made of: what a
// Debian root filesystem mostly holds (text, binaries, some compressed
// files).
func DefaultContentDirs() []string { return []string{"/usr/share", "/usr/lib"} }

// errFull stops a tar that reached its size.
var errFull = errors.New("content full")

// cutWriter writes at most left bytes, then fails with errFull.
type cutWriter struct {
	w    io.Writer
	left int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errFull
	}
	cut := int64(len(p)) > c.left
	if cut {
		p = p[:c.left]
	}
	n, err := c.w.Write(p)
	c.left -= int64(n)
	if err == nil && cut {
		err = errFull
	}
	return n, err
}

// BuildTar writes a tar of the directories, regular files and symlinks
// under dirs (in lexical order, unreadable ones left out) to path, cut at
// exactly size bytes, and returns the file's sha256 (hex). It fails when
// the trees hold less than size bytes.
func BuildTar(path string, size int64, dirs []string) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("build the tar content: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	cw := &cutWriter{w: io.MultiWriter(f, h), left: size}
	tw := tar.NewWriter(cw)
	werr := func() error {
		for _, root := range dirs {
			err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return nil // unreadable: left out
				}
				fi, err := d.Info()
				if err != nil {
					return nil
				}
				link := ""
				switch {
				case fi.Mode()&fs.ModeSymlink != 0:
					if link, err = os.Readlink(p); err != nil {
						return nil
					}
				case !fi.Mode().IsRegular() && !fi.IsDir():
					return nil
				}
				hdr, err := tar.FileInfoHeader(fi, link)
				if err != nil {
					return nil
				}
				hdr.Name = strings.TrimPrefix(p, "/")
				if !fi.Mode().IsRegular() {
					return tw.WriteHeader(hdr)
				}
				src, err := os.Open(p)
				if err != nil {
					return nil
				}
				defer src.Close()
				if err := tw.WriteHeader(hdr); err != nil {
					return err
				}
				if _, err := io.Copy(tw, src); err != nil {
					return err
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return tw.Close()
	}()
	if werr != nil && !errors.Is(werr, errFull) {
		return "", fmt.Errorf("build the tar content %s: %w", path, werr)
	}
	if cw.left > 0 {
		return "", fmt.Errorf("build the tar content: %s hold only %d bytes, want %d: pass a smaller --size or more --content-dirs", strings.Join(dirs, ", "), size-cw.left, size)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("build the tar content %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// prepareContent checks the --compress modes and builds the tar content
// (WorkDir/content/bench.bin) when Config.Content asks for it.
func (b *Bench) prepareContent() error {
	for _, m := range b.cfg.Compress {
		if _, err := compress.ParseMode(m); err != nil {
			return fmt.Errorf("netbench: --compress: %w", err)
		}
	}
	switch b.cfg.Content {
	case "", ContentRandom:
		return nil
	case ContentTar:
	default:
		return fmt.Errorf("netbench: content %q: want %s or %s", b.cfg.Content, ContentRandom, ContentTar)
	}
	for _, s := range b.cfg.Scenarios {
		if s == BitTorrent {
			return fmt.Errorf("netbench: content %s: the %s scenario seeds generated content only; leave it out", ContentTar, BitTorrent)
		}
	}
	dirs := b.cfg.ContentDirs
	if len(dirs) == 0 {
		dirs = DefaultContentDirs()
	}
	b.contentDir = filepath.Join(b.cfg.WorkDir, "content")
	if err := os.MkdirAll(b.contentDir, 0o755); err != nil {
		return fmt.Errorf("create content dir: %w", err)
	}
	b.cfg.Log.Info("building the tar content", "dirs", dirs, "bytes", b.cfg.Size)
	sum, err := BuildTar(filepath.Join(b.contentDir, fileName), b.cfg.Size, dirs)
	if err != nil {
		return err
	}
	b.digest = sum
	return nil
}

// originContent returns dforigin's flags that serve the content as fileName.
func (b *Bench) originContent() []string {
	if b.contentDir != "" {
		return []string{"--dir", b.contentDir}
	}
	return []string{"--generate", fmt.Sprintf("%s=%d:%d", fileName, b.cfg.Size, b.cfg.Seed)}
}

// modes returns the --compress modes a scenario runs with ("": the
// binaries' default, for scenarios without dfly or when none is set).
func (b *Bench) modes(scenario string) []string {
	if !NeedsDfly(scenario) || len(b.cfg.Compress) == 0 {
		return []string{""}
	}
	return b.cfg.Compress
}

// compressArgs is the --compress flag of a run's dfly processes.
func compressArgs(mode string) []string {
	if mode == "" {
		return nil
	}
	return []string{"--compress", mode}
}

// CompressionTotals sum the daemons' compression counters over a run's
// hosts (peer.DaemonStats.Compression).
type CompressionTotals struct {
	// Asked counts block requests that asked for compressed forms;
	// BlocksCompressed the blocks that came compressed.
	Asked            int64 `json:"asked"`
	BlocksCompressed int64 `json:"blocks_compressed"`
	// BytesPlain is the plain length of the blocks the daemons received
	// from the swarm, BytesWire what their bodies took on the wire.
	BytesPlain int64 `json:"bytes_plain"`
	BytesWire  int64 `json:"bytes_wire"`
}

// collectCompression reads every daemon's compression counters through its
// local API socket (a path: reachable from outside its network namespace).
func collectCompression(ctx context.Context, hosts []*hostRun) (*CompressionTotals, error) {
	var tot CompressionTotals
	for _, h := range hosts {
		c, err := peer.DialDaemon(ctx, filepath.Join(h.dir, "dfdaemon.sock"))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", h.host.Name, err)
		}
		st, err := c.Stats(ctx)
		c.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: stats: %w", h.host.Name, err)
		}
		if s := st.Compression; s != nil {
			tot.Asked += s.Asked
			tot.BlocksCompressed += s.BlocksCompressed
			tot.BytesPlain += s.BytesPlain
			tot.BytesWire += s.BytesWire
		}
	}
	return &tot, nil
}

// peersRx is the sum of the bytes the peers' NICs received.
func peersRx(ctx context.Context, topo *Topology) (int64, error) {
	var n int64
	for _, p := range topo.Peers {
		c, err := Counters(ctx, p.NS, "eth0")
		if err != nil {
			return 0, err
		}
		n += c.RxBytes
	}
	return n, nil
}

// Label names a result in tables and plots: the scenario, then the content
// when it is not random, then the compress mode.
func (r Result) Label() string {
	l := r.Scenario
	if r.Content != "" && r.Content != ContentRandom {
		l += "/" + r.Content
	}
	if r.Compress != "" {
		l += " compress=" + r.Compress
	}
	return l
}

// runName names a run's directory: the scenario, and its --compress mode.
func runName(scenario, compress string) string {
	if compress == "" {
		return scenario
	}
	return scenario + "-compress-" + compress
}
