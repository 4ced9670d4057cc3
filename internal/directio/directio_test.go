package directio

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newFile(t *testing.T) (*os.File, *File) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, New(f)
}

func readAll(t *testing.T, f *os.File) []byte {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// alignedCopy returns a copy of b whose first byte is 4096-aligned.
func alignedCopy(b []byte) []byte {
	out := Buffer(int64(len(b)))
	copy(out, b)
	return out
}

func TestWritePatterns(t *testing.T) {
	data := randBytes(5<<20+1234, 1)
	for _, tc := range []struct {
		name   string
		pieces []int // sizes of successive writes; the rest in one write
		align  bool  // writes from aligned slices
	}{
		{name: "one write", pieces: nil},
		{name: "aligned blocks of 1 MiB", pieces: []int{1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20}, align: true},
		{name: "odd sizes", pieces: []int{1, 4095, 4097, 100000, 1 << 20, 7}},
		{name: "small writes", pieces: []int{512, 512, 512, 512, 512, 512, 512, 512, 3, 5000}},
		{name: "aligned then unaligned", pieces: []int{8192, 3, 8192, 1 << 20}, align: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, d := newFile(t)
			if !d.Direct() {
				t.Logf("filesystem of %s refuses O_DIRECT: checking the buffered path", f.Name())
			}
			rest := data
			write := func(p []byte) {
				if tc.align {
					p = alignedCopy(p)
				}
				n, err := d.Write(p)
				if err != nil || n != len(p) {
					t.Fatalf("write %d: %d, %v", len(p), n, err)
				}
			}
			for _, n := range tc.pieces {
				n = min(n, len(rest))
				write(rest[:n])
				rest = rest[n:]
			}
			if len(rest) > 0 {
				write(rest)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			if d.Direct() {
				t.Fatal("still O_DIRECT after Flush")
			}
			if got := readAll(t, f); !bytes.Equal(got, data) {
				t.Fatalf("file differs: %d bytes, want %d", len(got), len(data))
			}
			// After Flush the file is ordinary: appending through f works.
			if _, err := f.Write([]byte("tail")); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, f); !bytes.Equal(got, append(bytes.Clone(data), "tail"...)) {
				t.Fatal("append after Flush went to the wrong place")
			}
		})
	}
}

// TestRewind is the engine's repair protocol: Truncate(0), Seek(0), write again.
func TestRewind(t *testing.T) {
	f, d := newFile(t)
	first, second := randBytes(3<<20+5, 2), randBytes(2<<20+77, 3)
	if _, err := d.Write(first); err != nil {
		t.Fatal(err)
	}
	if err := d.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Write(second); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); !bytes.Equal(got, second) {
		t.Fatalf("after rewind: %d bytes, want %d", len(got), len(second))
	}
}

// FuzzWrites: any sequence of write sizes yields the bytes written.
func FuzzWrites(f *testing.F) {
	f.Add([]byte{1, 2, 3}, uint16(5000))
	f.Add([]byte{255, 0, 16}, uint16(4096))
	data := randBytes(3<<20, 4)
	f.Fuzz(func(t *testing.T, sizes []byte, scale uint16) {
		out, d := newFile(t)
		var want []byte
		rest := data
		for _, s := range sizes {
			n := min(int(s)*int(scale%8192+1), len(rest))
			if _, err := d.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			want = append(want, rest[:n]...)
			rest = rest[n:]
		}
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, out); !bytes.Equal(got, want) {
			t.Fatalf("file differs: %d bytes, want %d", len(got), len(want))
		}
	})
}

// TestWriteAtAnyOrder writes the blocks of a file in random order from
// several goroutines, as a download mirroring its blocks does: aligned whole
// blocks, an unaligned last block and an unaligned buffer.
func TestWriteAtAnyOrder(t *testing.T) {
	f, d := newFile(t)
	const bs = 1 << 20
	data := randBytes(6*bs+777, 5)
	n := (len(data) + bs - 1) / bs
	order := rand.New(rand.NewPCG(9, 9)).Perm(n)
	errs := make(chan error, n)
	for _, i := range order {
		go func() {
			blk := data[i*bs : min((i+1)*bs, len(data))]
			if i != 2 { // block 2 stays in an unaligned slice
				blk = alignedCopy(blk)
			}
			m, err := d.WriteAt(blk, int64(i*bs))
			if err == nil && m != len(blk) {
				err = io.ErrShortWrite
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); !bytes.Equal(got, data) {
		t.Fatalf("file differs: %d bytes, want %d", len(got), len(data))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}
