package estargz

// Fuzz targets for what Open and the tree parse: the blob's footer and its
// TOC. The TOC digest comes from the image's manifest, so whoever publishes
// an image controls both the TOC and the digest that vouches for it: a TOC
// that verifies is still hostile input.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/opencontainers/go-digest"
)

// fuzzSeedBlobs are small eStargz blobs covering the TOC's features:
// chunked files, hardlinks, symlinks, whiteouts, xattrs, the landmark.
func fuzzSeedBlobs(f *testing.F) [][]byte {
	now := time.Unix(1700000000, 0)
	big := randBytes(7, 150<<10) // three 64 KiB chunks
	sets := [][]tarEntry{
		{{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: now}, data: []byte("hello")}},
		{
			{hdr: tar.Header{Name: "dir/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}},
			{hdr: tar.Header{Name: "dir/big", Typeflag: tar.TypeReg, Mode: 0o600, ModTime: now, PAXRecords: map[string]string{"SCHILY.xattr.user.k": "v"}}, data: big},
			{hdr: tar.Header{Name: "dir/link", Typeflag: tar.TypeLink, Linkname: "dir/big", ModTime: now}},
			{hdr: tar.Header{Name: "dir/sym", Typeflag: tar.TypeSymlink, Linkname: "big", ModTime: now}},
			{hdr: tar.Header{Name: "dir/.wh.gone", Typeflag: tar.TypeReg, ModTime: now}},
			{hdr: tar.Header{Name: "dir/.wh..wh..opq", Typeflag: tar.TypeReg, ModTime: now}},
			{hdr: tar.Header{Name: "empty", Typeflag: tar.TypeReg, ModTime: now}},
		},
	}
	var blobs [][]byte
	for _, s := range sets {
		b, _ := buildBlob(f, s)
		blobs = append(blobs, b)
		b, _ = buildBlob(f, s, estargz.WithPrioritizedFiles([]string{s[0].hdr.Name}))
		blobs = append(blobs, b)
	}
	return blobs
}

// splitBlob returns a blob's payload (everything before the TOC) and its TOC JSON.
func splitBlob(t testing.TB, b []byte) (payload, toc []byte) {
	sr := io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b)))
	off, fsize, err := estargz.OpenFooter(sr)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := (&estargz.GzipDecompressor{}).DecompressTOC(io.NewSectionReader(sr, off, int64(len(b))-off-fsize))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	toc, err = io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b[:off], toc
}

// assembleBlob is payload, then the TOC (a gzip member holding a tar of
// stargz.index.json), then the footer pointing at it: what a producer of
// eStargz writes, with a TOC of the fuzzer's choosing.
func assembleBlob(payload, toc []byte) []byte {
	var b bytes.Buffer
	b.Write(payload)
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: int64(len(toc)), Mode: 0o644})
	_, _ = tw.Write(toc)
	_ = tw.Close()
	_ = zw.Close()
	extra := make([]byte, 4)
	extra[0], extra[1] = 'S', 'G'
	sub := fmt.Sprintf("%016xSTARGZ", len(payload))
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(sub)))
	b.Write(estargz.CreateGzipFooter(append(extra, sub...)))
	return b.Bytes()
}

// checkLayer exercises everything a mount does with an opened layer: the
// tree is built (without a kernel mount) and every regular file is read.
func checkLayer(t *testing.T, l *Layer, toc []byte) {
	ctx := context.Background()
	root := l.newTree(slog.New(slog.DiscardHandler))
	gofs.NewNodeFS(root, &gofs.Options{}) // calls OnAdd: builds the whole tree
	l.PrefetchRange()
	var jt estargz.JTOC
	if json.Unmarshal(toc, &jt) != nil {
		return
	}
	for i, je := range jt.Entries {
		if i >= 64 {
			break
		}
		e, ok := l.Lookup(je.Name)
		if !ok || e.Type != "reg" {
			continue
		}
		for _, off := range []int64{0, e.Size / 2, e.Size - 1} {
			if off < 0 {
				continue
			}
			p := make([]byte, min(e.Size-off, 256<<10)+1)
			n, err := l.ReadFile(ctx, e.Name, p, off)
			if n < 0 || n > len(p) {
				t.Fatalf("ReadFile(%q, %d) = %d bytes into %d", e.Name, off, n, len(p))
			}
			switch {
			case err == nil:
				if n != len(p) {
					t.Fatalf("ReadFile(%q, %d) = %d of %d bytes and no error", e.Name, off, n, len(p))
				}
			case errors.Is(err, io.EOF):
				if off < e.Size && off+int64(n) != e.Size {
					t.Fatalf("ReadFile(%q, %d): EOF after %d bytes of a %d-byte file", e.Name, off, n, e.Size)
				}
			case errors.Is(err, ErrChunkCorrupt):
			default:
				t.Fatalf("ReadFile(%q, %d): %v, want nil, EOF or ErrChunkCorrupt", e.Name, off, err)
			}
		}
	}
}

// FuzzOpen: the whole blob from the network (footer, TOC, chunks). Open
// never panics; a blob Open accepts has exactly the TOC digest it was
// asked for (any other is ErrTOCMismatch); reads of an accepted layer give
// a full buffer, EOF at the file's end, or ErrChunkCorrupt.
func FuzzOpen(f *testing.F) {
	for _, b := range fuzzSeedBlobs(f) {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add(make([]byte, estargz.FooterSize))
	// Footers whose TOC offset is past the footer, or negative: estargz.Open panicked.
	f.Add([]byte("\x1f\x8b\b$000000\x16\x000000000000000001STARGZ0000000000000"))
	f.Add(assembleBlob(nil, []byte("{}"))[:0])
	f.Add([]byte(string(estargz.CreateGzipFooter(append([]byte{'S', 'G', 22, 0}, "-000000000000001STARGZ"...)))))
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx := context.Background()
		sr := io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b)))
		wrong := digest.FromString("not the TOC")
		if err := checkFooter(sr); err != nil { // estargz.Open would panic
			if _, err := Open(ctx, &memBlob{b: b}, int64(len(b)), wrong, Options{}); err == nil {
				t.Fatal("Open accepted a blob whose footer points outside it")
			}
			return
		}
		r, err := estargz.Open(sr)
		if err != nil {
			if _, err := Open(ctx, &memBlob{b: b}, int64(len(b)), wrong, Options{}); err == nil {
				t.Fatal("Open accepted a blob the eStargz reader refuses")
			}
			return
		}
		if r.TOCDigest() != wrong {
			if _, err := Open(ctx, &memBlob{b: b}, int64(len(b)), wrong, Options{}); !errors.Is(err, ErrTOCMismatch) {
				t.Fatalf("Open with a wrong TOC digest: %v, want ErrTOCMismatch", err)
			}
		}
		l, err := Open(ctx, &memBlob{b: b}, int64(len(b)), r.TOCDigest(), Options{CacheBytes: 1 << 20})
		if err != nil {
			t.Fatalf("Open with the blob's own TOC digest: %v", err)
		}
		_, toc := splitBlob(t, b)
		checkLayer(t, l, toc)
	})
}

// FuzzTOC: a hostile TOC (any JSON) in a well-formed blob, vouched for by
// its own digest. Open never panics and accepts it only with that digest;
// building the tree and reading every file never panics or hangs, and a
// read returns a full buffer, EOF at the file's end, or ErrChunkCorrupt.
func FuzzTOC(f *testing.F) {
	for _, b := range fuzzSeedBlobs(f) {
		payload, toc := splitBlob(f, b)
		f.Add(payload, toc)
	}
	// Chunks that verify but do not tile the file: a gap between them, and
	// one that claims more bytes than it holds.
	gapPayload, gapTOC := gappedChunks()
	f.Add(gapPayload, gapTOC)
	f.Add([]byte{}, []byte(`{"version":1,"entries":[]}`))
	f.Add([]byte("xxxx"), []byte(`{"version":1,"entries":[{"name":"f","type":"reg","size":10,"offset":0,"chunkSize":5,"chunkDigest":"sha256:00"},{"name":"f","type":"chunk","offset":2,"chunkOffset":7,"chunkSize":-1}]}`))
	// A whiteout, and a second name, of a directory inside it: the tree
	// must not loop (the first recursed until the stack overflowed).
	f.Add([]byte{}, []byte(`{"version":1,"entries":[{"name":"d","type":"dir"},{"name":"d/.wh.x","type":"hardlink","linkName":"d"}]}`))
	f.Add([]byte{}, []byte(`{"version":1,"entries":[{"name":"d","type":"dir"},{"name":"d/x","type":"hardlink","linkName":"d"}]}`))
	f.Fuzz(func(t *testing.T, payload, toc []byte) {
		if len(payload) > 1<<20 || len(toc) > 1<<20 {
			return
		}
		ctx := context.Background()
		b := assembleBlob(payload, toc)
		want := digest.FromBytes(toc)
		if _, err := Open(ctx, &memBlob{b: b}, int64(len(b)), digest.FromString("other"), Options{}); err == nil {
			t.Fatal("Open accepted a TOC with another TOC's digest")
		}
		l, err := Open(ctx, &memBlob{b: b}, int64(len(b)), want, Options{CacheBytes: 1 << 20})
		if err != nil {
			if errors.Is(err, ErrTOCMismatch) && strings.Contains(err.Error(), "annotation says") {
				t.Fatalf("Open refused the TOC's own digest: %v", err)
			}
			return
		}
		checkLayer(t, l, toc)
	})
}

// gappedChunks is a file of 10 bytes in two verified gzip chunks, "abc" at
// 0 and "ij" at 8: nothing holds bytes 3 to 7.
func gappedChunks() (payload, toc []byte) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write([]byte(s))
		zw.Close()
		return b.Bytes()
	}
	a, c := gz("abc"), gz("ij")
	payload = append(append([]byte(nil), a...), c...)
	toc = fmt.Appendf(nil, `{"version":1,"entries":[`+
		`{"name":"f","type":"reg","size":10,"offset":0,"chunkSize":3,"chunkDigest":%q},`+
		`{"name":"f","type":"chunk","offset":%d,"chunkOffset":8,"chunkSize":2,"chunkDigest":%q}]}`,
		digest.FromString("abc"), len(a), digest.FromString("ij"))
	return payload, toc
}
