// Package snapshotter holds the snapshotter's integration tests and the helpers that
// build their images and registry: an in-process OCI registry that counts the bytes it
// serves and can corrupt one blob in transit, and image layers made from generated files
// and the host's static busybox.
package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/time/rate"
)

// File is one entry of a test layer.
type File struct {
	Name     string
	Mode     int64
	Data     []byte // content of a small file
	Size     int64  // generated content of this size when Data is nil
	Seed     uint64
	Dir      bool
	Linkname string // symlink target
}

// Generated writes size bytes of deterministic pseudo-random content for seed.
func Generated(size int64, seed uint64, w io.Writer) error {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	r := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := min(int64(len(buf)), size)
		_, _ = r.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

// WriteLayerTar writes files as an uncompressed layer tar at path.
func WriteLayerTar(path string, files []File) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	for _, e := range files {
		h := &tar.Header{Name: e.Name, Mode: e.Mode, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		switch {
		case e.Dir:
			h.Typeflag = tar.TypeDir
		case e.Linkname != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.Linkname
		case e.Data != nil:
			h.Size = int64(len(e.Data))
		default:
			h.Size = e.Size
		}
		if err := tw.WriteHeader(h); err != nil {
			_ = f.Close()
			return fmt.Errorf("tar header %s: %w", e.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if e.Data != nil {
				_, err = tw.Write(e.Data)
			} else {
				err = Generated(e.Size, e.Seed, tw)
			}
			if err != nil {
				_ = f.Close()
				return fmt.Errorf("tar content %s: %w", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// BusyboxFiles returns bin/busybox from the host's static busybox plus the applet
// symlinks the tests use.
func BusyboxFiles() ([]File, error) {
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("read /bin/busybox (install busybox-static): %w", err)
	}
	files := []File{{Name: "bin/", Dir: true, Mode: 0o755}, {Name: "bin/busybox", Mode: 0o755, Data: b},
		{Name: "tmp/", Dir: true, Mode: 0o1777}, {Name: "proc/", Dir: true, Mode: 0o755},
		{Name: "dev/", Dir: true, Mode: 0o755}, {Name: "sys/", Dir: true, Mode: 0o755},
		{Name: "etc/", Dir: true, Mode: 0o755}}
	for _, a := range []string{"sh", "cat", "sha256sum", "ls", "echo", "sleep", "wc"} {
		files = append(files, File{Name: "bin/" + a, Linkname: "busybox", Mode: 0o777})
	}
	return files, nil
}

// PushImage pushes an image made of the given layer tars (gzip-compressed, in order)
// whose entrypoint-less config runs under /bin.
func PushImage(ref string, layerTars ...string) (v1.Hash, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return v1.Hash{}, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Env = []string{"PATH=/bin"}
	cfg.Config.Cmd = []string{"/bin/sh"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return v1.Hash{}, err
	}
	for _, p := range layerTars {
		l, err := tarball.LayerFromFile(p, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(1))
		if err != nil {
			return v1.Hash{}, fmt.Errorf("layer %s: %w", p, err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return v1.Hash{}, err
		}
	}
	if err := remote.Write(r, img); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return img.Digest()
}

// Registry is an in-process OCI registry that counts the blob bytes it serves.
type Registry struct {
	srv       *httptest.Server
	extra     []*http.Server // ServeOn listeners
	blobBytes atomic.Int64

	mu         sync.Mutex
	tamperBlob string // digest whose served bytes get one byte flipped
	tamperAt   int64  // blob offset of that byte
	limiter    *rate.Limiter
}

// StartRegistry starts the registry on a loopback port; Close stops it.
func StartRegistry() *Registry {
	r := &Registry{}
	r.srv = httptest.NewServer(r.handler(registry.New(registry.Logger(log.New(io.Discard, "", 0)))))
	return r
}

// ServeOn serves the same registry (same blobs, same byte counter) on l too, e.g. a
// listener in a network namespace. Close stops it.
func (r *Registry) ServeOn(l net.Listener) {
	srv := &http.Server{Handler: r.srv.Config.Handler, ReadHeaderTimeout: 10 * time.Second}
	r.mu.Lock()
	r.extra = append(r.extra, srv)
	r.mu.Unlock()
	go func() { _ = srv.Serve(l) }() // ends when Close closes srv
}

func (r *Registry) handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/sha256:") {
			h.ServeHTTP(w, req)
			return
		}
		dgst := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
		start := int64(0)
		if rg := req.Header.Get("Range"); strings.HasPrefix(rg, "bytes=") {
			a, _, _ := strings.Cut(strings.TrimPrefix(rg, "bytes="), "-")
			start, _ = strconv.ParseInt(a, 10, 64)
		}
		r.mu.Lock()
		tamper, at := r.tamperBlob == dgst, r.tamperAt
		r.mu.Unlock()
		r.mu.Lock()
		lim := r.limiter
		r.mu.Unlock()
		cw := &countingWriter{ResponseWriter: w, n: &r.blobBytes, off: start, tamper: tamper, at: at, lim: lim, ctx: req.Context()}
		h.ServeHTTP(cw, req)
	})
}

// Host is the registry's host:port.
func (r *Registry) Host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

// BlobBytes is the number of blob body bytes served so far.
func (r *Registry) BlobBytes() int64 { return r.blobBytes.Load() }

// Tamper makes the registry flip the byte at offset off of blob dgst in every response.
func (r *Registry) Tamper(dgst string, off int64) {
	r.mu.Lock()
	r.tamperBlob, r.tamperAt = dgst, off
	r.mu.Unlock()
}

// SetRate caps the blob bytes/s the registry serves in all (0 = unlimited), emulating
// the link to a remote registry.
func (r *Registry) SetRate(bytesPerSec int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if bytesPerSec <= 0 {
		r.limiter = nil
		return
	}
	r.limiter = rate.NewLimiter(rate.Limit(bytesPerSec), 64<<10)
}

// Close stops the registry.
func (r *Registry) Close() {
	r.mu.Lock()
	extra := r.extra
	r.extra = nil
	r.mu.Unlock()
	for _, s := range extra {
		_ = s.Close()
	}
	r.srv.Close()
}

type countingWriter struct {
	http.ResponseWriter
	n      *atomic.Int64
	off    int64 // blob offset of the next byte written
	tamper bool
	at     int64
	lim    *rate.Limiter
	ctx    context.Context
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.tamper && c.at >= c.off && c.at < c.off+int64(len(p)) {
		p = bytes.Clone(p)
		p[c.at-c.off] ^= 0xff
	}
	if c.lim == nil {
		n, err := c.ResponseWriter.Write(p)
		c.n.Add(int64(n))
		c.off += int64(n)
		return n, err
	}
	written := 0
	for written < len(p) {
		chunk := p[written:min(len(p), written+c.lim.Burst())]
		if err := c.lim.WaitN(c.ctx, len(chunk)); err != nil {
			return written, err
		}
		n, err := c.ResponseWriter.Write(chunk)
		c.n.Add(int64(n))
		c.off += int64(n)
		written += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// BuildTestImage writes the test image as two layer tars in dir: busybox, then
// small files and a big generated file (seed 42). It returns the tar paths and the
// content of /small/file.
func BuildTestImage(dir string, bigSize int64) ([]string, []byte, error) {
	base, err := BusyboxFiles()
	if err != nil {
		return nil, nil, err
	}
	small := []byte("hello from a lazily pulled layer\n")
	data := []File{
		{Name: "small/", Dir: true, Mode: 0o755},
		{Name: "small/file", Mode: 0o644, Data: small},
		{Name: "small/other", Mode: 0o644, Data: []byte("other\n")},
		{Name: "etc/", Dir: true, Mode: 0o755},
		{Name: "etc/motd", Mode: 0o644, Data: []byte("dfly\n")},
		{Name: "big", Mode: 0o644, Size: bigSize, Seed: 42},
	}
	p1, p2 := filepath.Join(dir, "base.tar"), filepath.Join(dir, "data.tar")
	if err := WriteLayerTar(p1, base); err != nil {
		return nil, nil, err
	}
	if err := WriteLayerTar(p2, data); err != nil {
		return nil, nil, err
	}
	return []string{p1, p2}, small, nil
}
