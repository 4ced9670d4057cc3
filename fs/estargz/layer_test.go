package estargz

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// memBlob is an in-memory Blob that counts the bytes read from it.
type memBlob struct {
	b    []byte
	read atomic.Int64
}

func (m *memBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	m.read.Add(int64(n))
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

type tarEntry struct {
	hdr  tar.Header
	data []byte
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// buildBlob makes an eStargz blob from entries; chunkSize small so files span chunks.
func buildBlob(t testing.TB, entries []tarEntry, opts ...estargz.Option) ([]byte, digest.Digest) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if h.Format == tar.FormatUnknown && len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if len(e.data) > 0 {
			if _, err := tw.Write(e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	opts = append([]estargz.Option{estargz.WithChunkSize(64 << 10), estargz.WithCompressionLevel(1)}, opts...)
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb.Bytes()), 0, int64(tb.Len())), opts...)
	if err != nil {
		t.Fatalf("estargz.Build: %v", err)
	}
	defer func() { _ = blob.Close() }()
	out, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	return out, blob.TOCDigest()
}

func TestOpenVerifiesTOC(t *testing.T) {
	b, toc := buildBlob(t, []tarEntry{{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}, data: []byte("hello")}})
	ctx := context.Background()
	tests := []struct {
		name    string
		toc     digest.Digest
		wantErr error
	}{
		{"right digest", toc, nil},
		{"wrong digest", digest.FromString("something else"), ErrTOCMismatch},
		{"no digest", "", ErrTOCMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(ctx, &memBlob{b: b}, int64(len(b)), tc.toc, Options{})
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Open: %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestReadFileLazyAndVerified(t *testing.T) {
	big := randBytes(1, 1<<20)
	small := []byte("small file content\n")
	b, toc := buildBlob(t, []tarEntry{
		{hdr: tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, data: big},
		{hdr: tar.Header{Name: "small", Typeflag: tar.TypeReg, Mode: 0o644}, data: small},
	})
	mb := &memBlob{b: b}
	ctx := context.Background()
	l, err := Open(ctx, mb, int64(len(b)), toc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	afterOpen := mb.read.Load()
	p := make([]byte, len(small))
	if n, err := l.ReadFile(ctx, "small", p, 0); err != nil || n != len(small) || !bytes.Equal(p, small) {
		t.Fatalf("ReadFile(small) = %d %v %q", n, err, p)
	}
	if got := mb.read.Load() - afterOpen; got > 4096 {
		t.Fatalf("reading a %d-byte file read %d blob bytes; want only its chunk", len(small), got)
	}
	// A read crossing chunk boundaries (chunk size 64 KiB).
	off := int64(64<<10 - 100)
	q := make([]byte, 200<<10)
	n, err := l.ReadFile(ctx, "big", q, off)
	if err != nil || n != len(q) || !bytes.Equal(q, big[off:off+int64(len(q))]) {
		t.Fatalf("ReadFile(big) across chunks = %d %v, equal=%v", n, err, bytes.Equal(q[:n], big[off:off+int64(n)]))
	}
	// Reading past the end returns the tail and io.EOF.
	tail := make([]byte, 100)
	n, err = l.ReadFile(ctx, "big", tail, int64(len(big)-10))
	if !errors.Is(err, io.EOF) || n != 10 || !bytes.Equal(tail[:10], big[len(big)-10:]) {
		t.Fatalf("tail read = %d %v", n, err)
	}
}

func TestTamperedChunkFails(t *testing.T) {
	big := randBytes(2, 256<<10)
	b, toc := buildBlob(t, []tarEntry{{hdr: tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, data: big}})
	ctx := context.Background()
	l, err := Open(ctx, &memBlob{b: b}, int64(len(b)), toc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ce, ok := l.r.ChunkEntryForOffset("big", 128<<10)
	if !ok {
		t.Fatal("no chunk at 128 KiB")
	}
	// Flip a byte in the middle of the compressed chunk (the TOC is untouched).
	mid := ce.Offset + (ce.NextOffset()-ce.Offset)/2
	bad := append([]byte(nil), b...)
	bad[mid] ^= 0xff
	l2, err := Open(ctx, &memBlob{b: bad}, int64(len(bad)), toc, Options{})
	if err != nil {
		t.Fatalf("Open of blob with a tampered chunk (TOC intact): %v", err)
	}
	p := make([]byte, 4096)
	if _, err := l2.ReadFile(ctx, "big", p, 128<<10); !errors.Is(err, ErrChunkCorrupt) {
		t.Fatalf("read of tampered chunk: err = %v, want ErrChunkCorrupt", err)
	}
	// Other chunks still read correctly.
	if _, err := l2.ReadFile(ctx, "big", p, 0); err != nil || !bytes.Equal(p, big[:4096]) {
		t.Fatalf("read of intact chunk: %v", err)
	}
}

func TestPrefetchRange(t *testing.T) {
	entries := []tarEntry{
		{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}, data: randBytes(3, 10000)},
		{hdr: tar.Header{Name: "b", Typeflag: tar.TypeReg, Mode: 0o644}, data: randBytes(4, 10000)},
	}
	ctx := context.Background()
	b, toc := buildBlob(t, entries, estargz.WithPrioritizedFiles([]string{"b"}))
	l, err := Open(ctx, &memBlob{b: b}, int64(len(b)), toc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	end, ok := l.PrefetchRange()
	be, _ := l.Lookup("b")
	ae, _ := l.Lookup("a")
	if !ok || end <= be.Offset || end > ae.Offset {
		t.Fatalf("PrefetchRange = %d %v; b at %d, a at %d", end, ok, be.Offset, ae.Offset)
	}
	b2, toc2 := buildBlob(t, entries)
	l2, err := Open(ctx, &memBlob{b: b2}, int64(len(b2)), toc2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l2.PrefetchRange(); ok {
		t.Fatal("PrefetchRange reported a landmark for a blob built without prioritized files")
	}
}

func TestChunkCacheEvicts(t *testing.T) {
	c := newChunkCache(10)
	c.put(chunkKey{off: 1}, make([]byte, 6))
	c.put(chunkKey{off: 2}, make([]byte, 6))
	if _, ok := c.get(chunkKey{off: 1}); ok {
		t.Fatal("oldest entry not evicted")
	}
	if _, ok := c.get(chunkKey{off: 2}); !ok {
		t.Fatal("newest entry evicted")
	}
	c.put(chunkKey{off: 3}, make([]byte, 11))
	if _, ok := c.get(chunkKey{off: 3}); ok {
		t.Fatal("entry larger than the cache was stored")
	}
}

func digestOf(t *testing.T, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
