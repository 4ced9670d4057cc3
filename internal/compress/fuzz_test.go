package compress

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
)

// FuzzDecompress feeds arbitrary bodies, as a parent could send them, to the
// bounded decoder: it must never panic, never return other than exactly
// plainLen bytes, and fail only with ErrCorrupt.
func FuzzDecompress(f *testing.F) {
	c, err := NewCodec(1)
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	block := text(4<<10, 1) // small seeds: the fuzzer minimises what it finds from them
	form := c.Compress(block)
	f.Add(form, len(block))
	f.Add(form[:len(form)/2], len(block))
	f.Add(append(bytes.Clone(form), form...), len(block))
	f.Add(c.Compress(make([]byte, 64<<10)), 1<<10)
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, 10)
	f.Fuzz(func(t *testing.T, src []byte, plainLen int) {
		out, err := c.Decompress(nil, src, plainLen)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || out != nil {
				t.Fatalf("error %v with %d bytes", err, len(out))
			}
			return
		}
		if len(out) != plainLen {
			t.Fatalf("%d bytes decoded, want exactly %d", len(out), plainLen)
		}
	})
}

// FuzzFormHeader feeds arbitrary headers, as a side store on disk could hold
// them, to the parser: an accepted one must encode back to the same bytes.
func FuzzFormHeader(f *testing.F) {
	sum := sha256.Sum256([]byte("x"))
	f.Add(header(true, 1<<20, sum[:]))
	f.Add(header(false, 1, sum[:]))
	f.Add([]byte("DFZ1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, ok := parseHeader(b)
		if !ok {
			return
		}
		if e.plainLen <= 0 || e.plainLen > MaxBlock {
			t.Fatalf("accepted plain length %d", e.plainLen)
		}
		if again := header(e.form, e.plainLen, e.digest[:]); !bytes.Equal(again, b[:formHeaderSize]) {
			t.Fatalf("header %x parsed to %+v, which encodes to %x", b[:formHeaderSize], e, again)
		}
	})
}
