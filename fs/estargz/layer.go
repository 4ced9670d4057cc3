// Package estargz serves an eStargz layer blob as a read-only FUSE tree.
//
// The blob is read through a context-aware ReaderAt (dfly's peer task in production), so
// only the byte ranges a read touches are fetched. The TOC is verified against the TOC
// digest from the layer's annotation before anything is mounted, and every chunk is
// decompressed and verified against its TOC chunk digest before a single byte of it is
// returned: a mismatch is EIO, never wrong bytes.
package estargz

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// Blob is the random-access view of a layer blob. *peer.Task satisfies it.
type Blob interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
}

// ErrTOCMismatch is returned by Open when the blob's TOC does not match the expected digest.
var ErrTOCMismatch = errors.New("estargz: TOC digest mismatch")

// ErrChunkCorrupt is returned (and surfaces as EIO) when a chunk does not match its digest.
var ErrChunkCorrupt = errors.New("estargz: chunk digest mismatch")

// Options tune a Layer.
type Options struct {
	// CacheBytes bounds the cache of decompressed, verified chunks (default 64 MiB).
	CacheBytes int64
}

// Layer is an opened, TOC-verified eStargz blob.
type Layer struct {
	blob  Blob
	size  int64
	r     *estargz.Reader
	cache *chunkCache
}

// ctxReaderAt adapts a Blob to io.ReaderAt for a fixed context.
type ctxReaderAt struct {
	ctx  context.Context
	blob Blob
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) { return c.blob.ReadAt(c.ctx, p, off) }

// Open reads the footer and TOC of the blob (size bytes) and verifies the TOC against
// tocDigest. An empty tocDigest is refused: an unverified TOC is never mounted.
func Open(ctx context.Context, blob Blob, size int64, tocDigest digest.Digest, opt Options) (*Layer, error) {
	if tocDigest == "" {
		return nil, fmt.Errorf("open eStargz layer: no TOC digest given (the layer needs the %s annotation): %w", TOCDigestAnnotation, ErrTOCMismatch)
	}
	if err := tocDigest.Validate(); err != nil {
		return nil, fmt.Errorf("open eStargz layer: bad TOC digest %q: %w", tocDigest, err)
	}
	sr := io.NewSectionReader(ctxReaderAt{ctx: ctx, blob: blob}, 0, size)
	if err := checkFooter(sr); err != nil {
		return nil, fmt.Errorf("open eStargz layer: read footer/TOC: %w", err)
	}
	r, err := estargz.Open(sr)
	if err != nil {
		return nil, fmt.Errorf("open eStargz layer: read footer/TOC: %w", err)
	}
	if got := r.TOCDigest(); got != tocDigest {
		return nil, fmt.Errorf("open eStargz layer: TOC is %s, annotation says %s: %w", got, tocDigest, ErrTOCMismatch)
	}
	if opt.CacheBytes <= 0 {
		opt.CacheBytes = 64 << 20
	}
	return &Layer{blob: blob, size: size, r: r, cache: newChunkCache(opt.CacheBytes)}, nil
}

// checkFooter refuses a footer whose TOC offset is negative or past the
// footer: estargz.Open (v0.19.1) panics on one (it slices the bytes it
// read with a negative TOC size, or parses a TOC from a nil reader).
func checkFooter(sr *io.SectionReader) error {
	for _, d := range []estargz.Decompressor{new(estargz.GzipDecompressor), new(estargz.LegacyGzipDecompressor)} {
		fsize := d.FooterSize()
		if sr.Size() < fsize {
			continue
		}
		footer := make([]byte, fsize)
		if _, err := sr.ReadAt(footer, sr.Size()-fsize); err != nil {
			return fmt.Errorf("read footer: %w", err)
		}
		if _, off, _, err := d.ParseFooter(footer); err == nil && (off < 0 || off > sr.Size()-fsize) {
			return fmt.Errorf("footer puts the TOC at %d, outside the %d-byte blob", off, sr.Size())
		}
	}
	return nil
}

// TOCDigestAnnotation is the layer annotation carrying the TOC digest.
const TOCDigestAnnotation = estargz.TOCJSONDigestAnnotation

// Size is the blob's compressed size.
func (l *Layer) Size() int64 { return l.size }

// Lookup returns the TOC entry of a path relative to the layer root.
func (l *Layer) Lookup(name string) (*estargz.TOCEntry, bool) { return l.r.Lookup(name) }

// PrefetchRange returns the blob range [0, end) that holds the files the image author
// prioritized (everything before the .prefetch.landmark entry). ok is false when the
// layer has no landmark or says not to prefetch.
func (l *Layer) PrefetchRange() (end int64, ok bool) {
	if _, no := l.r.Lookup(estargz.NoPrefetchLandmark); no {
		return 0, false
	}
	e, has := l.r.Lookup(estargz.PrefetchLandmark)
	if !has {
		return 0, false
	}
	return e.Offset, true
}

// ReadFile reads the regular file name at off into p, verifying every chunk it touches.
func (l *Layer) ReadFile(ctx context.Context, name string, p []byte, off int64) (int, error) {
	e, ok := l.r.Lookup(name)
	if !ok || e.Type != "reg" {
		return 0, fmt.Errorf("read %q: not a regular file in the layer", name)
	}
	if off >= e.Size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < e.Size {
		ce, ok := l.r.ChunkEntryForOffset(name, off)
		if !ok {
			return n, fmt.Errorf("read %q at %d: no chunk in TOC: %w", name, off, ErrChunkCorrupt)
		}
		data, err := l.chunk(ctx, ce)
		if err != nil {
			return n, err
		}
		if off < ce.ChunkOffset || off-ce.ChunkOffset >= int64(len(data)) {
			// The TOC's chunks do not tile the file (a gap, or a chunk
			// shorter than the file says).
			return n, fmt.Errorf("read %q at %d: the TOC's chunk at %d (%d bytes) does not hold it: %w", name, off, ce.ChunkOffset, len(data), ErrChunkCorrupt)
		}
		c := copy(p[n:], data[off-ce.ChunkOffset:])
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// chunk returns the verified, decompressed bytes of chunk entry ce.
func (l *Layer) chunk(ctx context.Context, ce *estargz.TOCEntry) ([]byte, error) {
	key := chunkKey{off: ce.Offset, inner: ce.InnerOffset}
	if b, ok := l.cache.get(key); ok {
		return b, nil
	}
	want, err := digest.Parse(ce.ChunkDigest)
	if err != nil {
		return nil, fmt.Errorf("chunk of %q at %d has no valid digest in the TOC: %w", ce.Name, ce.ChunkOffset, ErrChunkCorrupt)
	}
	end := ce.NextOffset()
	if end <= ce.Offset || end > l.size {
		return nil, fmt.Errorf("chunk of %q at %d has bad blob range [%d,%d): %w", ce.Name, ce.ChunkOffset, ce.Offset, end, ErrChunkCorrupt)
	}
	comp := make([]byte, end-ce.Offset)
	if _, err := l.blob.ReadAt(ctx, comp, ce.Offset); err != nil && !(errors.Is(err, io.EOF) && ce.Offset+int64(len(comp)) == l.size) {
		return nil, fmt.Errorf("read chunk of %q at blob offset %d: %w", ce.Name, ce.Offset, err)
	}
	data, err := decompressChunk(comp, ce.InnerOffset, ce.ChunkSize)
	if err != nil {
		return nil, fmt.Errorf("decompress chunk of %q at %d: %v: %w", ce.Name, ce.ChunkOffset, err, ErrChunkCorrupt)
	}
	if got := want.Algorithm().FromBytes(data); got != want {
		return nil, fmt.Errorf("chunk of %q at %d is %s, TOC says %s: %w", ce.Name, ce.ChunkOffset, got, want, ErrChunkCorrupt)
	}
	l.cache.put(key, data)
	return data, nil
}

func decompressChunk(comp []byte, inner, size int64) ([]byte, error) {
	zr, err := (&estargz.GzipDecompressor{}).Reader(bytes.NewReader(comp))
	if err != nil {
		return nil, err
	}
	defer func() { _ = zr.Close() }()
	if inner > 0 {
		if _, err := io.CopyN(io.Discard, zr, inner); err != nil {
			return nil, fmt.Errorf("skip inner offset %d: %w", inner, err)
		}
	}
	if size < 0 {
		return nil, fmt.Errorf("chunk size %d", size)
	}
	// Not make([]byte, size): the size is the TOC's word, the bytes are
	// what the chunk really decompresses to.
	buf := bytes.NewBuffer(make([]byte, 0, min(size, 16<<20)))
	if _, err := io.Copy(buf, io.LimitReader(zr, size)); err != nil {
		return nil, fmt.Errorf("read %d bytes: %w", size, err)
	}
	if int64(buf.Len()) != size {
		return nil, fmt.Errorf("read %d bytes: %w", size, io.ErrUnexpectedEOF)
	}
	return buf.Bytes(), nil
}

type chunkKey struct{ off, inner int64 }

// chunkCache is a byte-bounded LRU of verified chunks.
type chunkCache struct {
	mu    sync.Mutex
	max   int64
	bytes int64
	ll    *list.List
	m     map[chunkKey]*list.Element
}

type cacheEntry struct {
	key  chunkKey
	data []byte
}

func newChunkCache(max int64) *chunkCache {
	return &chunkCache{max: max, ll: list.New(), m: map[chunkKey]*list.Element{}}
}

func (c *chunkCache) get(k chunkKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[k]; ok {
		c.ll.MoveToFront(el)
		return el.Value.(*cacheEntry).data, true
	}
	return nil, false
}

func (c *chunkCache) put(k chunkKey, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; ok || int64(len(data)) > c.max {
		return
	}
	c.m[k] = c.ll.PushFront(&cacheEntry{key: k, data: data})
	c.bytes += int64(len(data))
	for c.bytes > c.max {
		el := c.ll.Back()
		e := el.Value.(*cacheEntry)
		c.ll.Remove(el)
		delete(c.m, e.key)
		c.bytes -= int64(len(e.data))
	}
}
